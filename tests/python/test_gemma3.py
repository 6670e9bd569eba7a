"""Gemma 3 270M (the base model that `scripts/fetch-model.sh gemma3` fetches) served end to end
through the official openai SDK: greedy completions that continue text sensibly, chat through
Gemma's own template, streamed output equal to the non-streamed one, and `<end_of_turn>`
ending a turn. scripts/test.sh always sets WICK_TEST_MODEL_GEMMA3."""

import os

import pytest
from openai import OpenAI

from conftest import MODEL_NAME, Server


@pytest.fixture(scope="module")
def gemma():
    path = os.environ.get("WICK_TEST_MODEL_GEMMA3")
    if not path:
        pytest.skip("WICK_TEST_MODEL_GEMMA3 unset: notice, Gemma 3 server tests not run")
    s = Server(model=path)
    yield OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    s.stop()


def test_greedy_completion_continues_code(gemma):
    r = gemma.completions.create(model=MODEL_NAME, prompt="def fibonacci(n):", max_tokens=24, temperature=0)
    text = r.choices[0].text
    assert "return" in text and "if n" in text, text


def test_greedy_completion_counts_on(gemma):
    r = gemma.completions.create(model=MODEL_NAME, prompt="1, 2, 3, 4, 5,", max_tokens=8, temperature=0)
    assert r.choices[0].text.startswith(" 6, 7"), r.choices[0].text


def test_chat_uses_gemma_turns_and_streams_the_same_text(gemma):
    messages = [{"role": "user", "content": "Name a colour."}]
    r = gemma.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=20, temperature=0)
    # <bos> <start_of_turn> user \n | Name _a _colour . | <end_of_turn> \n <start_of_turn> model \n
    assert r.usage.prompt_tokens == 13, r.usage
    assert r.choices[0].finish_reason in ("stop", "length")
    text = r.choices[0].message.content
    assert "<start_of_turn>" not in text and "<end_of_turn>" not in text
    chunks = gemma.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=20, temperature=0,
                                           stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text


def test_end_of_turn_ends_the_answer(gemma):
    # Token 106 is <end_of_turn>; forcing it first must end the turn with nothing said.
    r = gemma.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}],
                                      max_tokens=20, temperature=0, logit_bias={"106": 100})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == ""
    assert r.usage.completion_tokens == 1
