#!/usr/bin/env python3
# Usage: scripts/bench-sampling-defaults.py BASE_URL [MODEL]   (a running `wick serve`, e.g. http://127.0.0.1:8080)
"""5 everyday prompts x 4 samples with no sampling fields: how many end with `stop` within 300 tokens."""
import sys, requests
URL = sys.argv[1] + "/v1/chat/completions"
PROMPTS = ["Say hi in French.", "What is the capital of Italy?", "Give me a synonym for happy.",
           "Write one sentence about the sea.", "How many legs does a spider have?"]
stops, lens = 0, []
for p in PROMPTS:
    for k in range(4):
        r = requests.post(URL, json={"model": MODEL, "messages": [{"role": "user", "content": p}], "max_tokens": 300}, timeout=600).json()
        c = r["choices"][0]
        stops += c["finish_reason"] == "stop"
        lens.append(r["usage"]["completion_tokens"])
print(f"{stops}/20 end with stop within 300 tokens; completion tokens: median {sorted(lens)[10]}, max {max(lens)}")
