#!/usr/bin/env bash
# SSE benchmark: write→event latency and fan-out to 1 000 / 10 000 idle
# subscribers against a metacast process on loopback. Needs the local
# Postgres and Redis; cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# Both this client and the server hold one socket per subscriber.
ulimit -n "$(ulimit -Hn)"
cargo build --release --bin metacast
BENCH_METACAST_BIN=target/release/metacast cargo bench --bench sse_fanout
