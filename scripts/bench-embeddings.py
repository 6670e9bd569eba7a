#!/usr/bin/env python3
"""Embedding throughput of a real `wick serve`, and chat decode speed beside it.

Starts `wick serve` with a chat model and an embedding model (or uses --url), then measures:
  1. embeddings alone: requests of 32 short sentences, from 1 and from 2 clients (sentences/s);
  2. chat decode alone: one streamed greedy completion of 128 tokens (tokens/s);
  3. both at once: the same chat completion while one client keeps sending embedding batches.
The machine's cores are shared by candle's pool for both engine threads; say what else ran.
With --only-embeddings and --url, only step 1, against any embeddings server (llama.cpp's
`llama-server --embedding --pooling mean` on a GGUF of the same model, for a side-by-side figure).

    scripts/bench-embeddings.py --bin target/release/wick --chat "$WICK_TEST_MODEL_SMOLLM2" \\
        --embed "$(scripts/fetch-model.sh minilm)"
"""

import argparse
import json
import socket
import subprocess
import threading
import time

import requests

WORDS = "the a quick brown fox jumps over lazy dog river bank money tree house car blue green idea".split()


def sentences(n, seed):
    out = []
    for i in range(n):
        k = seed * 131 + i * 17
        out.append(" ".join(WORDS[(k + j * 7) % len(WORDS)] for j in range(6 + (k % 5))) + ".")
    return out


def embed_batch(url, model, seed):
    r = requests.post(url + "/v1/embeddings", json={"model": model, "input": sentences(32, seed)}, timeout=120)
    r.raise_for_status()
    return len(r.json()["data"])


def embed_rate(url, model, clients, seconds):
    done, stop = [0], time.time() + seconds
    lock = threading.Lock()

    def loop(c):
        seed = c * 1000
        while time.time() < stop:
            n = embed_batch(url, model, seed)
            seed += 1
            with lock:
                done[0] += n

    t0 = time.time()
    threads = [threading.Thread(target=loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.time() - t0)


def print_embed_rates(url, model, seconds):
    for clients in (1, 2):
        label = f"embeddings alone, {clients} client{'s' if clients > 1 else ''}:"
        print(f"{label:<29}{embed_rate(url, model, clients, seconds):8.1f} sentences/s (batches of 32)")


def decode_rate(url, model, tokens=128):
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True}
    first, n = None, 0
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    n += 1
                    first = first or time.time()
    return (n - 1) / (time.time() - first)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--bin", default="target/release/wick")
    ap.add_argument("--chat")
    ap.add_argument("--embed")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--only-embeddings", action="store_true", help="with --url: embedding rates only")
    a = ap.parse_args()
    proc = None
    url = a.url
    if not url:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([a.bin, "serve", "--model", a.chat, "--model", a.embed, "--port", str(port),
                                 "--served-model-name", "chat", "--offline"], stderr=subprocess.DEVNULL)
        while True:
            try:
                if requests.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
    try:
        models = requests.get(url + "/v1/models").json()["data"]
        if a.only_embeddings:
            emb = models[0]["id"]
            embed_batch(url, emb, 0)
            print_embed_rates(url, emb, a.seconds)
            return
        chat = next(m["id"] for m in models if m["kind"] == "chat")
        emb = next(m["id"] for m in models if m["kind"] == "embedding")
        embed_batch(url, emb, 0)
        decode_rate(url, chat, 16)
        print_embed_rates(url, emb, a.seconds)
        print(f"chat decode alone:           {decode_rate(url, chat):8.1f} tokens/s")
        rate = {}
        t = threading.Thread(target=lambda: rate.setdefault("e", embed_rate(url, emb, 1, a.seconds)))
        t.start()
        time.sleep(1)
        beside = decode_rate(url, chat)
        t.join()
        print(f"chat decode beside embeddings: {beside:6.1f} tokens/s, embeddings meanwhile {rate['e']:.1f} sentences/s")
    finally:
        if proc:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
