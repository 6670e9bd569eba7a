#!/usr/bin/env bash
# Runs every test of wick: formatting and clippy, Rust unit and integration tests (tiny random
# models written by the tests, the llama.cpp fixtures in ../shared/fixtures/archs, and the real
# SmolLM2 and Gemma 3 models fetched from PyPI), the response store on a throwaway PostgreSQL
# server, `wick chat` in a pseudo-terminal, the Python suite driving a real `wick serve` with
# the official openai SDK, the chat page in Debian's chromium (playwright-core; screenshots in
# target/ui-screenshots/), and the Dockerfile lint. Installs what it needs.
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
echo "== release binary (same script as the Docker build stage)"
scripts/build-release.sh x86-64-v3
export WICK_BIN="$PWD/target/release/wick"
echo "== PostgreSQL for the response-store test"
pg_dir="$(mktemp -d -u /tmp/wick-pg.XXXXXX)"
trap 'scripts/postgres-test.sh stop "$pg_dir"' EXIT
if WICK_TEST_POSTGRES_URL="$(scripts/postgres-test.sh start "$pg_dir")"; then
    export WICK_TEST_POSTGRES_URL
else
    echo "notice: no PostgreSQL server could be started here; the PostgreSQL store test is skipped"
fi
echo "== cargo test"
cargo test --workspace --locked
echo "== python: openai SDK against a real server"
python3 -m pytest tests/python -q
echo "== chat page in a real browser"
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
fi
(cd tests/ui && npm ci --no-audit --no-fund --silent && npm test --silent)
echo "== docker lint"
hadolint docker/Dockerfile docker/Dockerfile.cuda
echo "all tests passed"
