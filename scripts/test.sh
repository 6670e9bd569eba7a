#!/usr/bin/env bash
# Runs every test of wick: formatting and clippy, Rust unit and integration tests (tiny random
# models written by the tests, the llama.cpp fixtures in ../shared/fixtures/archs, and the real
# SmolLM2 and Gemma 3 models and the all-MiniLM-L6-v2 embedding model fetched from PyPI),
# `wick chat` in a pseudo-terminal, the Python suite driving a real `wick serve` with the
# official openai SDK, the response store on a real PostgreSQL server (Debian's postgresql), the
# chat page in Debian's chromium (playwright-core; screenshots in target/ui-screenshots/), the
# OpenAPI contract fuzzed by schemathesis, a 5-minute soak, three replicas behind nginx with one
# SIGTERMed mid-run, the Helm chart's lint and strict validation, and the Dockerfile lint.
# Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
echo "== models"
WICK_TEST_MODEL_SMOLLM2="$(scripts/fetch-model.sh smollm2)"
export WICK_TEST_MODEL_SMOLLM2
WICK_TEST_MODEL_GEMMA3="$(scripts/fetch-model.sh gemma3)"
export WICK_TEST_MODEL_GEMMA3
WICK_TEST_MODEL_MINILM="$(scripts/fetch-model.sh minilm)"
export WICK_TEST_MODEL_MINILM
echo "== release binary (same script as the Docker build stage)"
scripts/build-release.sh x86-64-v3
export WICK_BIN="$PWD/target/release/wick"
echo "== cargo test (the fuzz targets of tests/integration/fuzz.rs run 40 s each)"
WICK_FUZZ_SECS="${WICK_FUZZ_SECS:-40}" cargo test --workspace --locked
echo "== the llama.cpp fixtures on the lower kernel levels (the run above used the best this CPU has)"
for level in avx2 scalar; do
    WICK_KERNELS=$level cargo test --locked -p wick-tests --test integration archs
done
echo "== python: openai SDK against a real server"
python3 -m pytest tests/python -q
echo "== postgresql: the response store on a real PostgreSQL server (about 1 minute)"
timeout 600 scripts/postgres-test.sh
echo "== chat page: playwright-core drives Debian's chromium against a real wick serve (about 2 minutes)"
timeout 900 scripts/ui-test.sh
echo "== contract: schemathesis against /openapi.json (about 3 minutes)"
scripts/schemathesis.sh 150
echo "== soak: 5 minutes at concurrency 16, tiny KV cache"
python3 tests/soak/soak.py --seconds 300 --concurrency 16
echo "== several replicas behind nginx, one SIGTERMed mid-run"
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    apt-get update -q >/dev/null && (apt-get install -y -q --no-install-recommends nginx-light || apt-get install -y -q --no-install-recommends nginx) >/dev/null
fi
python3 tests/replicas/replicas.py
echo "== kubernetes: helm lint/template (Helm's SDK from PyPI) and strict schema validation"
python3 scripts/k8s-check.py
echo "== docker lint"
hadolint docker/Dockerfile docker/Dockerfile.cuda
echo "all tests passed"
