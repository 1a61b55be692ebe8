#!/usr/bin/env bash
# The shielding report: a mixed workload through the gateway against usage-sim enforcing
# 600 calls/min, healthy -> upstream down -> recovered. Loopback only; every phase bounded.
# Phase lengths: SHIELD_HEALTHY_SECS (90), SHIELD_DOWN_SECS (100), SHIELD_RECOVER_SECS (30).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example shield
mkdir -p bench/results
out="bench/results/shield-$(date -u +%Y-%m-%d).md"
./target/release/examples/shield | tee "$out"
echo "(written to $out)"
