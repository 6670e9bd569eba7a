#!/usr/bin/env bash
# The chat page in a real browser: installs Debian's chromium when it is missing (as root with
# apt-get) and playwright-core from npm (pinned in tests/ui/package-lock.json), then runs
# tests/ui/chat_page.test.mjs, which starts real `wick serve`s on SmolLM2 ($WICK_BIN,
# $WICK_TEST_MODEL_SMOLLM2) and drives the page. Screenshots: target/ui-screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${WICK_TEST_MODEL_SMOLLM2:?set WICK_TEST_MODEL_SMOLLM2 (scripts/fetch-model.sh smollm2)}"
export CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"
if [ -z "$CHROMIUM" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's chromium"
        log="$(mktemp)"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -q --no-install-recommends chromium >"$log" 2>&1; then
            apt-get update -q >>"$log" 2>&1 && apt-get install -y -q --no-install-recommends chromium >>"$log" 2>&1 ||
                { tail -30 "$log"; exit 1; }
        fi
        rm -f "$log"
    fi
    CHROMIUM="$(command -v chromium)" || { echo "no chromium here (not root, or no apt-get)"; exit 1; }
fi
(cd tests/ui && npm ci --no-audit --no-fund --silent)
node --test tests/ui/chat_page.test.mjs
