#!/usr/bin/env python3
"""Load driver and report for the soak test (bench/soak.sh): Python 3 standard library only.

    soak.py tags --seed 1 --tags 8
        prints the simulator's tag ids (its data is a pure function of the seed; usage-sim/src/data.rs)
    soak.py run --gateway-port P --admin-port A --sim-port S --gateway-pid PID ...
        drives the gateway for --duration seconds while switching the simulator's faults, samples
        the gateway's RSS and open descriptors, prints the Markdown report on stdout and exits 1
        if a target is missed (2 on a setup problem)

Everything talks to 127.0.0.1 only. Every loop is bounded in count and in time.
"""

import argparse
import collections
import http.client
import json
import os
import random
import re
import sys
import threading
import time

# ------------------------------------------------------------------------------------------------
# the simulator's deterministic tag ids (port of rnd in usage-sim/src/random.rs and tag_uuid in usage-sim/src/data.rs)

M64 = (1 << 64) - 1


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def fnv1a64(label, ints):
    h = 0xCBF29CE484222325
    for b in label.encode() + b"".join(i.to_bytes(8, "little") for i in ints):
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def rnd(seed, label, ints):
    return splitmix64(seed ^ fnv1a64(label, ints))


def tag_uuid(seed, t):
    b = bytearray(rnd(seed, "tagid", [t, 0]).to_bytes(8, "big") + rnd(seed, "tagid", [t, 1]).to_bytes(8, "big"))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# ------------------------------------------------------------------------------------------------
# small HTTP helpers (one short-lived connection each; control traffic only)


def http_call(port, method, path, body=None, headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def sim_stats(port):
    status, body = http_call(port, "GET", "/__sim/stats")
    if status != 200:
        raise RuntimeError(f"/__sim/stats answered {status}")
    return json.loads(body)


def set_faults(port, update):
    status, body = http_call(port, "POST", "/__sim/faults", body=update)
    return status, body.decode(errors="replace")


METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(admin_port):
    """The gateway's /metrics as {(name, frozenset(labels)): value}; {} if it does not answer."""
    try:
        status, body = http_call(admin_port, "GET", "/metrics", timeout=5)
    except OSError:
        return {}
    if status != 200:
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_RE.match(line)
        if not m:
            continue
        labels = frozenset(LABEL_RE.findall(m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            pass
    return out


def metric_sum(metrics, name, **want):
    total = 0.0
    for (n, labels), v in metrics.items():
        if n != name:
            continue
        d = dict(labels)
        if all(d.get(k) == val for k, val in want.items()):
            total += v
    return total


def metric_by(metrics, name, label):
    out = collections.Counter()
    for (n, labels), v in metrics.items():
        if n == name:
            out[dict(labels).get(label, "")] += v
    return out


# ------------------------------------------------------------------------------------------------
# the question space: bounded, each question (one cache key) written in several spellings

SIM_POOL = [f"{i:09d}" for i in range(1, 41)]
MONTHS = ["2024-01", "2024-02", "2024-03"]
COUNTRIES = ["dk", "de", "se", "gb", "nl", "us", "fr", "es"]
# Upper bound on one record's JSON (the longest network name is well under it) and on the
# envelope; with the gateway's per-entry overhead (key bytes + 256) this bounds each entry.
RECORD_BYTES_BOUND = 320
ENVELOPE_BYTES_BOUND = 512
ENTRY_OVERHEAD_BOUND = 256 + 512


class Question:
    __slots__ = ("qid", "kind", "spellings", "records_bound", "live")

    def __init__(self, qid, kind, spellings, records_bound, live):
        self.qid, self.kind, self.spellings = qid, kind, spellings
        self.records_bound, self.live = records_bound, live

    def bytes_bound(self):
        return self.records_bound * RECORD_BYTES_BOUND + ENVELOPE_BYTES_BOUND + ENTRY_OVERHEAD_BOUND


def build_questions(tag_ids):
    qs = []

    def add(kind, spellings, records, live):
        qs.append(Question(len(qs), kind, spellings, records, live))

    # one SIM's month (a closed period: kept a day), limit 100
    for sim in SIM_POOL:
        for month in MONTHS:
            add("sim-month", [
                f"/usage/{sim}?filter=time:{month}&limit=100",
                f"/usage/{sim}?filter[]=TIME:{month}&limit=100",
                f"/usage/{sim}?limit=100&filter%5B%5D=time:{month}",
                f"/usage/{sim}?filter[0]=%20time%20:{month}&limit=0100",
            ], 100, False)
    # one SIM's latest records (live: 60 s)
    for sim in SIM_POOL:
        add("sim-recent", [
            f"/usage/{sim}?limit=10",
            f"/usage/{sim}?limit=010",
            f"/usage/{sim}?offset=0&limit=10",
        ], 10, True)
    # several SIMs at once, the sim_id list in different orders (live)
    for g in range(30):
        r = random.Random(1000 + g)
        group = sorted(r.sample(SIM_POOL, 2 + g % 2))
        rev = list(reversed(group))
        shuffled = group[:]
        r.shuffle(shuffled)
        add("sim-list", [
            "/usage?" + "&".join(f"filter[]=sim_id:{s}" for s in group) + "&limit=50",
            "/usage?limit=50&" + "&".join(f"filter[]=sim_id:{s}" for s in rev),
            "/usage?" + "&".join(f"filter%5B{i}%5D=SIM_ID:{s}" for i, s in enumerate(shuffled)) + "&limit=50",
            "/usage?" + "&".join(f"filter[]=sim_id:{s}" for s in rev + [group[0]]) + "&limit=50",
        ], 50, True)
    # a country's month (closed)
    for cc in COUNTRIES:
        for month in MONTHS:
            add("country-month", [
                f"/usage?filter[]=country_code:{cc}&filter[]=time:{month}&limit=100",
                f"/usage?filter[]=time:{month}&filter[]=country_code:{cc.upper()}&limit=100",
                f"/usage?filter%5B%5D=Country_Code:{cc}&filter%5B%5D=TIME:{month}&limit=100",
            ], 100, False)
    # time ranges: one day each in March, and the whole year (closed)
    for day in range(1, 16):
        add("day", [
            f"/usage?filter=time:2024-03-{day:02d}&limit=200",
            f"/usage?limit=200&filter[]=time:2024-03-{day:02d}",
        ], 200, False)
    add("year", ["/usage?filter=time:2024&limit=20", "/usage?filter[]=TIME:2024&limit=020"], 20, False)
    # recent pages of everything (live)
    for page in range(10):
        off = page * 100
        sp = [f"/usage?limit=100&offset={off}", f"/usage?offset={off}&limit=100"]
        if off == 0:
            sp = ["/usage?limit=100", "/usage?limit=100&offset=0"]
        add("page", sp, 100, True)
    # full pages (limit absent means 1000): ~190 KB answers (live)
    add("full-page", ["/usage", "/usage?limit=1000", "/usage?offset=0"], 1000, True)
    add("full-page", ["/usage?offset=1000", "/usage?limit=1000&offset=1000"], 1000, True)
    # one SIM's day by hour (closed)
    for sim in SIM_POOL[:10]:
        add("sim-hours", [
            f"/usage/{sim}?filter=time:2024-03-01&group=hours",
            f"/usage/{sim}?group=hours&filter[]=time:2024-03-01&limit=1000",
        ], 24, False)
    # tag totals (live); the tag id is compared lower-case
    for tag in tag_ids:
        add("tag-total", [f"/usage/tag-total/{tag}", f"/usage/tag-total/{tag.upper()}"], 64, True)
    return qs


# Bad requests: (label, path, key or None for the caller's own, expected status, expected code)
BAD_REQUESTS = [
    ("bad key", "/usage?limit=10", "soak-wrong-key", 401, "unauthorized"),
    ("bad filter", "/usage?filter=time:2024-13&limit=10", None, 400, "filter_invalid"),
    ("bad filter", "/usage?filter=colour:red", None, 400, "filter_invalid"),
    ("bad limit", "/usage?limit=0", None, 400, "limit_invalid"),
    ("bad sim_id", "/usage/12345", None, 400, "sim_id_invalid"),
]

# ------------------------------------------------------------------------------------------------
# phases

MISBEHAVIORS = ["reset_mid_body", "short_body", "not_json", "oversized", "trickle", "redirect", "gzip"]


def phase_plan(args, misbehavior_ok):
    calm = {"fail_rate": 0.0, "latency_ms": args.calm_latency_ms, "jitter_ms": args.calm_jitter_ms}
    if misbehavior_ok:
        calm = dict(calm, misbehavior="none", misbehavior_rate=0.0)
    plan = [
        ("calm", calm, "latency %d–%d ms" % (args.calm_latency_ms, args.calm_latency_ms + args.calm_jitter_ms)),
        ("down", {"fail_rate": 1.0, "status": 503}, "every call 503"),
        ("calm", calm, "recovered"),
        ("latency", {"latency_ms": 300, "jitter_ms": 200}, "latency 300–500 ms"),
        ("calm", calm, "recovered"),
    ]
    for mode in MISBEHAVIORS if misbehavior_ok is not None else []:
        upd = dict(calm, misbehavior=mode, misbehavior_rate=args.misbehavior_rate)
        if mode == "oversized" and args.oversized_bytes is not None:
            upd["oversized_bytes"] = args.oversized_bytes
        if mode == "trickle" and args.trickle_ms is not None:
            upd["trickle_ms"] = args.trickle_ms
        plan.append((f"misbehavior {mode}", upd, f"{mode} on {args.misbehavior_rate:g} of calls"))
    if misbehavior_ok is not None:
        plan.append(("calm", calm, "recovered"))
    return plan


def probe_misbehaviors(args):
    """Which misbehavior phases the simulator accepts; (plan, notes)."""
    notes = []
    status, body = set_faults(args.sim_port, {"misbehavior": "none", "misbehavior_rate": 0.0})
    if status != 200:
        notes.append(
            "misbehavior phases skipped: this usage-sim refuses the `misbehavior` fault field "
            f"(POST /__sim/faults answered {status}: {body.strip()[:200]})")
        return phase_plan(args, None), notes
    plan = phase_plan(args, True)
    kept = []
    for name, upd, desc in plan:
        if name.startswith("misbehavior "):
            st, b = set_faults(args.sim_port, upd)
            set_faults(args.sim_port, {"misbehavior": "none", "misbehavior_rate": 0.0})
            if st != 200:
                notes.append(f"phase `{name}` skipped: usage-sim refused {json.dumps(upd)} ({st}: {b.strip()[:200]})")
                continue
        kept.append((name, upd, desc))
    return kept, notes


# ------------------------------------------------------------------------------------------------
# shared state


def cache_label(value):
    if value is None:
        return "none"
    if "stale-while-revalidate" in value:
        return "stale-while-revalidate"
    if "stale-if-error" in value:
        return "stale-if-error"
    if "; hit" in value:
        return "hit"
    if "collapsed" in value:
        return "collapsed" if "detail=" not in value else "bypass"
    if value.endswith("stored"):
        return "miss"
    return "bypass"


TTL_RE = re.compile(r"ttl=(-?\d+)")


class State:
    def __init__(self, questions, stale_if_error, min_ttl, n_phases):
        self.lock = threading.Lock()
        self.questions = questions
        self.sie = stale_if_error
        self.min_ttl = min_ttl
        # per question: the latest "fresh until" lower bound among 200s received so far
        self.fresh_lb = {}
        self.phase = 0
        self.phase_status = [collections.Counter() for _ in range(n_phases)]
        self.phase_cache = [collections.Counter() for _ in range(n_phases)]
        self.phase_codes = [collections.Counter() for _ in range(n_phases)]
        self.phase_protected_5xx = [0] * n_phases
        self.phase_protected_429 = [0] * n_phases
        self.phase_bad_expected = [0] * n_phases
        self.phase_bad_unexpected = [0] * n_phases
        self.phase_transport = [0] * n_phases
        self.phase_non_json_200 = [0] * n_phases
        self.codes = collections.Counter()
        self.by_caller = collections.Counter()
        self.transport_kinds = collections.Counter()
        self.bad_unexpected = collections.Counter()
        self.examples_protected = []
        self.examples_non_json = []
        self.requests = 0
        self.stopped = False

    def snapshot_lb(self, qid):
        with self.lock:
            return self.fresh_lb.get(qid)

    def record_good(self, phase, caller, q, path, t_send, t_recv, lb_at_send, status, cache, code, json_ok):
        with self.lock:
            self.requests += 1
            self.by_caller[(caller, status)] += 1
            if status == 0:
                self.phase_transport[phase] += 1
                self.transport_kinds[code] += 1
                return
            self.phase_status[phase][status] += 1
            label = cache_label(cache)
            self.phase_cache[phase][label] += 1
            if code:
                self.codes[(status, code)] += 1
                self.phase_codes[phase][(status, code)] += 1
            if status == 200:
                if not json_ok:
                    self.phase_non_json_200[phase] += 1
                    if len(self.examples_non_json) < 5:
                        self.examples_non_json.append((round(t_recv, 1), phase, path, cache))
                lb = self.fresh_until_lb(cache, t_send, t_recv)
                if lb is not None and lb > self.fresh_lb.get(q.qid, float("-inf")):
                    self.fresh_lb[q.qid] = lb
            elif status == 429 and lb_at_send is not None and t_recv < lb_at_send + self.sie:
                self.phase_protected_429[phase] += 1
            elif status >= 500 and lb_at_send is not None and t_recv < lb_at_send + self.sie:
                # a 200 had been received before this request was sent, and its stored answer
                # is, at the latest moment the gateway could have decided, within the
                # stale-if-error window: the gateway promised a stale answer instead of this
                self.phase_protected_5xx[phase] += 1
                if len(self.examples_protected) < 10:
                    self.examples_protected.append({
                        "t": round(t_recv, 1), "phase": phase, "path": path, "status": status,
                        "error": code, "expired_s_ago": round(t_recv - lb_at_send, 1)})

    def fresh_until_lb(self, cache, t_send, t_recv):
        """A lower bound on when the stored answer behind this 200 stops being fresh, or None
        when the answer was not stored (bypass)."""
        label = cache_label(cache)
        if label in ("hit", "stale-while-revalidate", "stale-if-error"):
            m = TTL_RE.search(cache or "")
            if not m:
                return None
            # The gateway decided at some moment d with t_send <= d <= t_recv. A hit's ttl=N is
            # the whole seconds left, rounded down: fresh until >= d + N >= t_send + N. A stale
            # answer's ttl=-N is the seconds since expiry, rounded up: fresh until >= d - N
            # >= t_send - N. Either way: t_send + ttl.
            return t_send + int(m.group(1))
        if label in ("miss", "collapsed"):
            # stored after this request was sent, fresh for at least the shortest TTL
            return t_send + self.min_ttl
        return None

    def record_bad(self, phase, label, status, code, exp_status, exp_code):
        with self.lock:
            self.requests += 1
            if status == 0:
                self.phase_transport[phase] += 1
                self.transport_kinds[code] += 1
                return
            self.phase_status[phase][status] += 1
            if code:
                self.codes[(status, code)] += 1
                self.phase_codes[phase][(status, code)] += 1
            if status == exp_status and code == exp_code:
                self.phase_bad_expected[phase] += 1
            else:
                self.phase_bad_unexpected[phase] += 1
                self.bad_unexpected[(label, exp_status, status, code)] += 1


# ------------------------------------------------------------------------------------------------
# workers


class Worker(threading.Thread):
    def __init__(self, idx, args, state, questions, callers, t0, end, interval, max_requests):
        super().__init__(daemon=True, name=f"worker-{idx}")
        self.idx, self.args, self.state, self.questions = idx, args, state, questions
        self.callers, self.t0, self.end = callers, t0, end
        self.interval, self.max_requests = interval, max_requests
        self.rng = random.Random(args.seed * 1000 + idx)
        self.conn = None

    def connect(self):
        self.conn = http.client.HTTPConnection("127.0.0.1", self.args.gateway_port, timeout=self.args.request_timeout)

    def auth_headers(self, key):
        form = self.rng.randrange(3)
        if form == 0:
            return {"Authorization": f"Bearer {key}"}
        if form == 1:
            return {"Authorization": key}
        return {"X-API-Key": key}

    def send(self, path, headers):
        """(status, headers dict, body) or (0, exception name, None)."""
        if self.conn is None:
            self.connect()
        try:
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
            body = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                self.conn.close()
                self.conn = None
            return resp.status, hdrs, body
        except (OSError, http.client.HTTPException) as e:
            try:
                self.conn.close()
            finally:
                self.conn = None
            return 0, type(e).__name__, None

    def run(self):
        rng = self.rng
        nxt = time.monotonic() + rng.random() * self.interval
        count = 0
        while count < self.max_requests and not self.state.stopped:
            now = time.monotonic()
            if now >= self.end:
                break
            if nxt > now:
                time.sleep(min(nxt - now, self.end - now))
                continue
            # paced: one request per interval; after a stall, carry on from now (no burst)
            nxt = max(nxt + self.interval, now - self.interval)
            count += 1
            phase = self.state.phase
            caller, key = self.callers[rng.randrange(len(self.callers))]
            if rng.random() < self.args.bad_share:
                label, path, bad_key, exp_status, exp_code = BAD_REQUESTS[rng.randrange(len(BAD_REQUESTS))]
                status, hdrs, body = self.send(path, self.auth_headers(bad_key or key))
                code = error_code(status, hdrs, body)
                self.state.record_bad(phase, label, status, code, exp_status, exp_code)
                continue
            q = self.questions[rng.randrange(len(self.questions))]
            path = q.spellings[rng.randrange(len(q.spellings))]
            lb = self.state.snapshot_lb(q.qid)
            t_send = time.monotonic() - self.t0
            status, hdrs, body = self.send(path, self.auth_headers(key))
            t_recv = time.monotonic() - self.t0
            code = error_code(status, hdrs, body)
            cache = hdrs.get("cache-status") if status else None
            json_ok = True
            if status == 200:
                try:
                    json.loads(body)
                except ValueError:
                    json_ok = False
            self.state.record_good(phase, caller, q, path, t_send, t_recv, lb, status, cache, code, json_ok)
        if self.conn is not None:
            self.conn.close()


def error_code(status, hdrs, body):
    if status == 0:
        return hdrs  # the exception name
    if status < 400:
        return None
    try:
        return str(json.loads(body).get("error", "?"))
    except (ValueError, AttributeError):
        return "(not JSON)"


# ------------------------------------------------------------------------------------------------
# sampler


def proc_sample(pid):
    rss = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None, None
    return rss, fds


class Sampler(threading.Thread):
    def __init__(self, args, state, t0, end):
        super().__init__(daemon=True, name="sampler")
        self.args, self.state, self.t0, self.end = args, state, t0, end
        self.samples = []  # (t, phase, rss_kb, fds, cache_bytes, cache_entries)

    def sample(self):
        rss, fds = proc_sample(self.args.gateway_pid)
        m = scrape(self.args.admin_port)
        cb = metric_sum(m, "usage_gateway_cache_bytes") if m else None
        ce = metric_sum(m, "usage_gateway_cache_entries") if m else None
        self.samples.append((time.monotonic() - self.t0, self.state.phase, rss, fds, cb, ce))

    def run(self):
        limit = int((self.end - self.t0) / self.args.sample_secs) + 10
        nxt = time.monotonic()
        while len(self.samples) < limit and not self.state.stopped:
            now = time.monotonic()
            if now >= self.end:
                break
            if now < nxt:
                time.sleep(min(nxt - now, self.end - now))
                continue
            nxt += self.args.sample_secs
            self.sample()


# ------------------------------------------------------------------------------------------------
# the run


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S', time.gmtime())}] {msg}", file=sys.stderr, flush=True)


def check_tags(args, tag_ids):
    for tag in tag_ids:
        status, _ = http_call(args.sim_port, "GET", f"/usage/tag-total/{tag}",
                              headers={"Authorization": args.org_token})
        if status != 200:
            return f"usage-sim answered {status} for tag {tag}: the tag ids do not match its data"
    return None


def check_spellings(args, questions, callers):
    """Every spelling of a question must be one cache key: after the first spelling is stored,
    the others are hits. Checked on one question of each kind (one upstream call each)."""
    seen, problems = set(), []
    key = callers[0][1]
    for q in questions:
        if q.kind in seen:
            continue
        seen.add(q.kind)
        for i, path in enumerate(q.spellings):
            status, body = None, None
            for _ in range(20):  # a cold start may briefly queue; bounded
                status, body_hdrs = _get_with_headers(args.gateway_port, path, key)
                if status == 200:
                    break
                time.sleep(0.25)
            if status != 200:
                problems.append(f"{path}: status {status}")
                break
            label = cache_label(body_hdrs.get("cache-status"))
            if i > 0 and label != "hit":
                problems.append(f"{path} is not the same cache key as {q.spellings[0]} (Cache-Status {body_hdrs.get('cache-status')})")
    return len(seen), problems


def _get_with_headers(port, path, key):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def count_log(path):
    levels, messages = collections.Counter(), collections.Counter()
    if not path or not os.path.exists(path):
        return levels, messages
    with open(path, errors="replace") as f:
        for n, line in enumerate(f):
            if n > 2_000_000:
                break
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            lvl = rec.get("level", "?")
            levels[lvl] += 1
            if lvl in ("WARN", "ERROR"):
                msg = rec.get("message") or rec.get("fields", {}).get("message", "?")
                extra = rec.get("error") or rec.get("reason") or ""
                messages[(lvl, msg, str(extra)[:80])] += 1
    return levels, messages


def run(args):
    callers = []
    for spec in args.callers.split(","):
        name, key, quota = spec.split(":")
        callers.append((name, key, quota))
    caller_keys = [(n, k) for n, k, _ in callers]
    tag_ids = [tag_uuid(args.sim_seed, t) for t in range(args.sim_tags)]
    problem = check_tags(args, tag_ids)
    if problem:
        log(problem)
        return 2
    questions = build_questions(tag_ids)
    bound = sum(q.bytes_bound() for q in questions)
    if bound * 2 > args.max_bytes:
        log(f"the key space may need {bound} bytes: more than half of cache.max_bytes ({args.max_bytes}); "
            "eviction could apply. Raise CACHE_MAX_BYTES.")
        return 2
    plan, notes = probe_misbehaviors(args)
    for n in notes:
        log(n)
    n = len(plan)
    phase_secs = max(args.min_phase_secs, args.duration / n)
    total = phase_secs * n
    log(f"{len(questions)} questions ({sum(len(q.spellings) for q in questions)} spellings), at most "
        f"{bound / 2**20:.1f} MiB cached; {n} phases of {phase_secs:.1f} s")

    # spellings: one cache key each (checked through the gateway, before the clock starts)
    kinds, problems = check_spellings(args, questions, caller_keys)
    if problems:
        for p in problems:
            log("spelling check: " + p)
        return 2
    log(f"spelling check: every spelling of one question of each of {kinds} kinds is one cache key")
    # the run's own counts start here: the setup calls above leave the simulator's window
    http_call(args.sim_port, "POST", "/__sim/reset")

    state = State(questions, args.stale_if_error, min(args.ttl, args.closed_ttl), n)
    t0 = time.monotonic()
    end = t0 + total
    interval = args.workers / args.rate
    max_requests = int(total / interval * 1.2) + 100
    sampler = Sampler(args, state, t0, end)
    sampler.sample()
    workers = [Worker(i, args, state, questions, caller_keys, t0, end, interval, max_requests)
               for i in range(args.workers)]
    phase_rows = []
    m_start = scrape(args.admin_port)
    for w in workers:
        w.start()
    sampler.start()
    try:
        for i, (name, upd, desc) in enumerate(plan):
            p_start = time.monotonic()
            st, body = set_faults(args.sim_port, upd)
            if st != 200:
                raise RuntimeError(f"usage-sim refused the faults of phase {name}: {st} {body}")
            before = sim_stats(args.sim_port)
            state.phase = i
            log(f"phase {i + 1}/{n}: {name} ({desc}) for {phase_secs:.0f} s")
            p_end = t0 + phase_secs * (i + 1)
            while True:  # bounded by p_end
                left = p_end - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 1.0))
                if not any(w.is_alive() for w in workers):
                    break
            after = sim_stats(args.sim_port)
            phase_rows.append((name, desc, time.monotonic() - p_start, before, after))
            with state.lock:
                c = state.phase_status[i]
                log(f"  {sum(c.values())} answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))
                    + f"; 5xx with a stale copy: {state.phase_protected_5xx[i]}")
    finally:
        state.stopped = True
        for w in workers:
            w.join(timeout=args.request_timeout + 5)
        sampler.join(timeout=10)
        calm = plan[0][1]
        set_faults(args.sim_port, calm)
    sampler.sample()  # once more, after the load
    m_end = scrape(args.admin_port)
    final_stats = sim_stats(args.sim_port)
    elapsed = time.monotonic() - t0
    return report(args, callers, questions, bound, plan, notes, phase_secs, phase_rows, state, sampler.samples,
                  m_start, m_end, final_stats, elapsed)


# ------------------------------------------------------------------------------------------------
# report


def mib(kb_or_bytes, unit="kb"):
    if kb_or_bytes is None:
        return "–"
    v = kb_or_bytes / 1024 if unit == "kb" else kb_or_bytes / 2**20
    return f"{v:,.1f}"


def sim_count(stats, *path):
    v = stats
    for p in path:
        v = v.get(p, {}) if isinstance(v, dict) else {}
    return int(v) if isinstance(v, (int, float)) else 0


def report(args, callers, questions, bound, plan, notes, phase_secs, phase_rows, state, samples,
           m_start, m_end, final_stats, elapsed):
    out = []
    w = out.append
    targets = []  # (name, measured, wanted, met)

    # --- upstream
    up_status = {int(k): v for k, v in final_stats.get("by_status", {}).items()}
    up_429 = up_status.get(429, 0)
    gw_up_429 = int(metric_sum(m_end, "usage_gateway_upstream_requests_total", status="429")
                    - metric_sum(m_start, "usage_gateway_upstream_requests_total", status="429"))
    targets.append(("upstream 429s (usage-sim's `/__sim/stats` count; the gateway's "
                    "`usage_gateway_upstream_requests_total{status=\"429\"}`)", f"{up_429} ({gw_up_429})", "0",
                    up_429 == 0 and gw_up_429 == 0))

    # --- stale copies
    protected = sum(state.phase_protected_5xx)
    targets.append(("5xx answered for a question with a stale copy", str(protected), "0", protected == 0))

    # --- memory and descriptors
    base_secs = min(60.0, elapsed / 4)
    rss = [(t, r) for t, _, r, _, _, _ in samples if r is not None]
    fds = [(t, f) for t, _, _, f, _, _ in samples if f is not None]
    during = [s for s in samples if s[0] <= phase_secs * len(plan) + 0.5]
    rss_base = max((r for t, r in rss if t <= base_secs), default=None)
    rss_max = max((r for _, r in rss), default=None)
    rss_final = next((s[2] for s in reversed(during) if s[2] is not None), None)
    rss_after = samples[-1][2] if samples else None
    fd_first = fds[0][1] if fds else None
    fd_base = max((f for t, f in fds if t <= base_secs), default=None)
    fd_max = max((f for _, f in fds), default=None)
    fd_final = next((s[3] for s in reversed(during) if s[3] is not None), None)
    fd_after = samples[-1][3] if samples else None
    cb_max = max((s[4] for s in samples if s[4] is not None), default=None)
    ce_max = max((s[5] for s in samples if s[5] is not None), default=None)
    bound_kb = args.max_bytes / 1024
    ok_rss = None not in (rss_base, rss_max, rss_final) and rss_max - rss_base <= bound_kb and rss_final - rss_base <= bound_kb
    base_label = "first minute" if base_secs >= 60 else f"first {base_secs:.0f} s"
    if None in (rss_base, rss_max, rss_final):
        targets.append(("RSS sampled", "no samples", "samples", False))
    else:
        targets.append((f"RSS growth past the {base_label}'s max ({mib(rss_base)} MiB): max, final",
                        f"{(rss_max - rss_base) / 1024:+,.1f}, {(rss_final - rss_base) / 1024:+,.1f} MiB",
                        f"≤ {args.max_bytes / 2**20:,.0f} MiB (cache.max_bytes)", ok_rss))
    fd_slack = args.workers + args.max_concurrency + 8
    ok_fd = None not in (fd_base, fd_final) and fd_final <= fd_base + fd_slack
    targets.append((f"open descriptors at the end past the {base_label}'s max ({fd_base})",
                    f"{(fd_final or 0) - (fd_base or 0):+d}",
                    f"≤ +{fd_slack} (workers + upstream.max_concurrency + 8)", ok_fd))

    transport = sum(state.phase_transport)
    targets.append(("requests without an HTTP answer (connection error or timeout)", str(transport), "0",
                    transport == 0))
    bad_unexp = sum(state.phase_bad_unexpected)
    targets.append(("bad requests not answered with their 401/400", str(bad_unexp), "0", bad_unexp == 0))

    # --- header
    all_status = collections.Counter()
    for c in state.phase_status:
        all_status.update(c)
    all_cache = collections.Counter()
    for c in state.phase_cache:
        all_cache.update(c)
    served = sum(all_status.values())
    expected_4xx = sum(state.phase_bad_expected)
    w(f"### Soak run {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}")
    w("")
    w(f"- command: `{args.command}` ({elapsed:.0f} s of load)")
    w(f"- usage-gateway: `{args.git_rev}`")
    w(f"- machine: {args.machine}; load driver, gateway and simulator on the same cores")
    w(f"- upstream: usage-sim `--rate-limit 600 --rate-scope org --live-clock` (600 calls per wall-clock minute "
      f"for the organization), {args.calm_latency_ms}–{args.calm_latency_ms + args.calm_jitter_ms} ms latency when calm")
    w(f"- gateway: defaults (600 upstream calls/min, 16 in flight, breaker 5 failures / 10 s, "
      f"closed periods kept {args.closed_ttl} s, stale-if-error {args.stale_if_error} s) except "
      f"`cache.max_bytes` = {args.max_bytes:,} ({args.max_bytes / 2**20:.0f} MiB), `cache.ttl_secs` = {args.ttl} and "
      f"`cache.stale_while_revalidate_secs` = {args.swr} (live answers refresh several times per phase, and a down "
      "phase reaches stale-if-error), `server.auth_failures_per_minute` = 1000000 (every caller shares 127.0.0.1); "
      "callers: " + ", ".join(f"{n} ({'no quota' if q == '-' else q + '/min'})" for n, _, q in callers))
    kinds = collections.Counter(q.kind for q in questions)
    w(f"- load: {args.workers} workers paced to {args.rate:g} req/s in all, keep-alive connections; "
      f"{len(questions)} distinct questions ({sum(len(q.spellings) for q in questions)} spellings: "
      + ", ".join(f"{k} {v}" for k, v in kinds.items())
      + f"), picked uniformly, each request from a random caller with a random key header form; "
      f"{args.bad_share:.0%} bad requests (wrong key, bad filter, bad limit, bad sim_id)")
    w(f"- key space: at most {bound / 2**20:.1f} MiB of entries, {bound / args.max_bytes:.0%} of `cache.max_bytes`, so "
      f"nothing can be evicted; observed at most {mib(cb_max, 'b')} MiB in {int(ce_max or 0)} entries "
      "(`usage_gateway_cache_bytes`, `usage_gateway_cache_entries`)")
    w(f"- phases: {len(plan)} of {phase_secs:.0f} s, each switched by `POST /__sim/faults`: " + " → ".join(
        f"{name} `{json.dumps(upd, separators=(',', ':'))}`" for name, upd, _ in plan))
    for n in notes:
        w(f"- note: {n}")
    w("")

    w("#### Targets")
    w("")
    w("| target | measured | wanted | met |")
    w("| --- | ---: | ---: | :---: |")
    for name, measured, wanted, met in targets:
        w(f"| {name} | {measured} | {wanted} | {'yes' if met else '**no**'} |")
    w("")

    w("#### Totals")
    w("")
    w(f"- requests served: {served:,} ({served / max(elapsed, 1):.0f}/s); {expected_4xx:,} of them bad requests answered "
      f"with their expected 401/400; {transport} without an answer")
    w("- responses by status: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(all_status.items())))
    w("- cache: " + ", ".join(f"{k}: {v:,}" for k, v in all_cache.most_common()))
    w("- errors by gateway error code (the JSON body's `error`; bad requests included): " + (", ".join(
        f"{st} `{code}`: {v:,}" for (st, code), v in sorted(state.codes.items())) or "none"))
    by_caller = collections.defaultdict(collections.Counter)
    for (caller, st), v in state.by_caller.items():
        by_caller[caller][st] += v
    w("- by caller (quota/min): " + "; ".join(
        f"{n} ({'–' if q == '-' else q}): " + ", ".join(f"{st}: {v:,}" for st, v in sorted(by_caller[n].items()))
        for n, _, q in callers))
    up_total = int(final_stats.get("requests_total", 0))
    gw_up = metric_by(m_end, "usage_gateway_upstream_requests_total", "status")
    gw_up.subtract(metric_by(m_start, "usage_gateway_upstream_requests_total", "status"))
    w(f"- upstream calls (usage-sim): {up_total:,}, by status " + ", ".join(f"{k}: {v:,}" for k, v in sorted(up_status.items()))
      + "; the gateway counted " + (", ".join(f"{k}: {int(v):,}" for k, v in sorted(gw_up.items()) if v) or "none"))
    w(f"- 429 answered for a question with a stale copy (the README promises the stale answer here too; "
      f"not a target): {sum(state.phase_protected_429)}")
    non_json = sum(state.phase_non_json_200)
    w(f"- 200 answers whose body is not JSON: {non_json}" + (" (" + "; ".join(
        f"{p} `{c}`" for _, _, p, c in state.examples_non_json[:3]) + ")" if non_json else ""))
    if state.transport_kinds:
        w("- requests without an answer: " + ", ".join(f"{k}: {v}" for k, v in state.transport_kinds.items()))
    if state.bad_unexpected:
        w("- bad requests answered otherwise: " + ", ".join(
            f"{label} (want {exp}) got {st} `{code}`: {v}" for (label, exp, st, code), v in state.bad_unexpected.items()))
    if state.examples_protected:
        w("- 5xx with a stale copy, first examples: " + "; ".join(
            f"t={e['t']} s {plan[e['phase']][0]} `{e['path']}` {e['status']} `{e['error']}` "
            f"(fresh until ≥ {e['expired_s_ago']} s before)" for e in state.examples_protected))
    w("")

    w("#### Per phase")
    w("")
    w("What callers saw (by the phase a request was sent in), and the upstream calls usage-sim counted in it.")
    w("")
    w("| # | phase | s | requests | 200 | 4xx | 5xx | 5xx, stale copy | no answer | hit | stale-while-revalidate | "
      "stale-if-error | miss | collapsed | not stored | non-JSON 200 | upstream calls | upstream 5xx | upstream 429 | "
      "RSS max MiB | fds max |")
    w("| ---: | --- |" + " ---: |" * 19)
    for i, (name, desc, secs, before, after) in enumerate(phase_rows):
        c, ca = state.phase_status[i], state.phase_cache[i]
        n4 = sum(v for k, v in c.items() if 400 <= k < 500)
        n5 = sum(v for k, v in c.items() if k >= 500)
        calls = sim_count(after, "requests_total") - sim_count(before, "requests_total")
        u5 = sum(sim_count(after, "by_status", s) - sim_count(before, "by_status", s)
                 for s in after.get("by_status", {}) if int(s) >= 500)
        u429 = sim_count(after, "by_status", "429") - sim_count(before, "by_status", "429")
        w(f"| {i + 1} | {name} | {secs:.0f} | {sum(c.values()) + state.phase_transport[i]:,} | {c.get(200, 0):,} | {n4:,} | {n5:,} | "
          f"{state.phase_protected_5xx[i]} | {state.phase_transport[i]} | {ca.get('hit', 0):,} | "
          f"{ca.get('stale-while-revalidate', 0):,} | {ca.get('stale-if-error', 0):,} | {ca.get('miss', 0):,} | "
          f"{ca.get('collapsed', 0):,} | {ca.get('bypass', 0):,} | {state.phase_non_json_200[i]} | {calls:,} | {u5:,} | {u429:,} | "
          f"{_phase_mem(samples, i)} |")
    w("")
    w("Errors by status and code, per phase (bad requests' expected 401/400 included):")
    w("")
    for i, (name, desc, _, _, _) in enumerate(phase_rows):
        codes = state.phase_codes[i]
        w(f"- {i + 1} {name} ({desc}): " + (", ".join(f"{st} `{code}` {v:,}" for (st, code), v in sorted(codes.items()))
                                         or "none"))
    w("")

    w("#### Memory and descriptors")
    w("")
    w(f"Sampled every {args.sample_secs:g} s (`/proc/<pid>/status` VmRSS, `/proc/<pid>/fd`), {len(samples)} samples; "
      "\"end\" is the last sample under load, \"after\" one taken once the load stopped.")
    w("")
    w("| | first | max, " + base_label + " | max | end | after |")
    w("| --- | ---: | ---: | ---: | ---: | ---: |")
    rss_first = rss[0][1] if rss else None
    w(f"| RSS MiB | {mib(rss_first)} | {mib(rss_base)} | {mib(rss_max)} | {mib(rss_final)} | {mib(rss_after)} |")
    w(f"| open descriptors | {fd_first} | {fd_base} | {fd_max} | {fd_final} | {fd_after} |")
    cb_first = samples[0][4] if samples else None
    cb_end = next((s[4] for s in reversed(during) if s[4] is not None), None)
    w(f"| cache MiB (metric) | {mib(cb_first, 'b')} | | {mib(cb_max, 'b')} | {mib(cb_end, 'b')} | |")
    w("")
    w("RSS and descriptors per phase: the last two columns of the table above.")
    w("")

    levels, messages = count_log(args.gateway_log)
    w("#### Gateway log")
    w("")
    w("Lines by level (`log.level = \"warn\"`): " + (", ".join(f"{k}: {v:,}" for k, v in sorted(levels.items())) or "none"))
    if messages:
        w("")
        for (lvl, msg, extra), v in messages.most_common(8):
            w(f"- {lvl} {v:,}× {msg}" + (f" ({extra})" if extra else ""))
    w("")

    w("#### Definitions")
    w("")
    w("- **Stale copy** (README, *Errors* and *When the budget runs out*: every 502, 503, 504 and 429 is replaced by a "
      "stored answer that expired less than `cache.stale_if_error_secs` ago, and a failed refresh never replaces a "
      "stored answer): a question has one when a 200 for it (any spelling) was received before the request was sent, "
      "and the request's answer arrived less than `stale_if_error_secs` after that 200's stored answer stopped being "
      "fresh. The freshness end is taken at its earliest: the 200's send time plus its `Cache-Status` `ttl=` for "
      "answers from storage (negative when stale), its send time plus `cache.ttl_secs` for answers just fetched and stored; answers "
      "not stored (`detail=too-large` and the like) count for nothing. Eviction cannot remove a copy here: the key "
      "space's bound is far under `cache.max_bytes` (line *key space* above).")
    w("- **RSS target**: the max and the end RSS may exceed the max of the first minute (the first quarter of a run "
      "shorter than 4 minutes) by no more than `cache.max_bytes`, what the cache alone is allowed to grow by.")
    w("- **Descriptors**: the end count may exceed the first minute's max by at most one connection per worker, one "
      "per upstream slot and 8 more; a steady climb is a leak.")
    w("- **Upstream 429s**: usage-sim's own count by status (control requests are not counted; its counters are "
      "reset after the set-up checks), and the gateway's metric.")
    w("")
    ok = all(met for _, _, _, met in targets)
    w(f"**{'All targets met.' if ok else 'Targets missed: ' + '; '.join(n for n, _, _, m in targets if not m)}**")
    print("\n".join(out))
    return 0 if ok else 1


def _phase_mem(samples, i):
    rows = [s for s in samples if s[1] == i]
    r = max((s[2] for s in rows if s[2] is not None), default=None)
    f = max((s[3] for s in rows if s[3] is not None), default=None)
    return f"{mib(r)} | {f if f is not None else '–'}"


# ------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tags")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--tags", type=int, default=8)
    r = sub.add_parser("run")
    r.add_argument("--gateway-port", type=int, required=True)
    r.add_argument("--admin-port", type=int, required=True)
    r.add_argument("--sim-port", type=int, required=True)
    r.add_argument("--gateway-pid", type=int, required=True)
    r.add_argument("--gateway-log", default="")
    r.add_argument("--org-token", required=True)
    r.add_argument("--callers", required=True, help="name:key:quota,... (quota '-' for none)")
    r.add_argument("--duration", type=float, default=600)
    r.add_argument("--workers", type=int, default=8)
    r.add_argument("--rate", type=float, default=300)
    r.add_argument("--bad-share", type=float, default=0.02)
    r.add_argument("--min-phase-secs", type=float, default=5)
    r.add_argument("--sample-secs", type=float, default=2)
    r.add_argument("--request-timeout", type=float, default=30)
    r.add_argument("--max-bytes", type=int, required=True)
    r.add_argument("--max-concurrency", type=int, default=16)
    r.add_argument("--ttl", type=int, default=60)
    r.add_argument("--swr", type=int, default=30)
    r.add_argument("--closed-ttl", type=int, default=86400)
    r.add_argument("--stale-if-error", type=int, default=3600)
    r.add_argument("--calm-latency-ms", type=int, default=20)
    r.add_argument("--calm-jitter-ms", type=int, default=30)
    r.add_argument("--misbehavior-rate", type=float, default=0.5)
    r.add_argument("--oversized-bytes", type=int, default=None)
    r.add_argument("--trickle-ms", type=int, default=None)
    r.add_argument("--sim-seed", type=int, default=1)
    r.add_argument("--sim-tags", type=int, default=8)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--command", default="bench/soak.sh")
    r.add_argument("--git-rev", default="unknown")
    r.add_argument("--machine", default="")
    args = ap.parse_args()
    if args.cmd == "tags":
        for i in range(args.tags):
            print(tag_uuid(args.seed, i))
        return 0
    if not (1 <= args.workers <= 256 and 0 < args.rate <= 5000 and 1 <= args.duration <= 86400
            and 0 <= args.bad_share < 1 and 1 <= args.sample_secs <= 60):
        print("soak.py: workers 1..256, rate 0..5000, duration 1..86400 s, bad share 0..1, sample 1..60 s",
              file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
