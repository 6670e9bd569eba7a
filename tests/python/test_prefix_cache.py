"""Automatic prefix caching through the official openai SDK against a real `wick serve`:
`usage.prompt_tokens_details.cached_tokens` grows on a repeated prompt, a resent conversation
hits the cache (every token the previous turn computed, its partly filled last page included),
greedy answers are the same with the cache cold, warm or off, `cache_salt` isolates tenants,
and `n=3` prefills its prompt once."""

import uuid

from conftest import MODEL_NAME

SYSTEM = ("You are a careful assistant for a hardware shop. Answer briefly, name the part, and say "
          "whether it is in stock. Parts: resistors, capacitors, LEDs, breadboards, jumper wires, "
          "soldering irons, multimeters, power supplies, microcontrollers and sensors. ") * 3


def chat(client, messages, **extra):
    return client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0, **extra)


def cached(r):
    return r.usage.prompt_tokens_details.cached_tokens


def test_a_repeated_prompt_reports_cached_tokens_and_answers_the_same(client, spawn):
    tag = uuid.uuid4().hex  # a prompt nobody sent before
    messages = [{"role": "system", "content": f"[{tag}] " + SYSTEM}, {"role": "user", "content": "Do you have LEDs?"}]
    first = chat(client, messages)
    second = chat(client, messages)
    assert cached(first) == 0, "a prompt never seen before has nothing cached"
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert cached(second) >= first.usage.prompt_tokens - 16, "all full blocks but the last hit"
    assert cached(second) < second.usage.prompt_tokens, "the last token is always computed"
    assert second.choices[0].message.content == first.choices[0].message.content

    # A follow-up turn resends the conversation: its prefix is cached.
    follow = messages + [{"role": "assistant", "content": first.choices[0].message.content},
                         {"role": "user", "content": "And multimeters?"}]
    third = chat(client, follow)
    assert cached(third) >= first.usage.prompt_tokens - 16

    # The same answers with the cache off.
    off = spawn("--no-prefix-caching")
    from openai import OpenAI
    plain = OpenAI(base_url=off.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    again = chat(plain, messages)
    assert cached(again) == 0 and cached(chat(plain, messages)) == 0
    assert again.choices[0].message.content == first.choices[0].message.content
    assert chat(plain, follow).choices[0].message.content == third.choices[0].message.content


def test_a_chats_next_turn_reuses_every_token_its_previous_turn_computed(client):
    """The next turn resends the answer: everything the previous request computed (its prompt and
    all but its last sampled token) is served from the cache, the partly filled last page (a
    tail) included, not only whole 16-token pages."""
    messages = [{"role": "system", "content": "[tails test] " + SYSTEM}, {"role": "user", "content": "Any sensors?"}]
    first = chat(client, messages)
    follow = messages + [{"role": "assistant", "content": first.choices[0].message.content},
                         {"role": "user", "content": "And multimeters?"}]
    second = chat(client, follow)
    computed = first.usage.prompt_tokens + first.usage.completion_tokens - 1
    assert computed % 16 != 0, "the previous turn must end inside a page for this test to mean anything"
    assert cached(second) == computed


def test_cache_salt_isolates_tenants(client):
    tag = uuid.uuid4().hex
    messages = [{"role": "system", "content": f"[{tag}] " + SYSTEM}, {"role": "user", "content": "Any sensors?"}]
    a = chat(client, messages, extra_body={"cache_salt": "tenant-a"})
    b = chat(client, messages, extra_body={"cache_salt": "tenant-b"})
    a2 = chat(client, messages, extra_body={"cache_salt": "tenant-a"})
    assert cached(a) == 0
    assert cached(b) == 0, "another tenant's cached prefix is not visible"
    assert cached(a2) > 0
    assert a.choices[0].message.content == b.choices[0].message.content == a2.choices[0].message.content


def test_empty_cache_salt_is_a_400(client):
    import openai
    import pytest

    with pytest.raises(openai.BadRequestError) as e:
        chat(client, [{"role": "user", "content": "hi"}], extra_body={"cache_salt": ""})
    assert e.value.body["param"] == "cache_salt"


def test_n3_prefills_the_prompt_once(client, server):
    tag = uuid.uuid4().hex
    messages = [{"role": "system", "content": f"[{tag}] " + SYSTEM}, {"role": "user", "content": "Name a part."}]
    before = server.metrics()["wick:prompt_tokens_total"]
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, n=3, temperature=1.0,
                                       seed=7)
    after = server.metrics()["wick:prompt_tokens_total"]
    assert len(r.choices) == 3
    assert after - before == r.usage.prompt_tokens, "the prompt was computed once for the three choices"
    single = chat(client, messages)
    assert r.usage.prompt_tokens == single.usage.prompt_tokens, "usage counts the prompt once"
    m = server.metrics()
    assert m["wick:prefix_cache_hits_total"] > 0
    assert m["wick:prefix_cache_queries_total"] >= m["wick:prefix_cache_hits_total"]
