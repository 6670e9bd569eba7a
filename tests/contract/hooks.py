"""schemathesis hooks for wick's contract run (scripts/schemathesis.sh): generated requests keep
their shape, but generation is capped so that a few hundred of them fit in minutes on a CPU: at
most 2 choices, at most 8 new tokens each (a request that leaves `max_tokens` out would otherwise
run to the end of the context), at most 16 embedding inputs, and a string `model` is the served
one of its kind (random names only test the 404): `test-model` for chat, all-MiniLM-L6-v2 for
embeddings. Values outside the valid range are left alone, so the server's validation sees them."""

import schemathesis

CAPS = {"n": 2, "max_tokens": 8, "max_completion_tokens": 8, "max_output_tokens": 8, "best_of": 2}


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if isinstance(body, dict) and case.operation.path in ("/v1/chat/completions", "/v1/completions",
                                                          "/v1/responses", "/tokenize", "/detokenize"):
        if isinstance(body.get("model"), str):
            body["model"] = "test-model"
        for key, cap in CAPS.items():
            v = body.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and 1 <= v:
                body[key] = min(v, cap)
    if isinstance(body, dict) and case.operation.path in ("/v1/chat/completions", "/v1/completions"):
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = 8
    if isinstance(body, dict) and case.operation.path == "/v1/embeddings":
        if isinstance(body.get("model"), str):
            body["model"] = "all-MiniLM-L6-v2"
        if isinstance(body.get("input"), list):
            body["input"] = body["input"][:16]
    if isinstance(body, dict) and case.operation.path == "/v1/responses" and "max_output_tokens" not in body:
        body["max_output_tokens"] = 8
    return case
