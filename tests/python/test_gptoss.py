"""gpt-oss through a real `wick serve` on the tiny fixture (`../shared/fixtures/archs/gpt-oss.gguf`:
random weights, MXFP4 experts, SmolLM2's tokenizer, so the harmony markers are plain text there and
end generation as stop strings). Outputs are scripted: wick's `grammar` extension forces a whole
harmony transcript, and for tools the harmony tool grammar plus a `logit_bias` towards the
commentary channel forces a call whose arguments the schema pins. Checked with the official SDK:
`reasoning_content`/`reasoning`, `tool_calls` and `content` land in their fields, streamed and not,
the stream equals the non-streamed answer, an earlier call and its result render, and
`/v1/completions` takes raw harmony text."""

import json

import openai
import pytest

from conftest import MODEL_NAME, ROOT

FIXTURE = ROOT.parent / "shared" / "fixtures" / "archs" / "gpt-oss.gguf"
TRANSCRIPT = ("<|channel|>analysis<|message|>Two plus two is four.<|end|>"
              "<|start|>assistant<|channel|>final<|message|>It is 4.<|return|>")
MSG = [{"role": "user", "content": "What is two plus two?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris"]}},
                         "required": ["city"], "additionalProperties": False}}}]


@pytest.fixture(scope="module")
def server():
    from conftest import Server

    if not FIXTURE.exists():
        pytest.skip(f"{FIXTURE} is missing: the gpt-oss fixture set is not beside the checkout")
    s = Server(model=str(FIXTURE))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gptoss(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def forced(text):
    return {"grammar": "start: " + json.dumps(text)}


def test_analysis_goes_to_reasoning_and_final_to_content(gptoss):
    r = gptoss.chat.completions.create(model=MODEL_NAME, messages=MSG, temperature=0, max_tokens=80,
                                       reasoning_effort="high", extra_body=forced(TRANSCRIPT))
    m = r.choices[0].message
    extra = m.model_extra or {}
    assert extra.get("reasoning_content") == "Two plus two is four.", m
    assert extra.get("reasoning") == "Two plus two is four."
    assert m.content == "It is 4."
    assert not m.tool_calls
    assert r.choices[0].finish_reason == "stop"
    chunks = list(gptoss.chat.completions.create(model=MODEL_NAME, messages=MSG, temperature=0, max_tokens=80,
                                                 stream=True, extra_body=forced(TRANSCRIPT)))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "Two plus two is four."
    assert "".join(d.content or "" for d in deltas) == "It is 4."
    assert "<|" not in "".join(d.content or "" for d in deltas)


def call_request(gptoss, tokens, **kw):
    # Push the harmony tool grammar's first choice towards the commentary channel.
    comment = tokens("commentary")[0]
    return gptoss.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
        tool_choice="required", temperature=0, max_tokens=160, logit_bias={str(comment): 100}, **kw)


@pytest.fixture(scope="module")
def tokens(server):
    import requests

    def ids(text):
        r = requests.post(server.url + "/tokenize", json={"model": MODEL_NAME, "prompt": text, "add_special_tokens": False})
        r.raise_for_status()
        return r.json()["tokens"]

    return ids


def test_a_call_to_functions_becomes_tool_calls_streamed_and_not(gptoss, tokens):
    r = call_request(gptoss, tokens)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert [t.function.name for t in c.message.tool_calls] == ["get_weather"]
    assert json.loads(c.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert not c.message.content
    chunks = list(call_request(gptoss, tokens, stream=True))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]


def test_an_earlier_call_and_its_result_render_as_harmony(gptoss):
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
    ]
    final = "<|channel|>final<|message|>21 degrees.<|return|>"
    r = gptoss.chat.completions.create(model=MODEL_NAME, messages=history, temperature=0, max_tokens=40,
                                       extra_body=forced(final))
    assert r.choices[0].message.content == "21 degrees."
    assert r.usage.prompt_tokens > 50  # the system, developer, call and result messages


def test_completions_take_raw_harmony_text(gptoss):
    prompt = "<|start|>user<|message|>Hi<|end|><|start|>assistant"
    r = gptoss.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=30, temperature=0,
                                  extra_body=forced("<|channel|>final<|message|>Hello."))
    assert r.choices[0].text == "<|channel|>final<|message|>Hello."
