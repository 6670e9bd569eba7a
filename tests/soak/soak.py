"""A bounded soak of a real `wick serve` on SmolLM2 (scripts/test.sh runs it; about 5 minutes).

16 clients loop over a mix of requests: chat and legacy completions, streamed and not, n=2, stop
strings, logprobs, tool calls, JSON schemas, and streams the client drops after a few chunks,
against a KV cache a few percent of the default size, so sequences are preempted all the time.

Pass means: no unexpected status or error event, every completed stream well formed (JSON chunks,
a finish_reason per choice, `data: [DONE]` last), `wick:num_requests_running` back to 0 at the
end, preemptions seen, and resident memory in the last minute within 5% of the first minute's
(after a warm-up of one request of each kind).

Usage: python3 tests/soak/soak.py [--seconds 300] [--concurrency 16]
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
MODEL = "soak-model"
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "population"],
          "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                         "required": ["city"], "additionalProperties": False}}}]
PROMPTS = ["Tell me about the sea.", "Count from one to twenty.", "Write a short poem about rust.",
           "What is the capital of France?", "Explain recursion to a child.", "List five fruits."]


def binary():
    env = os.environ.get("WICK_BIN")
    if env:
        return env
    return str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "wick")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.failures = []

    def ok(self, kind):
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def fail(self, kind, what):
        with self.lock:
            self.failures.append(f"{kind}: {what}")


def check_stream(resp, n, kind, chat):
    """Reads a whole SSE body; returns a failure description or None."""
    # Lines end at \n only (bytes.splitlines): JSON strings may hold U+2028 or U+0085, which
    # str.splitlines (iter_lines with decode_unicode) would split on.
    data = [ln[6:].decode() for ln in resp.iter_lines() if ln.startswith(b"data: ")]
    if not data or data[-1] != "[DONE]":
        return f"stream did not end with [DONE]: {data[-2:]}"
    finished = set()
    for d in data[:-1]:
        c = json.loads(d)
        if "error" in c:
            return f"error event {c['error']}"
        for ch in c["choices"]:
            if ch.get("finish_reason"):
                finished.add(ch["index"])
            if chat and not isinstance(ch["delta"], dict):
                return f"bad delta {ch}"
    if finished != set(range(n)):
        return f"finish_reason for choices {sorted(finished)}, expected {n}"
    return None


KINDS = ["chat", "chat_stream", "completion", "completion_stream", "n2", "stop", "logprobs", "tools", "schema",
         "disconnect"]


def one(url, rng, stats, kind=None):
    kind = kind or rng.choice(KINDS)
    prompt = rng.choice(PROMPTS)
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": rng.randint(8, 64)}
    path, stream, n, chat = "/v1/chat/completions", False, 1, True
    if kind == "chat_stream":
        stream = True
    elif kind in ("completion", "completion_stream"):
        path, chat = "/v1/completions", False
        body = {"model": MODEL, "prompt": prompt, "max_tokens": rng.randint(8, 64)}
        stream = kind == "completion_stream"
    elif kind == "n2":
        body["n"], n, stream = 2, 2, rng.random() < 0.5
    elif kind == "stop":
        body["stop"], stream = ["\n", " the"], True
    elif kind == "logprobs":
        body["logprobs"], body["top_logprobs"], stream = True, 2, rng.random() < 0.5
    elif kind == "tools":
        body["tools"], body["tool_choice"] = TOOLS, "required"
    elif kind == "schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
        body["max_tokens"] = 64
    elif kind == "disconnect":
        stream = True
        body["max_tokens"] = 200
    if stream:
        body["stream"] = True
    try:
        r = requests.post(url + path, json=body, stream=stream, timeout=300)
        if r.status_code != 200:
            return stats.fail(kind, f"status {r.status_code}: {r.text[:300]}")
        if kind == "disconnect":
            for i, _ in enumerate(r.iter_lines()):
                if i >= rng.randint(1, 6):
                    break
            r.close()
            return stats.ok(kind)
        if stream:
            problem = check_stream(r, n, kind, chat)
            if problem:
                return stats.fail(kind, problem)
            return stats.ok(kind)
        v = r.json()
        if len(v["choices"]) != n or any(c["finish_reason"] is None for c in v["choices"]):
            return stats.fail(kind, f"bad body {str(v)[:300]}")
        if kind == "tools":
            calls = v["choices"][0]["message"].get("tool_calls") or []
            if v["choices"][0]["finish_reason"] == "tool_calls" and not calls:
                return stats.fail(kind, "finish_reason tool_calls without calls")
            for c in calls:
                json.loads(c["function"]["arguments"])
        if kind == "schema" and v["choices"][0]["finish_reason"] == "stop":
            json.loads(v["choices"][0]["message"]["content"])
        stats.ok(kind)
    except (requests.RequestException, ValueError, KeyError) as e:
        stats.fail(kind, repr(e)[:300])


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metrics(url):
    """Samples by their bare name, summed over label sets (metrics carry `model_name`)."""
    out = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            bare = name.split("{", 1)[0]
            out[bare] = out.get(bare, 0.0) + float(value)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--num-blocks", type=int, default=40, help="KV blocks of 16 tokens (default cache: ~2900)")
    args = ap.parse_args()
    model = os.environ.get("WICK_TEST_MODEL_SMOLLM2")
    if not model:
        sys.exit("set WICK_TEST_MODEL_SMOLLM2 (scripts/fetch-model.sh smollm2)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(f"/tmp/wick-soak-{port}.log", "w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WICK_")}
    proc = subprocess.Popen([binary(), "serve", "--model", model, "--port", str(port), "--offline",
                             "--served-model-name", MODEL, "--num-blocks", str(args.num_blocks),
                             "--max-model-len", "512"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if requests.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                sys.exit(f"wick serve exited early; see {log.name}")
            time.sleep(0.2)
        stats = Stats()
        # Warm-up, not measured: the first grammar builds the token trie, the first of each kind
        # fills the allocator's pools.
        warm = Stats()
        for kind in KINDS:
            one(url, random.Random(0), warm, kind)
        if warm.failures:
            sys.exit(f"warm-up failed: {warm.failures}")
        stop_at = time.time() + args.seconds

        def worker(seed):
            rng = random.Random(seed)
            while time.time() < stop_at:
                one(url, rng, stats)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
        start = time.time()
        for t in threads:
            t.start()
        samples = []
        while any(t.is_alive() for t in threads):
            time.sleep(5)
            samples.append((time.time() - start, rss_kib(proc.pid)))
        for t in threads:
            t.join()
        for _ in range(100):
            m = metrics(url)
            if m.get("wick:num_requests_running", 1) == 0 and m.get("wick:num_requests_waiting", 1) == 0:
                break
            time.sleep(0.1)
        minute = min(60, args.seconds / 5)
        first = [r for t, r in samples if t <= minute]
        last = [r for t, r in samples if t >= args.seconds - minute]
        growth = (sum(last) / len(last)) / (sum(first) / len(first)) - 1 if first and last else 0
        total = sum(stats.counts.values())
        print(f"soak: {total} requests in {args.seconds} s at concurrency {args.concurrency}: {stats.counts}")
        print(f"soak: preemptions {m.get('wick:num_preemptions_total', 0):.0f}, running at the end "
              f"{m.get('wick:num_requests_running')}, RSS first minute {first and sum(first) // len(first)} KiB, "
              f"last minute {last and sum(last) // len(last)} KiB ({growth * 100:+.1f}%)")
        problems = list(stats.failures)
        if m.get("wick:num_requests_running") != 0 or m.get("wick:num_requests_waiting") != 0:
            problems.append(f"requests still running/waiting at the end: {m}")
        if m.get("wick:num_preemptions_total", 0) == 0:
            problems.append("no preemption happened: the KV cache is not small enough to test it")
        if growth >= 0.05:
            problems.append(f"RSS grew {growth * 100:.1f}% from the first minute to the last")
        if proc.poll() is not None:
            problems.append(f"wick serve died (exit {proc.returncode})")
        if problems:
            for p in problems[:30]:
                print("FAIL", p)
            sys.exit(f"soak failed: {len(problems)} problems (log: {log.name})")
        print("soak passed")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
