"""Tool calling through the official openai SDK against a real `wick serve` (SmolLM2: the
generic JSON-envelope format): every `tool_choice`, streamed and not, the streamed delta shape,
`parallel_tool_calls`, a full agent loop with a tool result, and the 400s."""

import json

import jsonschema
import openai
import pytest

from conftest import MODEL_NAME

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
        "required": ["timezone"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MSG = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
CHOICES = ["required", {"type": "function", "function": {"name": "get_time"}}, "auto"]


def check_calls(calls, only=None):
    for c in calls:
        assert c.type == "function"
        assert c.id.startswith("call_")
        assert c.function.name in SCHEMAS
        if only:
            assert c.function.name == only
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def named(choice):
    return choice["function"]["name"] if isinstance(choice, dict) else None


@pytest.mark.parametrize("choice", CHOICES, ids=["required", "named", "auto"])
def test_tool_choice_non_streamed(client, choice):
    for temperature, seed in ((0, None), (1.0, 5)):
        r = client.chat.completions.create(model=MODEL_NAME, messages=MSG, tools=TOOLS, tool_choice=choice,
                                           temperature=temperature, seed=seed, max_tokens=120)
        m = r.choices[0].message
        if choice != "auto" or m.tool_calls:
            assert r.choices[0].finish_reason == "tool_calls"
            assert m.tool_calls and m.content is None
            check_calls(m.tool_calls, named(choice))
        else:
            # Plain text: it ends or runs into max_tokens (a temperature-1 sample of a 135M
            # model may ramble), and it is never a tool envelope left unparsed.
            assert r.choices[0].finish_reason in ("stop", "length")
            assert m.content and "tool_calls" not in m.content and not m.content.lstrip().startswith("{")


def collect_stream(stream):
    content, calls, finishes, first = "", {}, [], {}
    for chunk in stream:
        for c in chunk.choices:
            d = c.delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                if tc.index not in calls:
                    # The first delta of a call carries its id, type and name.
                    assert tc.id and tc.type == "function" and tc.function.name, tc
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
                else:
                    assert tc.id is None and not tc.function.name
                calls[tc.index]["arguments"] += tc.function.arguments or ""
            if c.finish_reason:
                finishes.append(c.finish_reason)
    return content, [calls[i] for i in sorted(calls)], finishes


@pytest.mark.parametrize("choice", CHOICES, ids=["required", "named", "auto"])
def test_tool_choice_streamed_equals_non_streamed(client, choice):
    kw = dict(model=MODEL_NAME, messages=MSG, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=120)
    full = client.chat.completions.create(**kw).choices[0]
    content, calls, finishes = collect_stream(client.chat.completions.create(stream=True, **kw))
    assert finishes == [full.finish_reason]
    want = [(c.function.name, c.function.arguments) for c in full.message.tool_calls or []]
    assert [(c["name"], c["arguments"]) for c in calls] == want
    assert content == (full.message.content or "")
    assert "tool_call" not in content


def test_tool_choice_none_answers_in_text(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=MSG, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=30)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content


def test_parallel_tool_calls(client):
    # Off (wick's default, as llama-server's) or false: exactly one call per turn.
    for seed, parallel in ((0, None), (1, False), (2, openai.NOT_GIVEN)):
        kw = {} if parallel is None else {"parallel_tool_calls": parallel}
        r = client.chat.completions.create(model=MODEL_NAME, messages=MSG, tools=TOOLS, tool_choice="required",
                                           temperature=1.0, seed=seed, max_tokens=120, **kw)
        calls = r.choices[0].message.tool_calls
        assert len(calls) == 1
        check_calls(calls)
    # True: one or more, each valid, ids distinct.
    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Weather in Paris and in Rome?"}],
                                       tools=TOOLS, tool_choice="required", parallel_tool_calls=True, temperature=0, max_tokens=200)
    calls = r.choices[0].message.tool_calls
    assert calls
    check_calls(calls)
    assert len({c.id for c in calls}) == len(calls)


def run_tool(call):
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        return json.dumps({"city": args["city"], "temperature": 21, "unit": args["unit"], "sky": "sunny"})
    return json.dumps({"time": "14:05", "timezone": args["timezone"]})


def test_agent_loop_with_a_tool_result(client):
    messages = list(MSG)
    for turn in range(3):
        choice = "required" if turn == 0 else ("auto" if turn == 1 else "none")
        r = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS, tool_choice=choice,
                                           temperature=0, max_tokens=120)
        m = r.choices[0].message
        if not m.tool_calls:
            break
        check_calls(m.tool_calls)
        messages.append(m.model_dump(exclude_none=True))
        for call in m.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tool(call)})
    assert turn >= 1, "the first turn must call a tool"
    assert m.content and not m.tool_calls
    assert any(msg["role"] == "tool" for msg in messages)


def test_unknown_tool_call_id_is_a_400(client):
    messages = MSG + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{\"timezone\": \"UTC\"}"}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
    ]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS, max_tokens=5)
    assert e.value.body["param"] == "messages[2].tool_call_id"


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "frobnicate"}}}], "tool_choice": "required"}, "tools"),
    ],
)
def test_bad_tool_requests_are_400s(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=5, **extra)
    assert e.value.body["param"] == param, e.value.body
