#!/usr/bin/env bash
# The scale-out report: the shielding workload spread over three gateway replicas sharing one
# redis-server, against usage-sim enforcing 600 calls per wall-clock minute for the
# organization, compared with one gateway alone; then the fault runs (Redis killed, Redis
# paused, a replica killed). Writes bench/results/replicas-<UTC date>.md (a shortened run:
# replicas-<date>-quick.md).
#
# Loopback (127.0.0.1) only: redis-server on a free port, the gateways (the release binary) on
# free ports, usage-sim in the report's own process. Every load loop is bounded in time; every
# process it starts is killed when it ends.
#
#   bash bench/replicas.sh                    DURATION=120 s per main run, FAULT_SECS=30 per fault
#   DURATION=30 FAULT_SECS=15 bash bench/replicas.sh   a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is not on PATH (apt-get install redis-server)" >&2; exit 1; }
DURATION=${DURATION:-120}
FAULT_SECS=${FAULT_SECS:-30}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --bin usage-gateway --example replicas
mkdir -p bench/results
suffix=""
[[ $DURATION -lt 120 ]] && suffix="-quick"
out="bench/results/replicas-$(date -u +%Y-%m-%d)$suffix.md"
GATEWAY_BIN="$TARGET/release/usage-gateway" DURATION=$DURATION FAULT_SECS=$FAULT_SECS \
    timeout $((DURATION * 2 + FAULT_SECS * 3 + 300)) "$TARGET/release/examples/replicas" | tee "$out"
echo "(written to $out)"
