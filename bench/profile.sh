#!/usr/bin/env bash
# Where a cache hit's time goes: the gateway's CPU split between user space and the kernel
# (from /proc/<pid>/stat around a wrk run), per answer size, and with CALLGRIND=1 the
# instructions per hit in user space and the functions that take them (valgrind's callgrind
# counts instructions, so its figures repeat on a noisy machine).
#
#   bash bench/profile.sh                 # CPU split, small and large answers
#   CALLGRIND=1 bash bench/profile.sh     # plus the callgrind profile of small hits
#
# Knobs: DURATION [5] seconds per wrk run, PORT_BASE [18600], SKIP_BUILD [0], LOG_LEVEL [warn]
# (`info` profiles the access log as shipped), CALLGRIND_OUT [none] (keep the profile there),
# BIN_DIR [./target/release] (profile other binaries, e.g. an older build, with SKIP_BUILD=1).
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
PORT_BASE=${PORT_BASE:-18600}
SKIP_BUILD=${SKIP_BUILD:-0}
CALLGRIND=${CALLGRIND:-0}
LOG_LEVEL=${LOG_LEVEL:-warn}
CALLGRIND_OUT=${CALLGRIND_OUT:-}
BIN_DIR=${BIN_DIR:-./target/release}
((DURATION >= 1 && DURATION <= 60)) || { echo "DURATION must be 1..60" >&2; exit 2; }

for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 2; }
done
if [[ $CALLGRIND == 1 ]]; then
    command -v valgrind >/dev/null || { echo "CALLGRIND=1 needs valgrind" >&2; exit 2; }
fi

log() { printf '[profile %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 2; }
# shellcheck source=lib/processes.sh
source bench/lib/processes.sh
WORK=$(mktemp -d)

SIM_PORT=$PORT_BASE
GW_PORT=$((PORT_BASE + 1))
ADMIN_PORT=$((PORT_BASE + 2))
KEY=profile-key

[[ $SKIP_BUILD == 1 ]] || cargo build --release --bins --quiet

cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
worker_threads = 1
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[log]
level = "$LOG_LEVEL"
[upstream]
base_url = "http://127.0.0.1:$SIM_PORT"
token = "profile-org"
rate_limit_per_minute = 1000000
[[callers]]
name = "profile"
key = "$KEY"
EOF

start_bg "$WORK/sim.log" "$BIN_DIR"/usage-sim --listen "127.0.0.1:$SIM_PORT" \
    --keys profile-org --rate-scope off
wait_http "http://127.0.0.1:$SIM_PORT/__sim/stats" "$LAST_PID" "$WORK/sim.log"

# Starts the gateway (optionally under a wrapper such as valgrind) and waits for it; sets GW_PID.
start_gateway() {
    start_bg "$WORK/gateway.log" "$@" "$BIN_DIR"/usage-gateway --config "$WORK/gateway.toml"
    GW_PID=$LAST_PID
    # valgrind starts slowly: up to 20 s
    wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$GW_PID" "$WORK/gateway.log"
}

# Stops the gateway gracefully (callgrind writes its profile at the exit).
stop_gateway() { stop_pid "$GW_PID"; }

# user and system CPU ticks of a process so far
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

echo "### Where a hit's time goes ($(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD))"
echo
echo "gateway with server.worker_threads = 1, [log] level = \"$LOG_LEVEL\"; wrk -t1 -c32 -d${DURATION}s on the same 2 cores"
echo
echo "| answer | req/s | gateway CPU (cores) | user | kernel | user µs per hit | kernel µs per hit |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
start_gateway
hz=$(getconf CLK_TCK)
for limit in 10 1000; do
    curl -fs -o /dev/null -H "Authorization: $KEY" "http://127.0.0.1:$GW_PORT/usage?limit=$limit"
    read -r u0 s0 < <(ticks "$GW_PID")
    rps=$(wrk -t1 -c32 -d"${DURATION}s" -H "Authorization: $KEY" \
        "http://127.0.0.1:$GW_PORT/usage?limit=$limit" | awk '/Requests\/sec/ {print $2}')
    read -r u1 s1 < <(ticks "$GW_PID")
    python3 - "$limit" "$rps" "$((u1 - u0))" "$((s1 - s0))" "$hz" "$DURATION" <<'PY'
import sys
limit, rps, user, kernel, hz, secs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
total = user + kernel
hits = rps * secs
name = "small (limit=10)" if limit == "10" else "large (limit=1000)"
print(f"| {name} | {rps:,.0f} | {total / hz / secs:.2f} | {100 * user / total:.0f}% | {100 * kernel / total:.0f}% "
      f"| {user / hz / hits * 1e6:.2f} | {kernel / hz / hits * 1e6:.2f} |")
PY
done
stop_gateway

if [[ $CALLGRIND == 1 ]]; then
    # Start-up, the fill and shutdown cost instructions too: a run that serves only the fill
    # measures them, and they are taken off, so the figure is per hit whatever the hit count.
    base="$WORK/callgrind-base.out"
    start_gateway valgrind --tool=callgrind --callgrind-out-file="$base"
    curl -fs -o /dev/null -H "Authorization: $KEY" "http://127.0.0.1:$GW_PORT/usage?limit=10"
    stop_gateway
    out="$WORK/callgrind.out"
    start_gateway valgrind --tool=callgrind --callgrind-out-file="$out"
    curl -fs -o /dev/null -H "Authorization: $KEY" "http://127.0.0.1:$GW_PORT/usage?limit=10"
    hits=$(wrk -t1 -c32 -d4s -H "Authorization: $KEY" "http://127.0.0.1:$GW_PORT/usage?limit=10" |
        awk '/requests in/ {print $1}')
    stop_gateway
    [[ -z $CALLGRIND_OUT ]] || cp "$out" "$CALLGRIND_OUT"
    program_total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
    total=$(($(program_total "$out") - $(program_total "$base")))
    echo
    echo "callgrind, small hits: $hits hits, $((total / hits)) user-space instructions per hit"
    echo "(under valgrind SHA-256 runs its portable code; natively it uses the CPU's SHA extensions)"
    echo
    echo "| share of user-space instructions (inclusive) | function |"
    echo "| ---: | --- |"
    callgrind_annotate --inclusive=yes "$out" 2>/dev/null |
        grep -E '^ *[0-9,]+ \( *[0-9.]+%\)  (src/|/work)' |
        grep -E 'usage_gateway::(cache::CacheLayer::decide|auth::KeyStore::identify|metrics::Metrics::record_request|query::UsageQuery::parse_query_within|cache::entry::CachedResponse::to_response|observe::IdSource::make|limits::check)' |
        sed -E 's/^ *[0-9,]+ \( *([0-9.]+)%\) +([^:]+):(.*)$/| \1% | `\3` |/' | sed -E 's/ \[[^]]*\]`/`/' |
        sort -u -t'|' -k3,3 | sort -t'|' -k2 -rn
fi
