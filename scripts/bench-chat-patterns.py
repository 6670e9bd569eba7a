#!/usr/bin/env python3
"""Two serving patterns from issue 11 (benchmarks, not tests), against any OpenAI-compatible URL.

  same-prompt   one stream of a short greedy prompt ("count to 50") alone, then N such
                streams at once: prints both wall times and their ratio.
  conversation  a 10-turn chat resent turn by turn (each turn appends the answer and a new
                user message): prints every turn's time to first token.

  scripts/bench-chat-patterns.py --base-url http://127.0.0.1:8080/v1 --model smollm2
Standard library only.
"""
import argparse
import json
import secrets
import statistics
import threading
import time
import urllib.request


IGNORE_EOS = False


def stream_chat(base, model, messages, max_tokens):
    """Streams one chat completion; returns (ttft_s, wall_s, text)."""
    req = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    if IGNORE_EOS:
        req["ignore_eos"] = True
    body = json.dumps(req).encode()
    req = urllib.request.Request(base + "/chat/completions", body, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, text = None, []
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text.append(piece)
    return ttft, time.perf_counter() - t0, "".join(text)


def same_prompt(args):
    msgs = [{"role": "user", "content": "Count from 1 to 50, separated by commas."}]
    stream_chat(args.base_url, args.model, msgs, 16)  # warm-up
    _, alone, _ = stream_chat(args.base_url, args.model, msgs, args.max_tokens)
    walls = [0.0] * args.streams

    def one(i):
        walls[i] = stream_chat(args.base_url, args.model, msgs, args.max_tokens)[1]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = time.perf_counter() - t0
    print(json.dumps({"pattern": "same-prompt", "streams": args.streams, "alone_s": round(alone, 3),
                      "together_s": round(together, 3), "ratio": round(together / alone, 2)}))


def conversation(args):
    # A new session tag per run: every run's turn 1 is prefilled cold, as a new chat's is, rather
    # than served from the prefix cache of an earlier run of the same conversation.
    firsts, lasts = [], []
    for _ in range(args.runs):
        session = secrets.token_hex(4)
        msgs = [{"role": "system", "content": f"You are a helpful assistant who answers in a few sentences. Session {session}."}]
        topics = ["rivers", "bread", "trains", "bees", "glass", "maps", "tea", "clocks", "salt", "kites"]
        ttfts = []
        for topic in topics:
            msgs.append({"role": "user", "content": f"Tell me something interesting about {topic}."})
            ttft, _, text = stream_chat(args.base_url, args.model, msgs, args.max_tokens)
            ttfts.append(round(ttft * 1000, 1))
            msgs.append({"role": "assistant", "content": text})
        firsts.append(ttfts[0])
        lasts.append(ttfts[-1])
        print(json.dumps({"pattern": "conversation", "ttft_ms": ttfts, "turn10_over_turn1": round(ttfts[-1] / ttfts[0], 2)}))
    if args.runs > 1:
        # Machines drift run to run: the medians of turn 1 and turn 10 over the runs.
        ratio = statistics.median(lasts) / statistics.median(firsts)
        print(json.dumps({"pattern": "conversation", "runs": args.runs, "median_turn1_ms": statistics.median(firsts),
                          "median_turn10_ms": statistics.median(lasts), "median_ratio": round(ratio, 2)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=1, help="conversations to run (each a new one); above 1 also prints "
                   "the ratio of the medians of turn 10 and turn 1")
    p.add_argument("--pattern", choices=["same-prompt", "conversation", "both"], default="both")
    p.add_argument("--ignore-eos", action="store_true",
                   help="every answer runs to --max-tokens (vLLM's and wick's ignore_eos), so the conversation's "
                        "length does not depend on what the model happens to say")
    args = p.parse_args()
    global IGNORE_EOS
    IGNORE_EOS = args.ignore_eos
    if args.pattern in ("same-prompt", "both"):
        same_prompt(args)
    if args.pattern in ("conversation", "both"):
        conversation(args)


if __name__ == "__main__":
    main()
