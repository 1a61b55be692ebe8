# Process handling shared by the benchmark scripts (sourced, not run). The sourcing script
# defines `log` and `die`, sets WORK to its temporary directory, and may set KEEP_WORK=1.
# Every process started with start_bg is stopped on exit (also on Ctrl-C): TERM, up to 10 s,
# then KILL; WORK is removed.

PIDS=()
WORK=""
KEEP_WORK=${KEEP_WORK:-0}
LAST_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_WORK == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() { # LOG CMD...: starts CMD in the background, remembers its pid in LAST_PID
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

stop_pid() { # PID: TERM, wait up to 10 s, KILL; forget it
    local pid=$1 keep=() p
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

wait_http() { # URL PID LOG: waits up to 20 s for an HTTP answer from URL while PID lives
    local url=$1 pid=$2 logfile=$3
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$logfile" >&2; die "process $pid exited before answering $url"; }
        if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    tail -20 "$logfile" >&2
    die "nothing answers $url after 20 s"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
