#!/bin/sh
# Regenerates conformance-baseline.txt from the current engine (run from the repo root).
set -e
cargo test -q -p norn-promql --test conformance -- --nocapture 2>/dev/null | grep -E '^[a-z_0-9-]+\.test [0-9]+ [0-9]+ [0-9]+$' > promql/conformance-baseline.txt || true
cat promql/conformance-baseline.txt
