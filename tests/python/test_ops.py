"""Operations against a real `wick serve`: cancellation (mid-stream and queued), overload,
32 concurrent streams without cross-talk, and graceful shutdown on SIGTERM."""

import json
import signal
import threading
import time

import openai
import pytest
import requests

from conftest import MODEL_NAME

LONG = {"max_tokens": 400, "temperature": 0, "ignore_eos": True}


def open_stream(url, **extra):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True, **LONG, **extra}
    r = requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=60)
    assert r.status_code == 200
    return r


def data_lines(resp):
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            yield line[6:].decode()


def wait_for(server, running, waiting, within=1.0):
    deadline = time.time() + within
    while True:
        m = server.metrics()
        got = (m.get("wick:num_requests_running"), m.get("wick:num_requests_waiting"))
        if got == (running, waiting):
            return
        if time.time() > deadline:
            pytest.fail(f"running/waiting {got}, expected {(running, waiting)} within {within}s")
        time.sleep(0.02)


def test_disconnect_mid_stream_and_while_queued_cancels(spawn):
    s = spawn("--max-num-seqs", "1")
    a = open_stream(s.url)
    lines = data_lines(a)
    next(lines), next(lines)  # generating now
    b = open_stream(s.url)  # queued behind a: headers arrive at once, tokens do not
    wait_for(s, 1, 1, within=10)
    b.close()
    wait_for(s, 1, 0)
    a.close()
    wait_for(s, 0, 0)


def test_non_streaming_disconnect_cancels(spawn):
    s = spawn()
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a long story."}], **LONG}
    try:
        requests.post(s.url + "/v1/chat/completions", json=body, timeout=1.5)
    except requests.exceptions.ReadTimeout:
        pass
    wait_for(s, 0, 0)


def test_overload_is_429_with_retry_after(spawn):
    s = spawn("--max-num-seqs", "1", "--max-waiting", "1")
    a = open_stream(s.url)
    a_lines = data_lines(a)  # keep the generator alive: dropping it closes the response
    next(a_lines)
    b = open_stream(s.url)
    wait_for(s, 1, 1, within=10)
    r = requests.post(s.url + "/v1/chat/completions", json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 429
    assert r.headers["retry-after"]
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}])
    a.close()
    b.close()


def single_token_words(url, count):
    words = "apple banana cherry river mountain ocean forest desert tiger lion eagle shark pencil paper window door table chair green blue red yellow black white music dance happy sad winter summer spring autumn money house garden bread water".split()
    out = []
    for w in words:
        ids = requests.post(url + "/tokenize", json={"prompt": " " + w, "add_special_tokens": False}).json()["tokens"]
        if len(ids) == 1:
            out.append(ids[0])
    assert len(out) >= count, f"only {len(out)} single-token words"
    return out[:count]


def test_32_concurrent_streams_without_cross_talk(server, client):
    # Each client forces its own token with logit_bias, so its text is known exactly whatever
    # the batch numerics: any token from another request in a stream is cross-talk.
    ids = single_token_words(server.url, 32)
    results = [None] * 32

    def run(i):
        stream = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": f"Say a word ({i})."}], max_tokens=6, temperature=0,
            logit_bias={str(ids[i]): 100}, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        results[i] = list(stream)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    seen_ids = set()
    for i, chunks in enumerate(results):
        assert chunks, f"client {i} got nothing"
        assert len({c.id for c in chunks}) == 1
        seen_ids.add(chunks[0].id)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
        assert chunks[-2].choices[0].finish_reason == "length"
        word = requests.post(server.url + "/detokenize", json={"tokens": [ids[i]]}).json()["prompt"]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == word * 6
    assert len(seen_ids) == 32


def test_sigterm_lets_the_stream_finish_then_exits_zero(spawn):
    s = spawn()
    r = open_stream(s.url, max_tokens=40)
    lines = data_lines(r)
    first = json.loads(next(lines))
    assert first["object"] == "chat.completion.chunk"
    s.proc.send_signal(signal.SIGTERM)
    rest = list(lines)
    assert rest[-1] == "[DONE]"
    finishes = [json.loads(d)["choices"][0]["finish_reason"] for d in rest[:-1]]
    assert finishes[-1] == "length"
    assert s.proc.wait(timeout=30) == 0


def test_greedy_output_does_not_depend_on_what_else_runs(server, client):
    """Batch invariance: a greedy request gives the same text alone and among 12 concurrent
    requests of different lengths (the engine's numerics are row-independent)."""
    prompts = [f"Write one sentence about the number {i}." + " Please be brief." * (i % 4) for i in range(12)]

    def ask(p):
        r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": p}], max_tokens=24, temperature=0)
        return r.choices[0].message.content

    alone = [ask(p) for p in prompts]
    together = [None] * len(prompts)

    def run(i):
        together[i] = ask(prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert together == alone
