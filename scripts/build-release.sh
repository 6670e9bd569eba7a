#!/usr/bin/env bash
# Builds the release `wick` binary. The Docker build stage runs exactly this script, and so
# does the test suite, so the two cannot drift. Argument: the CPU target (candle picks its
# SIMD kernels at compile time): x86-64-v3 (portable AVX2, the Docker default) or native.
set -euo pipefail
cd "$(dirname "$0")/.."
cpu="${1:-x86-64-v3}"
RUSTFLAGS="-C target-cpu=$cpu" cargo build --release --locked -p wick-server --bin wick
echo "built $(pwd)/target/release/wick (target-cpu=$cpu)" >&2
