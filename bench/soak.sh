#!/usr/bin/env bash
# Soak test: the gateway in front of usage-sim enforcing the real limit (600 calls per wall-clock
# minute for the organization), for DURATION seconds, while the simulator's faults are switched
# on and off (calm -> upstream down -> calm -> latency -> calm -> misbehaviors -> calm), with
# mixed callers and queries from bench/soak.py. Samples the gateway's RSS and open descriptors,
# prints a Markdown report and writes it to bench/results/soak-<UTC date>.md (runs shorter than
# the default 600 s: soak-<date>-quick.md, kept out of git). Exits 1 if a target is missed.
#
# Loopback (127.0.0.1) only; every loop bounded in count and time; every process this script
# starts is stopped on exit (trap), and its temporary directory removed.
#
#   bash bench/soak.sh                  10 minutes
#   DURATION=120 bash bench/soak.sh     2 minutes (development)
#
# Environment (defaults in brackets):
#   DURATION [600] seconds of load, split evenly over the phases (each at least MIN_PHASE_SECS [5])
#   WORKERS [8]  RATE [300] requests/s in all  BAD_SHARE [0.02] share of bad requests
#   CACHE_MAX_BYTES [67108864]  CACHE_TTL_SECS [20]  CACHE_SWR_SECS [10]  SAMPLE_SECS [2]
#   MISBEHAVIOR_RATE [0.5]
#   OVERSIZED_BYTES, TRICKLE_MS [the simulator's defaults]  PORT_BASE [18300]
#   SKIP_BUILD [0]  KEEP_WORK [0]: keep the temporary directory (configs, logs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-600}
WORKERS=${WORKERS:-8}
RATE=${RATE:-300}
BAD_SHARE=${BAD_SHARE:-0.02}
CACHE_MAX_BYTES=${CACHE_MAX_BYTES:-67108864}
CACHE_TTL_SECS=${CACHE_TTL_SECS:-20}
CACHE_SWR_SECS=${CACHE_SWR_SECS:-10}
SAMPLE_SECS=${SAMPLE_SECS:-2}
MIN_PHASE_SECS=${MIN_PHASE_SECS:-5}
MISBEHAVIOR_RATE=${MISBEHAVIOR_RATE:-0.5}
OVERSIZED_BYTES=${OVERSIZED_BYTES:-}
TRICKLE_MS=${TRICKLE_MS:-}
PORT_BASE=${PORT_BASE:-18300}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

ORG_TOKEN=soak-org-token
SIM_SEED=1
SIM_TAGS=8
CALM_LATENCY_MS=20
CALM_JITTER_MS=30
# name:key:upstream_per_minute ("-": no quota)
CALLERS="billing:soak-billing-key:-,dashboard:soak-dashboard-key:120,alerting:soak-alerting-key:60,support:soak-support-key:30"

log() { printf '[soak %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 2; }

[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 86400)) || die "DURATION must be 1..86400 seconds"
[[ $WORKERS =~ ^[0-9]+$ ]] && ((WORKERS >= 1 && WORKERS <= 256)) || die "WORKERS must be 1..256"
[[ $CACHE_MAX_BYTES =~ ^[0-9]+$ ]] && ((CACHE_MAX_BYTES >= 1048576)) || die "CACHE_MAX_BYTES must be at least 1 MiB"
[[ $CACHE_TTL_SECS =~ ^[0-9]+$ ]] && ((CACHE_TTL_SECS >= 1)) || die "CACHE_TTL_SECS must be at least 1"
[[ $CACHE_SWR_SECS =~ ^[0-9]+$ ]] || die "CACHE_SWR_SECS must be whole seconds"
[[ $PORT_BASE =~ ^[0-9]+$ ]] && ((PORT_BASE >= 1024 && PORT_BASE <= 65000)) || die "PORT_BASE must be 1024..65000"
[[ -z $TRICKLE_MS || $TRICKLE_MS =~ ^[0-9]+$ ]] || die "TRICKLE_MS must be whole milliseconds"
[[ -z $OVERSIZED_BYTES || $OVERSIZED_BYTES =~ ^[0-9]+$ ]] || die "OVERSIZED_BYTES must be whole bytes"
for tool in cargo curl python3; do command -v "$tool" >/dev/null || die "$tool is missing"; done

# ---------------------------------------------------------------------------------------------
# processes and cleanup

# shellcheck source=lib/processes.sh
source "$ROOT/bench/lib/processes.sh"

FREE_PORTS=()
find_ports() { # N: the first N free ports from PORT_BASE (at most 200 tried)
    local p=$PORT_BASE
    while ((${#FREE_PORTS[@]} < $1)); do
        ((p < PORT_BASE + 200)) || die "no $1 free ports in $PORT_BASE..$((PORT_BASE + 199)) (set PORT_BASE)"
        port_free "$p" && FREE_PORTS+=("$p")
        p=$((p + 1))
    done
}

# ---------------------------------------------------------------------------------------------
# build and start

if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release --bins"
    cargo build --release --bins
fi
GATEWAY=$ROOT/target/release/usage-gateway
SIM=$ROOT/target/release/usage-sim
[[ -x $GATEWAY && -x $SIM ]] || die "release binaries missing (run without SKIP_BUILD=1)"
GIT_REV=$(git describe --always --dirty 2>/dev/null || echo unknown)
[[ $SKIP_BUILD == 1 ]] && GIT_REV="$GIT_REV (SKIP_BUILD=1: binaries may be older)"

WORK=$(mktemp -d /tmp/soak.XXXXXX)
find_ports 3
SIM_PORT=${FREE_PORTS[0]} GATEWAY_PORT=${FREE_PORTS[1]} ADMIN_PORT=${FREE_PORTS[2]}
log "ports: usage-sim $SIM_PORT, gateway $GATEWAY_PORT, admin $ADMIN_PORT; work dir $WORK"

start_bg "$WORK/sim.log" "$SIM" --listen "127.0.0.1:$SIM_PORT" --keys "$ORG_TOKEN" --seed "$SIM_SEED" \
    --tags "$SIM_TAGS" --rate-limit 600 --rate-window 60 --rate-scope org --live-clock \
    --latency-ms "$CALM_LATENCY_MS" --jitter-ms "$CALM_JITTER_MS"
SIM_PID=$LAST_PID
wait_http "http://127.0.0.1:$SIM_PORT/__sim/stats" "$SIM_PID" "$WORK/sim.log"

{
    cat <<EOF
# bench/soak.sh: gateway defaults except the lines marked
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
auth_failures_per_minute = 1000000   # soak: every caller (and the bad-key requests) share 127.0.0.1
shutdown_grace_secs = 5              # soak: a quick exit

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
format = "json"
level = "warn"                       # soak: no access line per request

[upstream]
base_url = "http://127.0.0.1:$SIM_PORT"
token = "$ORG_TOKEN"
rate_limit_per_minute = 600

[cache]
max_bytes = $CACHE_MAX_BYTES
ttl_secs = $CACHE_TTL_SECS                    # soak: live answers refresh several times a phase
stale_while_revalidate_secs = $CACHE_SWR_SECS   # soak: so a down phase reaches stale-if-error
stale_if_error_secs = 3600
closed_period_ttl_secs = 86400
EOF
    IFS=, read -ra specs <<<"$CALLERS"
    for spec in "${specs[@]}"; do
        IFS=: read -r name key quota <<<"$spec"
        printf '\n[[callers]]\nname = "%s"\nkey = "%s"\n' "$name" "$key"
        [[ $quota == - ]] || printf 'upstream_per_minute = %s\n' "$quota"
    done
} >"$WORK/gateway.toml"
"$GATEWAY" check --config "$WORK/gateway.toml" >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out" >&2; die "gateway configuration refused"; }

start_bg "$WORK/gateway.log" "$GATEWAY" --config "$WORK/gateway.toml"
GATEWAY_PID=$LAST_PID
wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$GATEWAY_PID" "$WORK/gateway.log"
wait_http "http://127.0.0.1:$GATEWAY_PORT/" "$GATEWAY_PID" "$WORK/gateway.log"
log "usage-sim pid $SIM_PID, usage-gateway pid $GATEWAY_PID"

# ---------------------------------------------------------------------------------------------
# run

COMMAND="bash bench/soak.sh"
for v in DURATION WORKERS RATE BAD_SHARE CACHE_MAX_BYTES CACHE_TTL_SECS CACHE_SWR_SECS MISBEHAVIOR_RATE OVERSIZED_BYTES TRICKLE_MS; do
    if printenv "$v" >/dev/null; then COMMAND="$v=${!v} $COMMAND"; fi
done
MACHINE="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -r)"
extra=()
[[ -n $TRICKLE_MS ]] && extra+=(--trickle-ms "$TRICKLE_MS")
[[ -n $OVERSIZED_BYTES ]] && extra+=(--oversized-bytes "$OVERSIZED_BYTES")

set +e
python3 "$ROOT/bench/soak.py" run --gateway-port "$GATEWAY_PORT" --admin-port "$ADMIN_PORT" \
    --sim-port "$SIM_PORT" --gateway-pid "$GATEWAY_PID" --gateway-log "$WORK/gateway.log" \
    --org-token "$ORG_TOKEN" --callers "$CALLERS" --duration "$DURATION" --workers "$WORKERS" \
    --rate "$RATE" --bad-share "$BAD_SHARE" --min-phase-secs "$MIN_PHASE_SECS" \
    --sample-secs "$SAMPLE_SECS" --max-bytes "$CACHE_MAX_BYTES" --max-concurrency 16 \
    --ttl "$CACHE_TTL_SECS" --swr "$CACHE_SWR_SECS" --closed-ttl 86400 --stale-if-error 3600 \
    --calm-latency-ms "$CALM_LATENCY_MS" --calm-jitter-ms "$CALM_JITTER_MS" \
    --misbehavior-rate "$MISBEHAVIOR_RATE" "${extra[@]}" \
    --sim-seed "$SIM_SEED" --sim-tags "$SIM_TAGS" \
    --command "$COMMAND" --git-rev "$GIT_REV" --machine "$MACHINE" >"$WORK/report.md"
RC=$?
set -e

kill -0 "$GATEWAY_PID" 2>/dev/null || { log "usage-gateway exited during the run:"; tail -20 "$WORK/gateway.log" >&2; RC=1; }
if [[ $RC == 2 || ! -s $WORK/report.md ]]; then
    log "the soak did not run to the end (exit $RC)"
    exit 2
fi
mkdir -p bench/results
SUFFIX=""
((DURATION < 600)) && SUFFIX="-quick"
OUT=bench/results/soak-$(date -u +%Y-%m-%d)$SUFFIX.md
cp "$WORK/report.md" "$OUT"
cat "$WORK/report.md"
log "report written to $OUT"
if [[ $RC != 0 ]]; then
    log "a target was missed (exit $RC); the gateway's last log lines:"
    tail -5 "$WORK/gateway.log" >&2
fi
exit "$RC"
