#!/usr/bin/env python3
"""Records tests/fixtures/decoder_embedding_reference.json, ONCE, with llama.cpp's
`llama-embedding` as the independent oracle for wick's decoder embedding models
(tests/integration/embeddings.rs matches it).

Models: the tiny random-weight qwen3 fixtures of ../shared/fixtures/archs (`qwen3.gguf`, F32 with
an F16 embedding, and `qwen3-q8_0.gguf`), which carry no pooling_type, so pooling is forced
(`--pooling last` and `--pooling mean`, as wick's `pooling` load option forces it); and
`qwen3-embed`, the same qwen3.gguf with the two keys a Qwen3-Embedding GGUF has added
(`qwen3.pooling_type = 3` (last), `tokenizer.ggml.add_eos_token = true`), run with no --pooling
so llama.cpp reads the pooling from the file and appends EOS itself. The Rust test rebuilds that
file the same way.

Every prompt runs alone (one llama-embedding process each), 1 thread, flash attention off, an F32
KV cache (llama.cpp's default F16 cache would move the vectors; the fixtures' logits references use
F32 too), L2 normalization. The token ids recorded are the ones llama-embedding itself fed
(`--verbose-prompt`), so wick's tokenization is checked against them too.

    python3 scripts/decoder-embedding-reference.py [LLAMA_BIN_DIR] [FIXTURES_DIR]
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA = Path(sys.argv[1] if len(sys.argv) > 1 else
             "/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin")
FIXTURES = Path(sys.argv[2] if len(sys.argv) > 2 else ROOT.parent / "shared" / "fixtures" / "archs")
SEP = "<#never#>"

PROMPTS = [
    "The cat sits on the mat.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
    "What is the capital of France?",
    "naïve café — “quotes”, emoji 🙂 and numbers 3.14159",
    "short",
    "Paris is the capital and largest city of France. With an estimated population of over two million "
    "residents, it is the centre of the Île-de-France region, and one of the largest metropolitan areas "
    "in Europe. Since the 17th century it has been a major centre of finance, diplomacy, commerce, "
    "culture, fashion and gastronomy.",
    "<|im_start|>user\nhello there<|im_end|>",
]


def llama_version():
    r = subprocess.run([str(LLAMA / "llama-embedding"), "--version"], capture_output=True, text=True)
    return next((l for l in (r.stdout + r.stderr).splitlines() if l.startswith("version")), "unknown")


def llama_commit():
    src = LLAMA.parents[1]
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def embed(model, prompt, pooling):
    cmd = [str(LLAMA / "llama-embedding"), "-m", str(model), "-t", "1", "-c", "512", "-fa", "off",
           "-ctk", "f32", "-ctv", "f32", "--embd-normalize", "2", "--embd-output-format", "array",
           "--embd-separator", SEP, "--verbose-prompt", "--no-warmup", "-p", prompt]
    if pooling:
        cmd[1:1] = ["--pooling", pooling]
    r = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    out = r.stdout + "\n" + r.stderr
    n = int(re.search(r"number of tokens in prompt = (\d+)", out).group(1))
    ids = [int(m) for m in re.findall(r"^\s*(\d+) -> '", out, re.M)][:n]
    assert len(ids) == n, (n, ids)
    arrays = re.findall(r"^\[\[.*\]\]$", r.stdout, re.M)
    assert len(arrays) == 1, r.stdout[-2000:]
    [vector] = json.loads(arrays[0])
    shown = [Path(c).name if c in (str(model), cmd[0]) else c for c in cmd[:-1]]
    return ids, vector, " ".join(shown + ["<prompt>"])


def embed_variant(src, dst):
    """qwen3.gguf plus `qwen3.pooling_type = 3` and `tokenizer.ggml.add_eos_token = true`."""
    sys.path.insert(0, str(LLAMA.parents[1] / "gguf-py"))
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(src, "r")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(dst, arch=arch, endianess=reader.endianess)
    new = {
        f"{arch}.pooling_type": MetadataDetails(gguf.GGUFValueType.UINT32, 3),
        "tokenizer.ggml.add_eos_token": MetadataDetails(gguf.GGUFValueType.BOOL, True),
    }
    copy_with_new_metadata(reader, writer, new, [])


def main():
    models = {"qwen3": (FIXTURES / "qwen3.gguf", ["last", "mean"]),
              "qwen3-q8_0": (FIXTURES / "qwen3-q8_0.gguf", ["last", "mean"])}
    tmp = Path(tempfile.mkdtemp(prefix="wick-embed-ref-"))
    variant = tmp / "qwen3-embed.gguf"
    embed_variant(FIXTURES / "qwen3.gguf", variant)
    models["qwen3-embed"] = (variant, [None])
    out = {
        "made_by": "scripts/decoder-embedding-reference.py",
        "llama_cpp": {"commit": llama_commit(), "version": llama_version(), "binary": "llama-embedding (CPU build)"},
        "prompts": PROMPTS,
        "models": {},
    }
    for name, (path, poolings) in models.items():
        entry = {"gguf": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "tokens": [],
                 "embeddings": {}}
        for pooling in poolings:
            key = pooling or "file"
            vectors, tokens = [], []
            for p in PROMPTS:
                ids, v, cmd = embed(path, p, pooling)
                tokens.append(ids)
                vectors.append(v)
            assert not entry["tokens"] or entry["tokens"] == tokens, "tokenization does not depend on pooling"
            entry["tokens"] = tokens
            entry["embeddings"][key] = vectors
            entry.setdefault("commands", {})[key] = cmd
        out["models"][name] = entry
        print(f"{name}: {len(PROMPTS)} prompts, poolings {list(entry['embeddings'])}, "
              f"tokens {[len(t) for t in entry['tokens']]}")
    dest = ROOT / "tests" / "fixtures" / "decoder_embedding_reference.json"
    dest.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    os.remove(variant)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
