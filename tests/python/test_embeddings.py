"""/v1/embeddings and several models in one server, through the official openai SDK against a
real `wick serve`: all-MiniLM-L6-v2 ($WICK_TEST_MODEL_MINILM, scripts/fetch-model.sh minilm)
beside the SmolLM2 chat model. Float and base64 (the SDK's default) answers, `dimensions`,
batches of 100, token-id input, the reference vectors of sentence-transformers
(tests/fixtures/minilm_reference.json), error envelopes, chat and embeddings interleaved under
concurrency, load on demand, idle unload, reload, and eviction under a memory budget.

A decoder embedding model too (Qwen3-Embedding style): the tiny qwen3 fixture of
../shared/fixtures/archs (or $WICK_ARCH_FIXTURES) served as `kind = "embedding"` beside the chat
model, against llama.cpp's vectors (tests/fixtures/decoder_embedding_reference.json), with
instruction prompts picked by `prompt_name`."""

import base64
import json
import math
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from conftest import MODEL_NAME, ROOT, Server, _model

EMBED = "all-MiniLM-L6-v2"
REFERENCE = json.loads((ROOT / "tests" / "fixtures" / "minilm_reference.json").read_text())


def _minilm():
    path = os.environ.get("WICK_TEST_MODEL_MINILM")
    if not path:
        pytest.skip("WICK_TEST_MODEL_MINILM unset (scripts/fetch-model.sh minilm): notice, embedding tests not run")
    return path


@pytest.fixture(scope="module")
def both():
    """SmolLM2 (chat, `test-model`) and all-MiniLM-L6-v2 (embeddings) in one server."""
    s = Server("--model", _minilm())
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sdk(both):
    return openai.OpenAI(base_url=both.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def envelope(r):
    assert r.headers["content-type"].startswith("application/json"), r.text
    e = r.json()["error"]
    assert isinstance(e["message"], str) and e["type"]
    return e


def test_sdk_default_base64_and_float_agree(sdk):
    # The SDK asks for base64 unless told otherwise, and decodes it (little-endian f32).
    b = sdk.embeddings.create(model=EMBED, input="The cat sits on the mat.")
    f = sdk.embeddings.create(model=EMBED, input="The cat sits on the mat.", encoding_format="float")
    assert b.object == "list" and b.model == EMBED
    assert b.data[0].object == "embedding" and b.data[0].index == 0
    assert len(b.data[0].embedding) == 384 == len(f.data[0].embedding)
    assert max(abs(x - y) for x, y in zip(b.data[0].embedding, f.data[0].embedding)) < 1e-6
    assert abs(norm(f.data[0].embedding) - 1) < 1e-5
    assert f.usage.prompt_tokens == f.usage.total_tokens == REFERENCE["tokens"][0]


def test_raw_base64_is_little_endian_f32(both):
    r = requests.post(both.url + "/v1/embeddings", json={"model": EMBED, "input": "short", "encoding_format": "base64"})
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(raw) == 384 * 4
    f = requests.post(both.url + "/v1/embeddings", json={"model": EMBED, "input": "short"}).json()
    assert list(struct.unpack("<384f", raw)) == pytest.approx(f["data"][0]["embedding"], abs=1e-7)


def test_reference_vectors_of_sentence_transformers_and_paraphrases(sdk):
    r = sdk.embeddings.create(model=EMBED, input=REFERENCE["sentences"], encoding_format="float")
    assert [d.index for d in r.data] == list(range(len(REFERENCE["sentences"])))
    assert r.usage.prompt_tokens == sum(REFERENCE["tokens"])
    for i, (d, want) in enumerate(zip(r.data, REFERENCE["embeddings"])):
        diff = max(abs(x - y) for x, y in zip(d.embedding, want))
        assert diff < 1e-4, f"sentence {i}: max |diff| {diff} against sentence-transformers"
    v = [d.embedding for d in r.data]
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.3, "cat/kitten closer than cat/revenue"
    assert cos(v[3], v[4]) > cos(v[3], v[0]) + 0.3, "the two password questions closer than password/cat"


def test_batch_of_100_keeps_order_and_matches_single_requests(sdk):
    texts = [f"Document number {i} talks about topic {i % 7}." for i in range(100)]
    r = sdk.embeddings.create(model=EMBED, input=texts)
    assert [d.index for d in r.data] == list(range(100))
    for i in (0, 37, 99):
        alone = sdk.embeddings.create(model=EMBED, input=texts[i]).data[0].embedding
        assert cos(alone, r.data[i].embedding) > 1 - 1e-5, i


def test_token_ids_are_embedded_as_given(sdk):
    # [CLS] hello [SEP] in MiniLM's vocabulary: the same as the text "hello".
    ids = sdk.embeddings.create(model=EMBED, input=[101, 7592, 102], encoding_format="float")
    text = sdk.embeddings.create(model=EMBED, input="hello", encoding_format="float")
    assert cos(ids.data[0].embedding, text.data[0].embedding) > 1 - 1e-6
    two = sdk.embeddings.create(model=EMBED, input=[[101, 7592, 102], [101, 102]], encoding_format="float")
    assert len(two.data) == 2 and two.usage.prompt_tokens == 5


def test_dimensions_on_a_model_that_is_not_matryoshka(sdk):
    assert len(sdk.embeddings.create(model=EMBED, input="x", dimensions=384).data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as e:
        sdk.embeddings.create(model=EMBED, input="x", dimensions=128)
    assert e.value.body["param"] == "dimensions" and "384" in e.value.body["message"]


def test_errors_are_envelopes(both):
    url = both.url + "/v1/embeddings"
    r = requests.post(url, json={"model": "nope", "input": "x"})
    assert r.status_code == 404 and envelope(r)["code"] == "model_not_found"
    r = requests.post(url, json={"model": EMBED, "input": "x", "truncate": True})
    assert r.status_code == 400 and envelope(r)["param"] == "truncate"
    r = requests.post(url, json={"model": EMBED, "input": []})
    assert r.status_code == 400 and envelope(r)["param"] == "input"
    r = requests.post(url, json={"model": EMBED, "input": ["ok", ""]})
    assert r.status_code == 400 and "Input 1" in envelope(r)["message"]
    r = requests.post(url, json={"model": EMBED, "input": ["x"] * 2049})
    assert r.status_code == 400 and "2048" in envelope(r)["message"]
    r = requests.post(url, json={"model": EMBED, "input": ["fine", "word " * 300]})
    e = envelope(r)
    assert r.status_code == 400 and e["param"] == "input" and e["code"] == "context_length_exceeded"
    assert "Input 1" in e["message"] and "256" in e["message"]
    r = requests.post(url, json={"model": EMBED, "input": [[101, 40000]]})
    assert r.status_code == 400 and "vocabulary" in envelope(r)["message"]
    r = requests.post(url, json={"model": EMBED, "input": "x", "encoding_format": "int8"})
    assert r.status_code == 400 and envelope(r)["param"] == "encoding_format"
    r = requests.post(url, json={"model": EMBED, "input": [1.5]})
    assert r.status_code == 400 and envelope(r)["param"] == "input"
    r = requests.post(url, json={"model": MODEL_NAME, "input": "x"})
    assert r.status_code == 400 and envelope(r)["code"] == "model_not_supported"
    r = requests.post(both.url + "/v1/chat/completions", json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and envelope(r)["code"] == "model_not_supported"


def test_models_lists_both_with_kind_and_context_length(both):
    data = {m["id"]: m for m in requests.get(both.url + "/v1/models").json()["data"]}
    assert data[MODEL_NAME]["kind"] == "chat" and data[MODEL_NAME]["max_model_len"] > 256
    assert data[EMBED]["kind"] == "embedding" and data[EMBED]["max_model_len"] == 256
    assert all(m["loaded"] for m in data.values())


def test_chat_and_embeddings_interleaved_under_concurrency(sdk, both):
    msgs = [[{"role": "user", "content": f"Name a color number {i}."}] for i in range(4)]
    texts = [[f"sentence {i} {j}" for j in range(20)] for i in range(6)]
    chat = lambda m: sdk.chat.completions.create(model=MODEL_NAME, messages=m, max_tokens=16, temperature=0).choices[0].message.content
    emb = lambda t: [d.embedding for d in sdk.embeddings.create(model=EMBED, input=t).data]
    solo_chat = [chat(m) for m in msgs]
    solo_emb = [emb(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        chats = [pool.submit(chat, m) for m in msgs]
        embs = [pool.submit(emb, t) for t in texts]
        got_chat = [f.result() for f in chats]
        got_emb = [f.result() for f in embs]
    assert got_chat == solo_chat, "greedy chat answers do not change beside embeddings"
    for want, got in zip(solo_emb, got_emb):
        assert all(cos(a, b) > 1 - 1e-5 for a, b in zip(want, got)), "no cross-talk between batched requests"
    m = both.metrics()
    assert m[f'wick:embedding_requests_total{{model_name="{EMBED}"}}'] >= 12
    assert m[f'wick:model_loaded{{model_name="{MODEL_NAME}",kind="chat"}}'] == 1


def _config(tmp_path, text):
    p = tmp_path / "wick.toml"
    p.write_text(text)
    return str(p)


def _log(server):
    server.log.flush()
    return Path(server.log.name).read_text()


def _loaded(server):
    return {m["id"]: m["loaded"] for m in requests.get(server.url + "/v1/models").json()["data"]}


def test_load_on_demand_idle_unload_and_reload(tmp_path, spawn):
    cfg = _config(tmp_path, f"""
[[models]]
model = "{_minilm()}"
name = "lazy"
aliases = ["text-embedding-3-small"]
preload = false
idle_unload_secs = 2
[[models]]
model = "{_model()}"
name = "lazy-chat"
preload = false
""")
    s = spawn("--config", cfg, "--sse-keep-alive-secs", "1")
    assert requests.get(s.url + "/ready").status_code == 200, "ready without the on-demand model"
    assert _loaded(s)["lazy"] is False
    sdk = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    first = sdk.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="float")
    assert len(first.data[0].embedding) == 384 and _loaded(s)["lazy"] is True
    deadline = time.time() + 15
    while _loaded(s)["lazy"] and time.time() < deadline:
        time.sleep(0.5)
    assert _loaded(s)["lazy"] is False, "unloaded after 2 s idle"
    assert s.metrics()['wick:model_loaded{model_name="lazy",kind="embedding"}'] == 0
    again = sdk.embeddings.create(model="lazy", input="hello", encoding_format="float")
    assert cos(first.data[0].embedding, again.data[0].embedding) > 1 - 1e-6, "reloaded, same vectors"
    assert "unloading idle model" in _log(s) and _log(s).count("embedding model ready") == 2
    # A streamed chat request for a model not loaded yet: the answer starts at once (keep-alive
    # comments while it loads), then streams as usual.
    assert _loaded(s)["lazy-chat"] is False
    body = {"model": "lazy-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    # What is wrong whatever the model is gets a 400 before any load or stream starts.
    for path, bad, param in [
        ("/v1/chat/completions", {"temperature": 5}, "temperature"),
        ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x", "tool_call_id": "nope"}]}, "messages"),
        ("/v1/completions", {"prompt": "hi", "messages": None, "top_p": 7}, "top_p"),
    ]:
        req = {k: v for k, v in {**body, **bad}.items() if v is not None}
        r = requests.post(s.url + path, json=req, timeout=30)
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), (bad, r.text)
        assert (r.json()["error"]["param"] or "").startswith(param), (bad, r.text)
    assert _loaded(s)["lazy-chat"] is False, "a refused request loads nothing"
    with requests.post(s.url + "/v1/chat/completions", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [l for l in r.iter_lines() if l]
    data = [l for l in lines if l.startswith(b"data: ")]
    assert data[-1] == b"data: [DONE]" and json.loads(data[0][6:])["object"] == "chat.completion.chunk"
    assert _loaded(s)["lazy-chat"] is True


def test_memory_budget_evicts_the_least_recently_used_and_refuses_what_cannot_fit(tmp_path, spawn):
    minilm = _minilm()
    cfg = _config(tmp_path, f"""
[engine]
memory_budget_mb = 150
[[models]]
model = "{minilm}"
name = "e2"
preload = false
[[models]]
model = "{_model()}"
name = "big-chat"
preload = false
""")
    # The primary model is MiniLM too (about 87 MiB): two of them do not fit in 150 MiB.
    s = spawn("--config", cfg, model=minilm)
    url = s.url + "/v1/embeddings"
    assert requests.post(url, json={"model": MODEL_NAME, "input": "a"}).status_code == 200
    assert requests.post(url, json={"model": "e2", "input": "b"}).status_code == 200
    assert _loaded(s) == {MODEL_NAME: False, "e2": True, "big-chat": False}, "the idle primary was evicted"
    assert requests.post(url, json={"model": MODEL_NAME, "input": "c"}).status_code == 200
    assert _loaded(s) == {MODEL_NAME: True, "e2": False, "big-chat": False}
    assert requests.get(s.url + "/ready").status_code == 200, "an evicted preload model reloads on demand"
    r = requests.post(s.url + "/v1/chat/completions", json={"model": "big-chat", "messages": [{"role": "user", "content": "hi"}]})
    e = envelope(r)
    assert r.status_code == 503 and e["code"] == "model_cannot_fit" and "150 MiB" in e["message"]
    assert int(r.headers["retry-after"]) > 0
    assert "evicting the least recently used idle model" in _log(s)


# --- A decoder embedding model (wick's own model layer) beside the chat model -----------------

DECODER = "qwen3-embed"
QUERY = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
DECODER_REF = json.loads((ROOT / "tests" / "fixtures" / "decoder_embedding_reference.json").read_text())


def _qwen3_fixture():
    d = Path(os.environ.get("WICK_ARCH_FIXTURES") or ROOT.parent / "shared" / "fixtures" / "archs")
    if not (d / "qwen3.gguf").is_file():
        pytest.skip(f"{d}/qwen3.gguf absent: notice, decoder embedding tests not run")
    return d / "qwen3.gguf"


@pytest.fixture(scope="module")
def decoder_server(tmp_path_factory):
    """The chat model (`test-model`) and the qwen3 fixture as an embedding model, last-token
    pooling forced (the fixture has no pooling_type), an f32 KV cache as llama.cpp's reference."""
    cfg = tmp_path_factory.mktemp("decoder") / "wick.toml"
    cfg.write_text(f"""
[[models]]
model = "{_qwen3_fixture()}"
name = "{DECODER}"
kind = "embedding"
pooling = "last"
prompts = {{ query = {json.dumps(QUERY)}, passage = "" }}
""")
    s = Server("--config", str(cfg), "--kv-cache-dtype", "f32")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dsdk(decoder_server):
    return openai.OpenAI(base_url=decoder_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_decoder_embeddings_float_and_base64_match_llama_cpp(dsdk, decoder_server):
    ref = DECODER_REF["models"]["qwen3"]
    f = dsdk.embeddings.create(model=DECODER, input=DECODER_REF["prompts"], encoding_format="float")
    b = dsdk.embeddings.create(model=DECODER, input=DECODER_REF["prompts"])  # the SDK's base64
    assert f.usage.prompt_tokens == sum(len(t) for t in ref["tokens"]), "llama.cpp's tokenization"
    for i, (fd, bd, want) in enumerate(zip(f.data, b.data, ref["embeddings"]["last"])):
        assert fd.index == i and len(fd.embedding) == 64 == len(bd.embedding)
        assert abs(norm(fd.embedding) - 1) < 1e-5
        assert max(abs(x - y) for x, y in zip(fd.embedding, bd.embedding)) < 1e-7, "base64 == float"
        diff = max(abs(x - y) for x, y in zip(fd.embedding, want))
        assert diff < 1e-4, f"prompt {i}: max |diff| {diff} against llama-embedding --pooling last"
    models = {m["id"]: m for m in requests.get(decoder_server.url + "/v1/models").json()["data"]}
    assert models[DECODER]["kind"] == "embedding" and models[MODEL_NAME]["kind"] == "chat"
    chat = dsdk.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.choices[0].message.content is not None, "the chat model still answers beside it"


def test_prompt_name_puts_the_instruction_before_the_text(dsdk):
    text = "What is the capital of France?"
    plain = dsdk.embeddings.create(model=DECODER, input=text, encoding_format="float")
    query = dsdk.embeddings.create(model=DECODER, input=text, encoding_format="float",
                                   extra_body={"prompt_name": "query"})
    spelled = dsdk.embeddings.create(model=DECODER, input=QUERY + text, encoding_format="float")
    passage = dsdk.embeddings.create(model=DECODER, input=text, encoding_format="float",
                                     extra_body={"prompt_name": "passage"})
    assert cos(plain.data[0].embedding, query.data[0].embedding) < 0.99, "the prompt changes the vector"
    assert query.data[0].embedding == spelled.data[0].embedding, "the prompt is text put before the input"
    assert query.usage.prompt_tokens == spelled.usage.prompt_tokens > plain.usage.prompt_tokens
    assert passage.data[0].embedding == plain.data[0].embedding, "an empty prompt adds nothing"
    # The reference's second prompt is the query prompt + a question: llama.cpp's vector.
    ref = DECODER_REF["models"]["qwen3"]["embeddings"]["last"][1]
    assert DECODER_REF["prompts"][1] == QUERY + text
    assert max(abs(x - y) for x, y in zip(query.data[0].embedding, ref)) < 1e-4


def test_unknown_prompt_name_is_a_400_envelope(dsdk, decoder_server):
    with pytest.raises(openai.BadRequestError) as e:
        dsdk.embeddings.create(model=DECODER, input="x", extra_body={"prompt_name": "nope"})
    assert e.value.status_code == 400 and e.value.body["param"] == "prompt_name"
    assert "passage, query" in e.value.body["message"]
    url = decoder_server.url + "/v1/embeddings"
    r = requests.post(url, json={"model": DECODER, "input": [1, 2, 3], "prompt_name": "query"})
    assert r.status_code == 400 and envelope(r)["param"] == "prompt_name", "no prompt for token ids"
    r = requests.post(url, json={"model": DECODER, "input": "x", "prompt_name": 3})
    assert r.status_code == 400 and envelope(r)["type"] == "invalid_request_error"
    r = requests.post(url, json={"model": DECODER, "input": [[1, 2], [49152]]})
    assert r.status_code == 400 and "Input 1" in envelope(r)["message"]
