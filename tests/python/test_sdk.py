"""The official openai SDK against a real `wick serve`: chat, streaming, n, stop, logprobs,
usage, legacy completions, models, and the SDK's exception classes for our errors."""

import openai
import pytest

from conftest import MODEL_NAME

MSG = [{"role": "user", "content": "List three colors."}]


def test_chat_completion_basic(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == MODEL_NAME
    assert r.system_fingerprint
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_greedy_is_deterministic_and_max_tokens_gives_length(client):
    a = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    b = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].finish_reason == "length"
    assert a.usage.completion_tokens == 5


def test_streaming_matches_non_streaming(client):
    full = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=MSG, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=6, n=3, temperature=1.0, seed=1)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    s = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=6, n=2, temperature=1.0, seed=1, stream=True)
    seen = {}
    for chunk in s:
        for c in chunk.choices:
            seen.setdefault(c.index, []).append(c.finish_reason)
    assert sorted(seen) == [0, 1]
    assert all(reasons[-1] in ("stop", "length") for reasons in seen.values())


def test_seed_makes_sampling_reproducible(client):
    kw = dict(model=MODEL_NAME, messages=MSG, max_tokens=8, temperature=1.0, seed=1234)
    assert client.chat.completions.create(**kw).choices[0].message.content == client.chat.completions.create(**kw).choices[0].message.content


def test_stop_string_cuts_the_output(client):
    kw = dict(model=MODEL_NAME, messages=MSG, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    text = client.chat.completions.create(**kw).choices[0].message.content
    assert len(text) > 8, text
    stop = text[5:8]
    r = client.chat.completions.create(stop=[stop], **kw)
    assert r.choices[0].message.content == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_logprobs_shape(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token or t.bytes
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely token
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)


def test_legacy_completions(client):
    r = client.completions.create(model=MODEL_NAME, prompt=["The sky is", "One, two,"], max_tokens=4, temperature=0)
    assert r.object == "text_completion"
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.text for c in r.choices)
    s = client.completions.create(model=MODEL_NAME, prompt="The sky is", max_tokens=4, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in s if c.choices) == client.completions.create(
        model=MODEL_NAME, prompt="The sky is", max_tokens=4, temperature=0
    ).choices[0].text


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_errors_raise_the_right_sdk_exceptions(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-unknown", messages=MSG)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MSG, temperature=5)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MSG, response_format={"type": "yaml"})
    assert e.value.param == "response_format.type"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=10_000_000)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
        )
    # the no-op values pass
    r = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=2, response_format={"type": "text"}, tool_choice="none")
    assert r.choices[0].message.content is not None
