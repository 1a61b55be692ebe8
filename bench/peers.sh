#!/usr/bin/env bash
# Peers benchmark (issue 5): usage-gateway against NGINX proxy_cache (4 variants), Varnish and
# NGINX serving static files (the limit), side by side on this machine, in one run.
#
# Loopback (127.0.0.1) only; every load bounded in count and time; every process this script
# starts is stopped on exit (trap), and its temporary directory removed.
#
#   bench/peers.sh                 full run: 5 interleaved rounds, 10 s per wrk run, 10,000 entries
#   QUICK=1 bench/peers.sh         development: 1 round, 2 s per wrk run, 1,000 memory entries
#   SCENARIOS=gzip bench/peers.sh  compressed hits only (callers send Accept-Encoding: gzip)
#
# Environment (defaults in brackets; QUICK=1 changes the ones marked *):
#   ROUNDS [5*]  DURATION [10s*]  MEMORY_ENTRIES [10000*]  MISS_REQUESTS [2000*]
#   STAMPEDE_N [500]  STAMPEDE_LATENCY_MS [500]  SMALL_LIMIT [10]  LARGE_LIMIT [1000]
#   SCENARIOS ["shipped hits stampede miss memory gzip"]   CONTENDERS [all; space-separated names]
#   SHIPPED_CONTENDERS ["usage-gateway-shipped usage-gateway-shipped-noaccess nginx-w1-sendfile-on
#     nginx-auto-sendfile-on nginx-auto-log varnish"]: the "shipped" scenario (issue 14): the gateway
#     with its default configuration (access log on, default threads), with `[log] access = false`,
#     NGINX without and with its default (combined) access log, and Varnish
#   GZIP_CONTENDERS ["usage-gateway nginx-gzip varnish-gzip"]  GZIP_LARGE_LIMIT [280]
#   MEMORY_CONTENDERS ["usage-gateway nginx-w1-sendfile-on varnish"]  FILL_PARALLEL [4]
#   PORT_BASE [18100]  SKIP_INSTALL [0]  SKIP_BUILD [0]
#   UPDATE_README [1 for a full run, 0 with QUICK=1]: refresh the results block of bench/README.md
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=$ROOT/bench/peers
PY=(python3 "$PEERS/peers.py")
export PATH="$PATH:/usr/sbin:/sbin"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-2s} MEMORY_ENTRIES=${MEMORY_ENTRIES:-1000}
    MISS_REQUESTS=${MISS_REQUESTS:-500} UPDATE_README=${UPDATE_README:-0}
fi
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
MEMORY_ENTRIES=${MEMORY_ENTRIES:-10000}
MISS_REQUESTS=${MISS_REQUESTS:-2000}
STAMPEDE_N=${STAMPEDE_N:-500}
STAMPEDE_LATENCY_MS=${STAMPEDE_LATENCY_MS:-500}
SMALL_LIMIT=${SMALL_LIMIT:-10}
LARGE_LIMIT=${LARGE_LIMIT:-1000}
SCENARIOS=${SCENARIOS:-shipped hits stampede miss memory gzip}
ALL_CONTENDERS="usage-gateway nginx-w1-sendfile-on nginx-w1-sendfile-off nginx-auto-sendfile-on nginx-auto-sendfile-off varnish nginx-static"
CONTENDERS=${CONTENDERS:-$ALL_CONTENDERS}
SHIPPED_CONTENDERS=${SHIPPED_CONTENDERS:-usage-gateway-shipped usage-gateway-shipped-noaccess nginx-w1-sendfile-on nginx-auto-sendfile-on nginx-auto-log varnish}
# The gzip scenario's own contenders: each stores (or serves) gzip for callers that accept it.
# nginx-gzip: one worker, proxy_cache as nginx-w1-sendfile-on, with `gzip on` in front of it
# (it compresses every answer as it sends it, at NGINX's default level 1); varnish-gzip:
# `beresp.do_gzip` (stored gzipped once, at Varnish's default level 6).
GZIP_ONLY_CONTENDERS="nginx-gzip varnish-gzip"
GZIP_CONTENDERS=${GZIP_CONTENDERS:-usage-gateway $GZIP_ONLY_CONTENDERS}
GZIP_LARGE_LIMIT=${GZIP_LARGE_LIMIT:-280}  # about 76 KB
# every contender name, for port numbers
PORT_NAMES="$ALL_CONTENDERS usage-gateway-shipped usage-gateway-shipped-noaccess nginx-auto-log $GZIP_ONLY_CONTENDERS"
MEMORY_CONTENDERS=${MEMORY_CONTENDERS:-usage-gateway nginx-w1-sendfile-on varnish}
FILL_PARALLEL=${FILL_PARALLEL:-4}
PORT_BASE=${PORT_BASE:-18100}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
UPDATE_README=${UPDATE_README:-1}

ORG_TOKEN=bench-org-token
CALLER_KEY=bench-caller-key
AUTH="Bearer $CALLER_KEY"
DUR_S=${DURATION%s}
[[ $DUR_S =~ ^[0-9]+$ ]] || { echo "DURATION must be whole seconds like 10s" >&2; exit 2; }
((ROUNDS >= 1 && ROUNDS <= 50)) || { echo "ROUNDS must be 1..50" >&2; exit 2; }
((MISS_REQUESTS * ROUNDS <= 100000)) || { echo "MISS_REQUESTS x ROUNDS must stay within the data set (100000)" >&2; exit 2; }

log() { printf '[peers %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# processes and cleanup

# shellcheck source=lib/processes.sh
source "$ROOT/bench/lib/processes.sh"

wait_port() { # PORT PID LOG: waits up to 20 s for an HTTP answer on the port
    wait_http "http://127.0.0.1:$1/" "$2" "$3"
}

rss_kb() { # PID: VmRSS of the process and its direct children, in kB
    local pid=$1 total=0 p v
    for p in "$pid" $(ps -o pid= --ppid "$pid" 2>/dev/null); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------------------------------------
# install and build

if [[ $SKIP_INSTALL != 1 ]]; then
    need=()
    command -v nginx >/dev/null || need+=(nginx)
    command -v varnishd >/dev/null || need+=(varnish)
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
fi
for tool in nginx varnishd wrk curl python3; do command -v "$tool" >/dev/null || die "$tool is missing"; done
if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release --bins"
    cargo build --release --bins
fi
GIT_REV=$(git describe --always --dirty 2>/dev/null || echo unknown)
[[ $SKIP_BUILD == 1 ]] && GIT_REV="$GIT_REV (SKIP_BUILD=1: binary may be older)"
# Where cargo put them (CARGO_TARGET_DIR when set, as in worktrees sharing a build directory).
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GATEWAY=$TARGET_DIR/release/usage-gateway
SIM=$TARGET_DIR/release/usage-sim
[[ -x $GATEWAY && -x $SIM ]] || die "release binaries missing"

WORK=$(mktemp -d /tmp/peers.XXXXXX)
chmod 755 "$WORK"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
log "work dir $WORK"

# ---------------------------------------------------------------------------------------------
# origins

SIM_PORT=$PORT_BASE
SLOW_SIM_PORT=$((PORT_BASE + 1))
port_of() { # SET NAME -> port (set: hits=10, stampede=30, memory=50, shipped=70, gzip=90 above PORT_BASE)
    local base=$((PORT_BASE + $1)) i=0 n
    for n in $PORT_NAMES; do
        [[ $n == "$2" ]] && { echo $((base + i)); return; }
        i=$((i + 1))
    done
    die "unknown contender $2"
}
for p in $SIM_PORT $SLOW_SIM_PORT; do port_free "$p" || die "port $p is taken (set PORT_BASE)"; done

start_bg "$WORK/sim.log" "$SIM" --listen "127.0.0.1:$SIM_PORT" --keys "$ORG_TOKEN" --rate-scope off
SIM_PID=$LAST_PID
wait_port "$SIM_PORT" "$SIM_PID" "$WORK/sim.log"
start_bg "$WORK/sim-slow.log" "$SIM" --listen "127.0.0.1:$SLOW_SIM_PORT" --keys "$ORG_TOKEN" \
    --rate-scope off --latency-ms "$STAMPEDE_LATENCY_MS"
SLOW_SIM_PID=$LAST_PID
wait_port "$SLOW_SIM_PORT" "$SLOW_SIM_PID" "$WORK/sim-slow.log"

sim_reset() { curl -sf -o /dev/null -X POST "http://127.0.0.1:$1/__sim/reset"; }
sim_calls() { curl -sf "http://127.0.0.1:$1/__sim/stats" | "${PY[@]}" get requests_total; }

# the two answers, straight from the origin: the reference bytes
mkdir -p "$WORK/ref"
for l in "$SMALL_LIMIT" "$LARGE_LIMIT" "$GZIP_LARGE_LIMIT"; do
    curl -sf -H "Authorization: $ORG_TOKEN" "http://127.0.0.1:$SIM_PORT/usage?limit=$l" -o "$WORK/ref/$l.json" ||
        die "origin did not answer /usage?limit=$l"
done
describe() { # FILE -> "N B, R records"
    python3 -c 'import json,sys; b=open(sys.argv[1],"rb").read(); n=len(json.loads(b)["usage"]); print(f"{len(b):,} B, {n} records")' "$1"
}
SMALL_DESC="limit=$SMALL_LIMIT: $(describe "$WORK/ref/$SMALL_LIMIT.json")"
LARGE_DESC="limit=$LARGE_LIMIT: $(describe "$WORK/ref/$LARGE_LIMIT.json")"
GZIP_LARGE_DESC="limit=$GZIP_LARGE_LIMIT: $(describe "$WORK/ref/$GZIP_LARGE_LIMIT.json")"
log "small answer $SMALL_DESC; large answer $LARGE_DESC"

# ---------------------------------------------------------------------------------------------
# contenders

render() { # TEMPLATE OUT KEY=VALUE...
    local tmpl=$1 out=$2 args=() kv
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tmpl" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then die "unfilled placeholder in $out"; fi
}
USER_LINE="# (not root: nginx keeps the current user)"
[[ $(id -u) == 0 ]] && USER_LINE="user root root;  # workers must reach the temporary cache directory"

declare -A CPID CPORT
start_contender() { # SET(hits|stampede|memory|shipped|gzip) NAME ORIGIN_PORT
    local set=$1 name=$2 origin=$3 port dir
    port=$(port_of "$( case $set in hits) echo 10 ;; stampede) echo 30 ;; memory) echo 50 ;; shipped) echo 70 ;; gzip) echo 90 ;; esac)" "$name")
    port_free "$port" || die "port $port is taken (set PORT_BASE)"
    dir=$WORK/$set/$name
    mkdir -p "$dir"
    local big=0
    [[ $set == memory ]] && big=1
    case $name in
    usage-gateway)
        render "$PEERS/gateway.toml.in" "$dir/gateway.toml" PORT="$port" ORIGIN_PORT="$origin" \
            ORG_TOKEN="$ORG_TOKEN" CALLER_KEY="$CALLER_KEY" \
            MAX_BYTES="$( ((big)) && echo 8589934592 || echo 268435456)"
        start_bg "$dir/log" env RUST_LOG=warn "$GATEWAY" --config "$dir/gateway.toml"
        ;;
    usage-gateway-shipped | usage-gateway-shipped-noaccess)
        # The defaults: no worker_threads (one per core), [log] level info with the access log
        # on, JSON lines to stdout (here a file, as under a service manager's log pipe).
        render "$PEERS/gateway-shipped.toml.in" "$dir/gateway.toml" PORT="$port" ORIGIN_PORT="$origin" \
            ORG_TOKEN="$ORG_TOKEN" CALLER_KEY="$CALLER_KEY" \
            ACCESS="$([[ $name == *-noaccess ]] && echo false || echo true)"
        start_bg "$dir/log" env -u RUST_LOG "$GATEWAY" --config "$dir/gateway.toml"
        ;;
    nginx-static)
        mkdir -p "$dir/static"
        cp "$WORK/ref/$SMALL_LIMIT.json" "$WORK/ref/$LARGE_LIMIT.json" "$dir/static/"
        render "$PEERS/nginx-static.conf.in" "$dir/nginx.conf" PORT="$port" DIR="$dir" \
            WORKERS=1 CALLER_KEY="$CALLER_KEY" SMALL_LIMIT="$SMALL_LIMIT" LARGE_LIMIT="$LARGE_LIMIT" \
            USER_LINE="$USER_LINE"
        start_bg "$dir/log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
        ;;
    nginx-*)
        local workers=1 sendfile=on access_log=off gzip=""
        [[ $name == nginx-auto-* ]] && workers=auto
        [[ $name == *-sendfile-off ]] && sendfile=off
        # NGINX's default access log: the combined format, unbuffered, to a file.
        [[ $name == *-log ]] && access_log="$dir/access.log combined"
        [[ $name == nginx-gzip ]] && gzip="            gzip on; gzip_types application/json; gzip_vary on;"
        render "$PEERS/nginx-cache.conf.in" "$dir/nginx.conf" PORT="$port" DIR="$dir" \
            WORKERS="$workers" SENDFILE="$sendfile" ORIGIN_PORT="$origin" ORG_TOKEN="$ORG_TOKEN" \
            ACCESS_LOG="$access_log" GZIP="$gzip" \
            CALLER_KEY="$CALLER_KEY" USER_LINE="$USER_LINE" \
            KEYS_ZONE="$( ((big)) && echo 64m || echo 16m)" MAX_SIZE="$( ((big)) && echo 8g || echo 1g)"
        start_bg "$dir/log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
        ;;
    varnish | varnish-gzip)
        local do_gzip=""
        [[ $name == varnish-gzip ]] && do_gzip="    set beresp.do_gzip = true;"
        render "$PEERS/varnish.vcl.in" "$dir/default.vcl" ORIGIN_PORT="$origin" ORG_TOKEN="$ORG_TOKEN" \
            CALLER_KEY="$CALLER_KEY" DO_GZIP="$do_gzip"
        start_bg "$dir/log" varnishd -F -j none -a "127.0.0.1:$port" -T "127.0.0.1:$((port + 1000))" \
            -f "$dir/default.vcl" -s "malloc,$( ((big)) && echo 8G || echo 256m)" -n "$dir/work"
        ;;
    *) die "unknown contender $name" ;;
    esac
    CPID[$set/$name]=$LAST_PID
    CPORT[$set/$name]=$port
    wait_port "$port" "$LAST_PID" "$dir/log"
}
stop_contender() { stop_pid "${CPID[$1/$2]}"; }

is_hit() { # NAME URL [HEADER]: the contender says it served this from its cache
    local headers
    headers=$(curl -s -D - -o /dev/null -H "Authorization: $AUTH" ${3:+-H "$3"} "$2")
    case $1 in
    usage-gateway*) grep -qi '^cache-status:.*; hit' <<<"$headers" ;;
    nginx-static) return 0 ;;
    nginx-*) grep -qi '^x-cache-status: HIT' <<<"$headers" ;;
    varnish*) grep -qiE '^x-varnish: [0-9]+ [0-9]+' <<<"$headers" ;;
    esac
}

check_contender() { # SET NAME LIMIT...: identical bodies, and a 401 without the caller key
    local set=$1 name=$2 port=${CPORT[$1/$2]} l code
    shift 2
    for l in "$@"; do
        code=$(curl -s -o "$WORK/check.body" -w '%{http_code}' -H "Authorization: $AUTH" \
            "http://127.0.0.1:$port/usage?limit=$l")
        [[ $code == 200 ]] || die "$set/$name answered $code for /usage?limit=$l"
        cmp -s "$WORK/check.body" "$WORK/ref/$l.json" ||
            die "$set/$name: body for /usage?limit=$l differs from the origin's ($(wc -c <"$WORK/check.body") vs $(wc -c <"$WORK/ref/$l.json") bytes)"
    done
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/usage?limit=$1")
    [[ $code == 401 ]] || die "$set/$name answered $code without a caller key (want 401)"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer wrong-key" "http://127.0.0.1:$port/usage?limit=$1")
    [[ $code == 401 ]] || die "$set/$name answered $code with a wrong caller key (want 401)"
}

emit() { cat >>"$RESULTS"; }

# ---------------------------------------------------------------------------------------------
# scenario 1 and 2: hot hits

run_hits() { # [SET CELLS CONTENDERS]: defaults hits, the four cells, $CONTENDERS
    local set=${1:-hits} cells=${2:-small-c32 small-c128 large-c32 large-c128} contenders=${3:-$CONTENDERS} c
    for c in $contenders; do
        start_contender "$set" "$c" "$SIM_PORT"
        check_contender "$set" "$c" "$SMALL_LIMIT" "$LARGE_LIMIT"
    done
    log "$set: all contenders serve the origin's bytes; $ROUNDS round(s) x $(wc -w <<<"$cells") cells x $DURATION"
    local round cell body conns limit url port warm
    for round in $(seq 1 "$ROUNDS"); do
        for cell in $cells; do
            body=${cell%-*}
            conns=${cell#*-c}
            limit=$SMALL_LIMIT
            [[ $body == large ]] && limit=$LARGE_LIMIT
            for c in $contenders; do
                port=${CPORT[$set/$c]}
                url="http://127.0.0.1:$port/usage?limit=$limit"
                # warm: fill (or refresh an expired entry), then make sure it is a hit
                warm=false
                for _ in 1 2 3 4 5; do
                    curl -s -o /dev/null -H "Authorization: $AUTH" "$url"
                    sleep 0.05
                    if is_hit "$c" "$url"; then warm=true; break; fi
                done
                [[ $warm == true ]] || log "WARNING: $c does not report a cache hit for $url after warming"
                timeout $((DUR_S + 30)) wrk -t1 -c"$conns" -d"$DURATION" --latency \
                    -H "Authorization: $AUTH" "$url" >"$WORK/wrk.out" 2>&1 ||
                    { cat "$WORK/wrk.out" >&2; die "wrk failed against $c"; }
                "${PY[@]}" wrk --extra "{\"scenario\":\"$set\",\"cell\":\"$cell\",\"contender\":\"$c\",\"round\":$round,\"warm_hit\":$warm}" \
                    <"$WORK/wrk.out" | tee -a "$RESULTS" | "${PY[@]}" get rps |
                    xargs printf "[peers] round %s %-11s %-26s %10.0f req/s\n" "$round" "$cell" "$c" >&2
            done
        done
    done
    for c in $contenders; do stop_contender "$set" "$c"; done
}

# ---------------------------------------------------------------------------------------------
# scenario 3: stampede on a cold key, slow origin

run_stampede() {
    local c names=() i round limit port auth rec calls
    for c in $CONTENDERS; do [[ $c == nginx-static ]] || names+=("$c"); done
    for c in "${names[@]}"; do
        start_contender stampede "$c" "$SLOW_SIM_PORT"
        check_contender stampede "$c" "$SMALL_LIMIT"
    done
    log "stampede: $STAMPEDE_N simultaneous requests, origin latency $STAMPEDE_LATENCY_MS ms, $ROUNDS round(s)"
    for round in $(seq 1 "$ROUNDS"); do
        i=0
        for c in direct "${names[@]}"; do
            i=$((i + 1))
            limit=$((100 + round * 20 + i)) # a key no contender has seen
            if [[ $c == direct ]]; then # calibration: no cache, every request an origin call
                port=$SLOW_SIM_PORT auth=$ORG_TOKEN
            else
                port=${CPORT[stampede/$c]} auth=$AUTH
            fi
            sim_reset "$SLOW_SIM_PORT"
            rec=$("${PY[@]}" stampede --port "$port" --path "/usage?limit=$limit" --auth "$auth" \
                -n "$STAMPEDE_N" --timeout 30 \
                --extra "{\"scenario\":\"stampede\",\"contender\":\"$c\",\"round\":$round,\"limit\":$limit}")
            sleep 0.5 # let any straggling upstream call land in the count
            calls=$(sim_calls "$SLOW_SIM_PORT")
            rec=$("${PY[@]}" set "upstream_calls=$calls" <<<"$rec")
            emit <<<"$rec"
            printf '[peers] round %s stampede %-26s calls=%s slowest=%s ms statuses=%s\n' "$round" "$c" "$calls" \
                "$("${PY[@]}" get max_ms <<<"$rec")" "$("${PY[@]}" get statuses <<<"$rec")" >&2
        done
    done
    for c in "${names[@]}"; do stop_contender stampede "$c"; done
}

# ---------------------------------------------------------------------------------------------
# scenario 4: miss path, every request a new key, zero-latency origin

run_miss() {
    local c names=(direct) round port auth start
    for c in $CONTENDERS; do [[ $c == nginx-static ]] || names+=("$c"); done
    for c in "${names[@]:1}"; do
        start_contender hits "$c" "$SIM_PORT"
        check_contender hits "$c" "$SMALL_LIMIT"
    done
    log "miss path: $MISS_REQUESTS sequential new keys per contender, $ROUNDS round(s)"
    for round in $(seq 1 "$ROUNDS"); do
        start=$(((round - 1) * MISS_REQUESTS + 1))
        for c in "${names[@]}"; do
            if [[ $c == direct ]]; then
                port=$SIM_PORT auth=$ORG_TOKEN
            else
                port=${CPORT[hits/$c]} auth=$AUTH
            fi
            "${PY[@]}" seq --port "$port" --auth "$auth" --path-fmt "/usage?limit=$SMALL_LIMIT&offset={i}" \
                --warm-path "/usage?limit=$SMALL_LIMIT" --start "$start" --count "$MISS_REQUESTS" --max-secs 120 \
                --extra "{\"scenario\":\"miss\",\"contender\":\"$c\",\"round\":$round}" |
                tee -a "$RESULTS" | "${PY[@]}" get p50 |
                xargs printf "[peers] round %s miss %-26s p50 %.3f ms\n" "$round" "$c" >&2
        done
    done
    for c in "${names[@]:1}"; do stop_contender hits "$c"; done
}

# ---------------------------------------------------------------------------------------------
# scenario 5: memory after caching MEMORY_ENTRIES large answers

run_memory() {
    local c pid port before after fill reread calls disk note rec
    for c in $MEMORY_CONTENDERS; do
        [[ " $CONTENDERS " == *" $c "* ]] || continue
        start_contender memory "$c" "$SIM_PORT"
        pid=${CPID[memory/$c]}
        port=${CPORT[memory/$c]}
        sleep 1
        before=$(rss_kb "$pid")
        log "memory: filling $c with $MEMORY_ENTRIES large answers ($FILL_PARALLEL in parallel)"
        fill=$("${PY[@]}" fill --port "$port" --auth "$AUTH" --path-fmt "/usage?limit=$LARGE_LIMIT&offset={i}" \
            --count "$MEMORY_ENTRIES" --parallel "$FILL_PARALLEL" --max-secs 1200 \
            --extra "{\"scenario\":\"memory\",\"contender\":\"$c\"}")
        sleep 2
        after=$(rss_kb "$pid")
        # are they all still held? re-read the 200 oldest keys and count upstream calls
        sim_reset "$SIM_PORT"
        reread=$((MEMORY_ENTRIES < 200 ? MEMORY_ENTRIES : 200))
        "${PY[@]}" fill --port "$port" --auth "$AUTH" --path-fmt "/usage?limit=$LARGE_LIMIT&offset={i}" \
            --count "$reread" --parallel 2 --max-secs 120 >/dev/null
        calls=$(sim_calls "$SIM_PORT")
        disk=null note=""
        case $c in
        usage-gateway) note="RSS of the one process" ;;
        varnish) note="manager + cache child RSS; malloc storage" ;;
        nginx-*)
            disk=$(du -sb "$WORK/memory/$c/cache" | cut -f1)
            note="master + worker RSS; NGINX keeps its cache in files (page cache, not RSS): not comparable"
            ;;
        esac
        rec=$("${PY[@]}" set "rss_before_kb=$before" "rss_after_kb=$after" "disk_bytes=$disk" \
            "reread_count=$reread" "reread_upstream_calls=$calls" "note=$note" <<<"$fill")
        emit <<<"$rec"
        log "memory: $c RSS ${before} kB -> ${after} kB; $(echo "$fill" | "${PY[@]}" get payload_bytes) payload bytes; re-read of $reread made $calls upstream calls"
        stop_contender memory "$c"
    done
}

# ---------------------------------------------------------------------------------------------
# scenario 6: hot hits for callers that accept gzip (Python requests, httpx, Node's fetch, .NET)

GZIP_HEADER="Accept-Encoding: gzip"

run_gzip() {
    local c round cell body conns limit url port warm sizes
    for c in $GZIP_CONTENDERS; do
        start_contender gzip "$c" "$SIM_PORT"
        check_contender gzip "$c" "$SMALL_LIMIT" "$GZIP_LARGE_LIMIT"
    done
    log "gzip: callers send '$GZIP_HEADER'; $ROUNDS round(s) x 2 cells x $DURATION"
    for round in $(seq 1 "$ROUNDS"); do
        for cell in small-c32 large-c32; do
            body=${cell%-*}
            conns=${cell#*-c}
            limit=$SMALL_LIMIT
            [[ $body == large ]] && limit=$GZIP_LARGE_LIMIT
            for c in $GZIP_CONTENDERS; do
                port=${CPORT[gzip/$c]}
                url="http://127.0.0.1:$port/usage?limit=$limit"
                # warm as a gzip caller (the fill is one), then make sure it is a hit
                warm=false
                for _ in 1 2 3 4 5; do
                    curl -s -o /dev/null -H "Authorization: $AUTH" -H "$GZIP_HEADER" "$url"
                    sleep 0.05
                    if is_hit "$c" "$url" "$GZIP_HEADER"; then warm=true; break; fi
                done
                [[ $warm == true ]] || log "WARNING: $c does not report a cache hit for $url after warming"
                # one answer's bytes on the wire (head and body), and the body decodes to the origin's
                sizes=$(curl -s -D "$WORK/gzip.head" -o "$WORK/gzip.body" -w '%{size_header} %{size_download}' \
                    -H "Authorization: $AUTH" -H "$GZIP_HEADER" "$url")
                grep -qi '^content-encoding: *gzip' "$WORK/gzip.head" || die "$c answered $url without gzip"
                gzip -dc <"$WORK/gzip.body" | cmp -s - "$WORK/ref/$limit.json" ||
                    die "$c: gzip body for $url does not decode to the origin's bytes"
                timeout $((DUR_S + 30)) wrk -t1 -c"$conns" -d"$DURATION" --latency \
                    -H "Authorization: $AUTH" -H "$GZIP_HEADER" "$url" >"$WORK/wrk.out" 2>&1 ||
                    { cat "$WORK/wrk.out" >&2; die "wrk failed against $c"; }
                "${PY[@]}" wrk --extra "{\"scenario\":\"gzip\",\"cell\":\"$cell\",\"contender\":\"$c\",\"round\":$round,\"warm_hit\":$warm,\"head_bytes\":${sizes% *},\"body_bytes\":${sizes#* }}" \
                    <"$WORK/wrk.out" | tee -a "$RESULTS" | "${PY[@]}" get rps |
                    xargs printf "[peers] round %s gzip %-11s %-26s %10.0f req/s, $((${sizes% *} + ${sizes#* })) B/answer\n" "$round" "$cell" "$c" >&2
            done
        done
    done
    for c in $GZIP_CONTENDERS; do stop_contender gzip "$c"; done
}

# ---------------------------------------------------------------------------------------------

T0=$(date +%s)
for s in $SCENARIOS; do
    case $s in
    shipped) run_hits shipped "small-c32 large-c32" "$SHIPPED_CONTENDERS" ;;
    hits) run_hits ;;
    stampede) run_stampede ;;
    miss) run_miss ;;
    memory) run_memory ;;
    gzip) run_gzip ;;
    *) die "unknown scenario $s" ;;
    esac
done
ELAPSED=$(($(date +%s) - T0))

# ---------------------------------------------------------------------------------------------
# report

COMMAND="bench/peers.sh"
for v in QUICK ROUNDS DURATION MEMORY_ENTRIES MISS_REQUESTS SCENARIOS CONTENDERS GZIP_CONTENDERS GZIP_LARGE_LIMIT; do
    if [[ -n ${!v+x} && $(env | grep -c "^$v=") -gt 0 ]]; then COMMAND="$v=\"${!v}\" $COMMAND"; fi
done
cat >"$WORK/meta.json" <<EOF
{"small_desc": "$SMALL_DESC", "large_desc": "$LARGE_DESC", "gzip_large_desc": "$GZIP_LARGE_DESC", "stampede_n": $STAMPEDE_N,
 "stampede_latency_ms": $STAMPEDE_LATENCY_MS, "miss_requests": $MISS_REQUESTS,
 "memory_entries": $MEMORY_ENTRIES}
EOF
mkdir -p bench/results
DATE=$(date -u +%Y-%m-%d)
SUFFIX=""
[[ $QUICK == 1 ]] && SUFFIX="-quick"
OUT=bench/results/peers-$DATE$SUFFIX.md
{
    echo "### Peers run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- command: \`$COMMAND\` (${ELAPSED}s of measuring)"
    echo "- rounds: $ROUNDS interleaved; wrk runs of $DURATION; figures are medians with (min–max) over rounds"
    echo "- usage-gateway: \`$GIT_REV\`, $("$GATEWAY" --version 2>/dev/null || echo usage-gateway)"
    echo "- $(nginx -v 2>&1); $(varnishd -V 2>&1 | head -1); $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
    echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -r); load generator on the same cores"
    echo "- answers: small $SMALL_DESC; large $LARGE_DESC; large for gzip $GZIP_LARGE_DESC"
    echo
    "${PY[@]}" report --results "$RESULTS" --meta "$WORK/meta.json"
} >"$WORK/report.md"
cp "$WORK/report.md" "$OUT"
cp "$RESULTS" "bench/results/peers-$DATE$SUFFIX.jsonl"
cat "$WORK/report.md"
log "report written to $OUT (raw figures: bench/results/peers-$DATE$SUFFIX.jsonl)"
if [[ $UPDATE_README == 1 ]]; then
    "${PY[@]}" readme --readme bench/README.md --block "$WORK/report.md"
    log "bench/README.md results block updated"
fi
