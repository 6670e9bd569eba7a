#!/usr/bin/env python3
# Usage: scripts/bench-structured.py BASE_URL [MODEL]   (a running `wick serve`, e.g. http://127.0.0.1:8080)
"""Structured decoding overhead: aggregate output tok/s with and without a strict nested schema,
at concurrency 1 and 16 (same prompts, same token count: the schema cannot complete within
max_tokens, the baseline ignores EOS)."""
import json, sys, time, concurrent.futures as cf
import requests

MODEL = sys.argv[2] if len(sys.argv) > 2 else "SmolLM2-135M-Instruct"

URL = sys.argv[1] + "/v1/chat/completions"
N = 128
ITEM = {"type": "object", "additionalProperties": False, "required": ["name", "age", "role", "address", "tags"],
        "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                       "role": {"enum": ["admin", "editor", "viewer"]},
                       "address": {"type": "object", "additionalProperties": False, "required": ["city", "zip"],
                                   "properties": {"city": {"type": "string", "maxLength": 16}, "zip": {"type": "integer", "minimum": 10000, "maximum": 99999}}},
                       "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3}}}
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["people"],
          "properties": {"people": {"type": "array", "items": ITEM, "minItems": 40}}}

def one(i, structured):
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"List forty people, as JSON. ({i})"}],
            "max_tokens": N, "temperature": 0.7, "seed": i}
    if structured:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA, "strict": True}}
    else:
        body["ignore_eos"] = True
    r = requests.post(URL, json=body, timeout=600).json()
    return r["usage"]["completion_tokens"]

def run(conc, structured, reqs):
    t = time.time()
    with cf.ThreadPoolExecutor(conc) as ex:
        toks = sum(ex.map(lambda i: one(i, structured), range(reqs)))
    return toks / (time.time() - t), toks

one(0, True)  # warm the grammar compiler
for conc, reqs in ((1, 4), (16, 32)):
    for rep in range(2):
        base, bt = run(conc, False, reqs)
        st, stt = run(conc, True, reqs)
        print(f"concurrency {conc:2d} rep {rep}: plain {base:6.1f} tok/s ({bt} tok), schema {st:6.1f} tok/s ({stt} tok), overhead {100*(1-st/base):5.1f}%", flush=True)

def metrics():
    out = {}
    for line in requests.get(sys.argv[1] + "/metrics", timeout=5).text.splitlines():
        if line.startswith("wick:engine_step_seconds") or line.startswith("wick:grammar_mask"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out

for conc, reqs in ((1, 4), (16, 32)):
    a = metrics()
    run(conc, True, reqs)
    b = metrics()
    step = b["wick:engine_step_seconds"] - a["wick:engine_step_seconds"]
    mask = b["wick:grammar_mask_seconds"] - a["wick:grammar_mask_seconds"]
    n = b["wick:grammar_masks_total"] - a["wick:grammar_masks_total"]
    print(f"concurrency {conc:2d}: masks took {100*mask/step:.2f}% of engine step time ({n:.0f} masks, {1e6*mask/max(n,1):.0f} us of step time per mask)")
