"""The Responses API through the official openai SDK against a real `wick serve` on SmolLM2:
`client.responses.create` and its streams (the event order, the SDK's typed stream helpers),
a `previous_response_id` chain, a function-tool round trip, `max_output_tokens` giving
`incomplete`, get/delete/input_items, 404s, rejected fields, per-key isolation, and the store
across a server restart (on SQLite, and on PostgreSQL when WICK_TEST_POSTGRES_URL names a server:
scripts/postgres-test.sh starts one and runs `-k postgres`)."""

import json
import os

import jsonschema
import openai
import pytest
from openai import OpenAI

from conftest import MODEL_NAME, Server

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER, "strict": True}]


def sdk(server, key="unused"):
    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def rserver(tmp_path_factory):
    s = Server("--data-dir", str(tmp_path_factory.mktemp("wick-data")))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def rclient(rserver):
    return sdk(rserver)


def test_create_gives_a_completed_response_with_usage(rclient):
    r = rclient.responses.create(model=MODEL_NAME, input="Say hello in one short sentence.", temperature=0,
                                 max_output_tokens=60, metadata={"suite": "pytest"})
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed", r
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output[0].content[0].type == "output_text"
    assert r.output_text.strip()
    u = r.usage
    assert u.input_tokens > 0 and u.output_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens == 0
    assert r.metadata == {"suite": "pytest"}
    assert r.store is True


def test_stream_events_come_in_the_documented_order(rclient):
    kwargs = dict(model=MODEL_NAME, input="Say hello in one short sentence.", temperature=0, max_output_tokens=100)
    events = list(rclient.responses.create(stream=True, **kwargs))
    types = [e.type for e in events]
    deltas = types.count("response.output_text.delta")
    assert deltas >= 1
    assert types == (["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
                     + ["response.output_text.delta"] * deltas
                     + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                        "response.completed"])
    assert [e.sequence_number for e in events] == list(range(len(events)))
    item_id = events[2].item.id
    assert all(e.item_id == item_id for e in events[3:-2])
    assert all(e.output_index == 0 for e in events[2:-1])
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert done.status == "completed" and done.output_text == text
    assert events[0].response.id == done.id and events[0].response.status == "in_progress"
    # Greedy: the stream says what the plain call says.
    assert rclient.responses.create(**kwargs).output_text == text


def test_the_sdk_stream_helper_parses_every_event(rclient):
    seen = []
    with rclient.responses.stream(model=MODEL_NAME, input="Say hello in one short sentence.", temperature=0,
                                  max_output_tokens=100) as stream:
        for event in stream:
            seen.append(event.type)
            if event.type == "response.output_text.delta":
                assert event.snapshot.endswith(event.delta)
        final = stream.get_final_response()
    assert seen[0] == "response.created" and seen[-1] == "response.completed"
    assert final.output_text and final.status == "completed"


def test_previous_response_id_chains_the_conversation(rclient):
    r1 = rclient.responses.create(model=MODEL_NAME, input="My name is Ada. Reply with OK.", temperature=0, max_output_tokens=20)
    r2 = rclient.responses.create(model=MODEL_NAME, previous_response_id=r1.id, input="What is my name?", temperature=0,
                                  max_output_tokens=20)
    assert r2.previous_response_id == r1.id
    # The second prompt holds the first turn: its input and its answer.
    assert r2.usage.input_tokens > r1.usage.input_tokens + r1.usage.output_tokens
    # ... and starts with the first turn, which the prefix cache still holds.
    assert 0 < r2.usage.input_tokens_details.cached_tokens <= r1.usage.input_tokens + r1.usage.output_tokens
    r3 = rclient.responses.create(model=MODEL_NAME, previous_response_id=r2.id, input="Thanks.", temperature=0,
                                  max_output_tokens=10, stream=True)
    events = list(r3)
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.usage.input_tokens > r2.usage.input_tokens + r2.usage.output_tokens


def test_function_tool_round_trip(rclient):
    r = rclient.responses.create(model=MODEL_NAME, input="What is the weather like in Paris right now?", tools=TOOLS,
                                 tool_choice="required", temperature=0, max_output_tokens=120)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and r.status == "completed", r
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    follow = rclient.responses.create(
        model=MODEL_NAME, previous_response_id=r.id, tools=TOOLS, tool_choice="none", temperature=0, max_output_tokens=60,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temperature_c": 18, "sky": "clear"})}])
    assert follow.output[0].type == "message" and follow.output_text.strip(), follow
    # The whole history sent again by the client, without the store, works too.
    again = rclient.responses.create(
        model=MODEL_NAME, store=False, tools=TOOLS, tool_choice="none", temperature=0, max_output_tokens=60,
        input=[{"role": "user", "content": "What is the weather like in Paris right now?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, clear"}])
    assert again.output_text.strip()


def test_streamed_function_call_events(rclient):
    with rclient.responses.stream(model=MODEL_NAME, input="Weather in Rome?", tools=TOOLS, tool_choice="required",
                                  temperature=0, max_output_tokens=120) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    i = types.index("response.output_item.added")
    assert types[i:i + 4] == ["response.output_item.added", "response.function_call_arguments.delta",
                              "response.function_call_arguments.done", "response.output_item.done"], types
    call = final.output[0]
    assert call.type == "function_call"
    jsonschema.validate(json.loads(call.arguments), WEATHER)


def test_max_output_tokens_gives_incomplete(rclient):
    r = rclient.responses.create(model=MODEL_NAME, input="Write a long story about a dragon.", max_output_tokens=4)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 4
    events = list(rclient.responses.create(model=MODEL_NAME, input="Write a long story.", max_output_tokens=4, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_get_delete_and_input_items(rclient):
    r = rclient.responses.create(model=MODEL_NAME, input=[{"role": "user", "content": "Hi!"}], max_output_tokens=10)
    got = rclient.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()
    items = rclient.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "Hi!" and items.data[0].id.startswith("msg_")
    rclient.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        rclient.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        rclient.responses.delete(r.id)
    unstored = rclient.responses.create(model=MODEL_NAME, input="Hi", store=False, max_output_tokens=5)
    with pytest.raises(openai.NotFoundError):
        rclient.responses.retrieve(unstored.id)


def test_unknown_ids_are_404s(rclient):
    for call in (lambda: rclient.responses.retrieve("resp_nope"),
                 lambda: rclient.responses.input_items.list("resp_nope"),
                 lambda: rclient.responses.create(model=MODEL_NAME, input="x", previous_response_id="resp_nope")):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.body["message"]


@pytest.mark.parametrize("extra,param", [
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input[0].content[0]"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
])
def test_rejected_fields_are_400s_naming_them(rclient, extra, param):
    kwargs = {"model": MODEL_NAME, "input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as e:
        rclient.responses.create(**kwargs)
    assert e.value.body["param"] == param


def test_one_key_cannot_read_anothers_responses(spawn, tmp_path):
    s = spawn("--api-key", "sk-one", "--api-key", "sk-two", "--data-dir", str(tmp_path))
    one, two = sdk(s, "sk-one"), sdk(s, "sk-two")
    r = one.responses.create(model=MODEL_NAME, input="Hi", max_output_tokens=5)
    assert one.responses.retrieve(r.id).id == r.id
    with pytest.raises(openai.NotFoundError):
        two.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        two.responses.create(model=MODEL_NAME, input="Hi", previous_response_id=r.id)


def test_the_store_survives_a_restart(tmp_path):
    first = Server("--data-dir", str(tmp_path))
    try:
        c = sdk(first)
        r = c.responses.create(model=MODEL_NAME, input="Remember the word: tangerine.", max_output_tokens=10)
        streamed = list(c.responses.create(model=MODEL_NAME, input="Hi", max_output_tokens=5, stream=True))[-1].response
    finally:
        first.stop()  # SIGTERM
    assert (tmp_path / "responses.sqlite3").exists()
    second = Server("--data-dir", str(tmp_path))
    try:
        c = sdk(second)
        assert c.responses.retrieve(r.id).model_dump() == r.model_dump()
        assert c.responses.retrieve(streamed.id).output_text == streamed.output_text
        assert c.responses.input_items.list(r.id).data[0].content[0].text == "Remember the word: tangerine."
        follow = c.responses.create(model=MODEL_NAME, previous_response_id=r.id, input="Which word?", max_output_tokens=10)
        assert follow.usage.input_tokens > r.usage.input_tokens
    finally:
        second.stop()


POSTGRES = os.environ.get("WICK_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES, reason="WICK_TEST_POSTGRES_URL unset: scripts/postgres-test.sh starts a "
                                         "PostgreSQL server and runs this test (`-k postgres`)")
def test_postgres_store_is_shared_by_replicas_and_survives_a_restart():
    one = Server("--responses-store", POSTGRES, "--api-key", "sk-pg")
    two = Server("--responses-store", POSTGRES, "--api-key", "sk-pg", "--api-key", "sk-other")
    try:
        r = sdk(one, "sk-pg").responses.create(model=MODEL_NAME, input="Remember: plum.", max_output_tokens=8)
        # Another replica on the same database reads it and continues from it.
        assert sdk(two, "sk-pg").responses.retrieve(r.id).model_dump() == r.model_dump()
        with pytest.raises(openai.NotFoundError):
            sdk(two, "sk-other").responses.retrieve(r.id)
        follow = sdk(two, "sk-pg").responses.create(model=MODEL_NAME, previous_response_id=r.id, input="Which fruit?",
                                                    max_output_tokens=8)
        assert follow.usage.input_tokens > r.usage.input_tokens + r.usage.output_tokens
    finally:
        one.stop()
        two.stop()
    again = Server("--responses-store", POSTGRES, "--api-key", "sk-pg")
    try:
        c = sdk(again, "sk-pg")
        assert c.responses.retrieve(follow.id).output_text == follow.output_text
        assert c.responses.input_items.list(r.id).data[0].content[0].text == "Remember: plum."
        c.responses.delete(r.id)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(r.id)
    finally:
        again.stop()
