#!/usr/bin/env python3
"""Helpers for bench/peers.sh (Python 3 standard library only).

Subcommands (each prints one JSON object on stdout unless said otherwise):
  wrk       parse wrk --latency output from stdin
  stampede  N simultaneous requests for one URL on N fresh connections
  seq       sequential keep-alive requests, one new key each (miss path)
  fill      fill a cache with distinct keys, bounded parallelism (memory)
  report    turn the JSON-lines results file into Markdown (prints Markdown)
Every network call goes to 127.0.0.1 only and every loop is bounded in count and time.
"""

import argparse
import asyncio
import http.client
import json
import re
import statistics
import sys
import threading
import time

HOST = "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# wrk output


def _to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(text):
    out = {}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if not m:
        raise ValueError("no Requests/sec in wrk output:\n" + text)
    out["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            out[f"p{pct}"] = _to_ms(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Transfer/sec:\s+(\S+)", text)
    out["transfer"] = m.group(1) if m else ""
    return out


def cmd_wrk(args):
    rec = parse_wrk(sys.stdin.read())
    rec.update(json.loads(args.extra))
    print(json.dumps(rec))


# ---------------------------------------------------------------------------------------------
# minimal HTTP/1.1 response reader for asyncio streams


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, headers, body


def pct(values, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


# ---------------------------------------------------------------------------------------------
# stampede


async def _stampede(port, path, auth, n, timeout):
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    t_conn = time.monotonic()
    conns = await asyncio.gather(
        *(asyncio.open_connection(HOST, port, limit=1 << 20) for _ in range(n)),
        return_exceptions=True,
    )
    connect_ms = (time.monotonic() - t_conn) * 1000
    ok_conns = [c for c in conns if not isinstance(c, BaseException)]
    connect_errors = n - len(ok_conns)
    fire = asyncio.Event()
    results = []

    async def one(reader, writer):
        await fire.wait()
        t0 = time.monotonic()
        writer.write(request)
        try:
            await writer.drain()
            status, headers, body = await read_response(reader)
            results.append((status, (time.monotonic() - t0) * 1000, len(body), t0))
        except Exception as e:  # noqa: BLE001 - every failure is counted
            results.append((f"error:{type(e).__name__}", (time.monotonic() - t0) * 1000, 0, t0))
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(one(r, w)) for r, w in ok_conns]
    await asyncio.sleep(0.05)
    t_fire = time.monotonic()
    fire.set()
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    t_end = time.monotonic()
    statuses = {}
    for r in results:
        statuses[str(r[0])] = statuses.get(str(r[0]), 0) + 1
    lat = [r[1] for r in results]
    from_fire = [(r[3] - t_fire) * 1000 + r[1] for r in results]
    return {
        "n": n,
        "connect_errors": connect_errors,
        "connect_phase_ms": round(connect_ms, 2),
        "timed_out": len(pending),
        "statuses": statuses,
        "ok": statuses.get("200", 0),
        "max_ms": round(max(lat), 2) if lat else None,
        "max_from_fire_ms": round(max(from_fire), 2) if from_fire else None,
        "p50_ms": round(pct(lat, 50), 2) if lat else None,
        "min_ms": round(min(lat), 2) if lat else None,
        "wall_ms": round((t_end - t_fire) * 1000, 2),
        "body_bytes": sorted({r[2] for r in results}),
    }


def cmd_stampede(args):
    rec = asyncio.run(_stampede(args.port, args.path, args.auth, args.n, args.timeout))
    rec.update(json.loads(args.extra))
    print(json.dumps(rec))


# ---------------------------------------------------------------------------------------------
# sequential misses


def _get(conn_box, port, path, headers, timeout):
    """One GET on a keep-alive connection, reconnecting once if the server closed it."""
    for attempt in (0, 1):
        if conn_box[0] is None:
            conn_box[0] = http.client.HTTPConnection(HOST, port, timeout=timeout)
        conn = conn_box[0]
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn_box[0] = None
            return resp.status, body
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            conn_box[0] = None
            if attempt:
                raise
    raise AssertionError("unreachable")


def cmd_seq(args):
    headers = {"Authorization": args.auth}
    box = [None]
    lat, errors, statuses = [], 0, {}
    deadline = time.monotonic() + args.max_secs
    # one untimed request first, so connection setup is not in the figures
    _get(box, args.port, args.warm_path, headers, 10)
    for i in range(args.count):
        if time.monotonic() > deadline:
            break
        path = args.path_fmt.format(i=args.start + i)
        t0 = time.perf_counter()
        try:
            status, _ = _get(box, args.port, path, headers, 10)
        except Exception:  # noqa: BLE001 - counted
            errors += 1
            continue
        lat.append((time.perf_counter() - t0) * 1000)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    rec = {
        "count": len(lat),
        "errors": errors,
        "statuses": statuses,
        "p50": pct(lat, 50) if lat else None,
        "p99": pct(lat, 99) if lat else None,
        "mean": statistics.fmean(lat) if lat else None,
        "max": max(lat) if lat else None,
    }
    rec.update(json.loads(args.extra))
    print(json.dumps(rec))


# ---------------------------------------------------------------------------------------------
# cache fill


def cmd_fill(args):
    headers = {"Authorization": args.auth}
    lock = threading.Lock()
    state = {"next": 0, "bytes": 0, "ok": 0, "errors": 0, "statuses": {}}
    deadline = time.monotonic() + args.max_secs

    def worker():
        box = [None]
        while time.monotonic() < deadline:
            with lock:
                i = state["next"]
                if i >= args.count:
                    return
                state["next"] += 1
            path = args.path_fmt.format(i=args.start + i)
            try:
                status, body = _get(box, args.port, path, headers, 30)
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    state["errors"] += 1
                continue
            with lock:
                state["statuses"][str(status)] = state["statuses"].get(str(status), 0) + 1
                if status == 200:
                    state["ok"] += 1
                    state["bytes"] += len(body)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic() + 5))
    rec = {
        "requested": args.count,
        "ok": state["ok"],
        "errors": state["errors"],
        "statuses": state["statuses"],
        "payload_bytes": state["bytes"],
        "secs": round(time.monotonic() - t0, 2),
    }
    rec.update(json.loads(args.extra))
    print(json.dumps(rec))


# ---------------------------------------------------------------------------------------------
# report

GW = "usage-gateway"


def med(values):
    return statistics.median(values) if values else None


def fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def spread(values, digits=2):
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(med(values), digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


def contenders_in(recs, scenario):
    seen = []
    for r in recs:
        if r["scenario"] == scenario and r["contender"] not in seen:
            seen.append(r["contender"])
    return seen


def table_of(rows, scenario, gw, title, lines):
    """The req/s and latency table of one cell; returns the rows by contender."""
    names = contenders_in(rows, scenario)
    by = {n: [r for r in rows if r["contender"] == n] for n in names}
    gw_runs = by.get(gw, [])
    gw_rps, gw_p99 = med([r["rps"] for r in gw_runs]), med([r["p99"] for r in gw_runs])
    gw_p50 = med([r["p50"] for r in gw_runs])
    lines.append(f"#### {title}\n")
    lines.append(
        f"| contender | req/s median (min–max) | p50 ms | p99 ms | errors | "
        f"{gw} req/s ÷ this | {gw} p50 ÷ this | {gw} p99 ÷ this |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        rs = by[n]
        rps = [r["rps"] for r in rs]
        p50 = [r["p50"] for r in rs]
        p99 = [r["p99"] for r in rs]
        errs = sum(r["non2xx"] + r["socket_errors"] for r in rs)
        is_gw = n == gw
        lines.append(
            f"| {'**' + n + '**' if is_gw else n} | {spread(rps, 0)} | {spread(p50, 3)} | "
            f"{spread(p99, 3)} | {errs} | {'' if is_gw else ratio(gw_rps, med(rps))} | "
            f"{'' if is_gw else ratio(gw_p50, med(p50))} | {'' if is_gw else ratio(gw_p99, med(p99))} |"
        )
    lines.append("")
    return by


SHIPPED = "usage-gateway-shipped"


def shipped_table(recs, cell, title, lines, verdicts):
    """Issue 14: the gateway as shipped against NGINX with and without its access log."""
    rows = [r for r in recs if r["scenario"] == "shipped" and r["cell"] == cell]
    if not rows:
        return
    by = table_of(rows, "shipped", SHIPPED, title, lines)
    if SHIPPED not in by:
        return
    rps = lambda n: med([r["rps"] for r in by[n]])  # noqa: E731
    gw = rps(SHIPPED)
    quiet = [n for n in by if n.startswith("nginx-") and not n.endswith("-log") and n != "nginx-static"]
    best = max(quiet, key=rps, default=None)
    if best:
        verdicts.append((f"as shipped, {cell}: req/s vs best NGINX without access log ({best})", gw / rps(best), "≥ 1.0"))
    if "nginx-auto-log" in by:
        verdicts.append((f"as shipped, {cell}: req/s vs NGINX with its default access log", gw / rps("nginx-auto-log"), "≥ 1.2"))
    if f"{SHIPPED}-noaccess" in by:
        verdicts.append((f"as shipped, {cell}: req/s with the access log ÷ without (its cost)", gw / rps(f"{SHIPPED}-noaccess"), "≥ 0.9"))


def hits_table(recs, cell, title, lines, verdicts):
    rows = [r for r in recs if r["scenario"] == "hits" and r["cell"] == cell]
    if not rows:
        return
    by = table_of(rows, "hits", GW, title, lines)
    names = list(by)
    gw = by.get(GW, [])
    gw_rps, gw_p99 = med([r["rps"] for r in gw]), med([r["p99"] for r in gw])
    # issue 5 targets
    if gw:
        nginx = [n for n in names if n.startswith("nginx-") and n != "nginx-static"]
        best = max(nginx, key=lambda n: med([r["rps"] for r in by[n]]), default=None)
        body = "small" if cell.startswith("small") else "large"
        if best:
            b_rps = med([r["rps"] for r in by[best]])
            target = 1.0
            verdicts.append((f"{cell}: req/s vs best NGINX ({best})", gw_rps / b_rps, f"≥ {target}"))
            p99_nginx = med([r["p99"] for r in by[best]])
            verdicts.append((f"{cell}: p99 vs best NGINX ({best}) (lower is better)", gw_p99 / p99_nginx, "≤ 1.0"))
        if "varnish" in by:
            target = 1.5 if body == "small" else 1.3
            verdicts.append((f"{cell}: req/s vs Varnish", gw_rps / med([r["rps"] for r in by["varnish"]]), f"≥ {target}"))
        if body == "small" and "nginx-static" in by:
            verdicts.append((f"{cell}: req/s vs static limit", gw_rps / med([r["rps"] for r in by["nginx-static"]]), "≥ 0.8"))


def gzip_table(recs, cell, title, lines, verdicts):
    rows = [r for r in recs if r["scenario"] == "gzip" and r["cell"] == cell]
    if not rows:
        return
    names = contenders_in(rows, "gzip")
    by = {n: [r for r in rows if r["contender"] == n] for n in names}
    per_answer = {n: med([r["head_bytes"] + r["body_bytes"] for r in by[n]]) for n in names}
    gw = by.get(GW, [])
    gw_rps, gw_p99 = med([r["rps"] for r in gw]), med([r["p99"] for r in gw])
    lines.append(f"#### {title}\n")
    lines.append(
        "| contender | req/s median (min–max) | p50 ms | p99 ms | errors | body bytes | "
        "bytes/answer (head + body) | usage-gateway req/s ÷ this | usage-gateway p99 ÷ this | "
        "usage-gateway bytes/answer ÷ this |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        rs = by[n]
        rps = [r["rps"] for r in rs]
        errs = sum(r["non2xx"] + r["socket_errors"] for r in rs)
        is_gw = n == GW
        lines.append(
            f"| {'**' + n + '**' if is_gw else n} | {spread(rps, 0)} | "
            f"{spread([r['p50'] for r in rs], 3)} | {spread([r['p99'] for r in rs], 3)} | {errs} | "
            f"{fmt(med([r['body_bytes'] for r in rs]))} | {fmt(per_answer[n])} | "
            f"{'' if is_gw else ratio(gw_rps, med(rps))} | "
            f"{'' if is_gw else ratio(gw_p99, med([r['p99'] for r in rs]))} | "
            f"{'' if is_gw else ratio(per_answer.get(GW), per_answer[n])} |"
        )
    lines.append("")
    # issue 14 targets: at least Varnish-storing-gzip's req/s, at most 1.1x its bytes per answer
    if gw and "varnish-gzip" in by:
        v_rps = med([r["rps"] for r in by["varnish-gzip"]])
        verdicts.append((f"gzip {cell}: req/s vs Varnish storing gzip", gw_rps / v_rps, "≥ 1.0"))
        verdicts.append(
            (f"gzip {cell}: bytes/answer ÷ Varnish storing gzip", per_answer[GW] / per_answer["varnish-gzip"], "≤ 1.1")
        )


def stampede_table(recs, lines, verdicts, latency_ms):
    rows = [r for r in recs if r["scenario"] == "stampede"]
    if not rows:
        return
    names = contenders_in(rows, "stampede")
    by = {n: [r for r in rows if r["contender"] == n] for n in names}
    gw = by.get(GW, [])
    gw_max = med([r["max_ms"] for r in gw])
    lines.append(
        "| contender | upstream calls median (min–max) | slowest caller ms | median caller ms | "
        "fastest caller ms | non-200 answers | usage-gateway slowest ÷ this |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        rs = by[n]
        calls = [r["upstream_calls"] for r in rs]
        mx = [r["max_ms"] for r in rs]
        p50 = [r["p50_ms"] for r in rs]
        mn = [r["min_ms"] for r in rs]
        bad = sum(r["n"] - r["ok"] for r in rs)
        is_gw = n == GW
        label = "direct (no cache: the tool's floor)" if n == "direct" else n
        lines.append(
            f"| {'**' + n + '**' if is_gw else label} | {spread(calls, 0)} | {spread(mx, 0)} | "
            f"{spread(p50, 0)} | {spread(mn, 0)} | {bad} | "
            f"{'' if is_gw or n == 'direct' else ratio(gw_max, med(mx))} |"
        )
    lines.append("")
    if gw:
        calls = [r["upstream_calls"] for r in gw]
        verdicts.append(("stampede: upstream calls (every round)", max(calls), "= 1"))
        floor = med([r["max_ms"] for r in by.get("direct", [])])
        note = f"; the tool's own floor (direct) is {floor:.0f} ms" if floor is not None else ""
        verdicts.append((f"stampede: slowest caller ms (median of rounds{note})", gw_max, f"≤ {latency_ms + 50}"))


def miss_table(recs, lines, verdicts):
    rows = [r for r in recs if r["scenario"] == "miss"]
    if not rows:
        return
    names = contenders_in(rows, "miss")
    direct = {r["round"]: r for r in rows if r["contender"] == "direct"}
    by = {n: [r for r in rows if r["contender"] == n] for n in names}

    def added(n, key):
        return [r[key] - direct[r["round"]][key] for r in by[n] if r["round"] in direct]

    gw_a50, gw_a99 = med(added(GW, "p50")) if GW in by else None, med(added(GW, "p99")) if GW in by else None
    lines.append(
        "| contender | p50 ms | p99 ms | added p50 ms (vs direct, same round) | added p99 ms | "
        "errors / non-200 | usage-gateway added p50 ÷ this | usage-gateway added p99 ÷ this |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        rs = by[n]
        is_gw = n == GW
        bad = sum(r["errors"] + sum(v for k, v in r["statuses"].items() if k != "200") for r in rs)
        if n == "direct":
            a50 = a99 = "(baseline)"
            r50 = r99 = ""
        else:
            a50v, a99v = added(n, "p50"), added(n, "p99")
            a50, a99 = spread(a50v, 3), spread(a99v, 3)
            r50 = "" if is_gw else ratio(gw_a50, med(a50v))
            r99 = "" if is_gw else ratio(gw_a99, med(a99v))
        lines.append(
            f"| {'**' + n + '**' if is_gw else n} | {spread([r['p50'] for r in rs], 3)} | "
            f"{spread([r['p99'] for r in rs], 3)} | {a50} | {a99} | {bad} | {r50} | {r99} |"
        )
    lines.append("")
    if gw_a50 is not None:
        verdicts.append(("miss path: added p50 ms", gw_a50, "≤ 0.3"))


def memory_table(recs, lines, verdicts):
    rows = [r for r in recs if r["scenario"] == "memory"]
    if not rows:
        return
    mb = 1024 * 1024
    lines.append(
        "| contender | answers cached | payload held MiB | RSS before MiB | RSS after MiB | "
        "RSS ÷ payload | cache on disk MiB | re-read upstream calls | notes |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        n = r["contender"]
        is_gw = n == GW
        payload = r["payload_bytes"]
        rss = r["rss_after_kb"] * 1024
        disk = r.get("disk_bytes")
        lines.append(
            f"| {'**' + n + '**' if is_gw else n} | {r['ok']:,} | {payload / mb:,.0f} | "
            f"{r['rss_before_kb'] / 1024:,.0f} | {r['rss_after_kb'] / 1024:,.0f} | "
            f"{rss / payload if payload else 0:.2f} | {'–' if disk is None else f'{disk / mb:,.0f}'} | "
            f"{r['reread_upstream_calls']} of {r['reread_count']} | {r.get('note', '')} |"
        )
        if is_gw and payload:
            limit = 1.3 * payload + 30 * mb
            verdicts.append(("memory: RSS MiB (target 1.3 × payload + 30 MiB)", rss / mb, f"≤ {limit / mb:,.0f}"))
    lines.append("")


def verdict_ok(value, target):
    t = target.replace(",", "")
    if t.startswith("≥"):
        return value >= float(t[1:])
    if t.startswith("≤"):
        return value <= float(t[1:])
    if t.startswith("="):
        return value == float(t[1:])
    return False


def cmd_report(args):
    recs = load(args.results)
    meta = json.loads(open(args.meta).read()) if args.meta else {}
    lines, verdicts = [], []
    cells = [
        ("small-c32", "1a. Hot hits, small body ({small}), wrk -t1 -c32"),
        ("small-c128", "1b. Hot hits, small body ({small}), wrk -t1 -c128"),
        ("large-c32", "2a. Hot hits, large body ({large}), wrk -t1 -c32"),
        ("large-c128", "2b. Hot hits, large body ({large}), wrk -t1 -c128"),
    ]
    small = meta.get("small_desc", "small")
    large = meta.get("large_desc", "large")
    body = []
    shipped_cells = [
        ("small-c32", "0a. As shipped: default configuration (access log on), small body ({small}), wrk -t1 -c32"),
        ("large-c32", "0b. As shipped: default configuration (access log on), large body ({large}), wrk -t1 -c32"),
    ]
    for cell, title in shipped_cells:
        shipped_table(recs, cell, title.format(small=small, large=large), body, verdicts)
    for cell, title in cells:
        hits_table(recs, cell, title.format(small=small, large=large), body, verdicts)
    gzip_large = meta.get("gzip_large_desc", "large")
    for cell, title in (
        ("small-c32", "6a. Hot hits for gzip callers (Accept-Encoding: gzip), small body ({small}), wrk -t1 -c32"),
        ("large-c32", "6b. Hot hits for gzip callers (Accept-Encoding: gzip), large body ({large}), wrk -t1 -c32"),
    ):
        gzip_table(recs, cell, title.format(small=small, large=gzip_large), body, verdicts)
    if any(r["scenario"] == "stampede" for r in recs):
        body.append(
            f"#### 3. Stampede: {meta.get('stampede_n', 500)} simultaneous requests for one cold key, "
            f"origin latency {meta.get('stampede_latency_ms', 500)} ms\n"
        )
        stampede_table(recs, body, verdicts, meta.get("stampede_latency_ms", 500))
    if any(r["scenario"] == "miss" for r in recs):
        body.append(
            f"#### 4. Miss path: {meta.get('miss_requests', 2000)} sequential requests, each a new key "
            "(keep-alive client), zero-latency origin\n"
        )
        miss_table(recs, body, verdicts)
    if any(r["scenario"] == "memory" for r in recs):
        body.append(f"#### 5. Memory after caching {meta.get('memory_entries', 10000):,} large answers (distinct keys)\n")
        memory_table(recs, body, verdicts)

    if verdicts:
        lines.append("#### usage-gateway against its targets (issue 5; as shipped: issue 14)\n")
        lines.append("| target | measured | wanted | met |")
        lines.append("| --- | ---: | ---: | :---: |")
        for name, value, target in verdicts:
            shown = f"{value:.2f}" + ("×" if "÷" in name or "vs" in name else "")
            lines.append(f"| {name} | {shown} | {target} | {'yes' if verdict_ok(value, target) else '**no**'} |")
        lines.append("")
    lines.extend(body)
    print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# small utilities for the shell script


def cmd_set(args):
    """Reads one JSON object on stdin, sets KEY=VALUE pairs (numbers parsed), prints it."""
    rec = json.loads(sys.stdin.read())
    for kv in args.pairs:
        k, v = kv.split("=", 1)
        try:
            rec[k] = json.loads(v)
        except ValueError:
            rec[k] = v
    print(json.dumps(rec))


def cmd_get(args):
    """Prints one field of the JSON object on stdin (dotted path)."""
    v = json.loads(sys.stdin.read())
    for part in args.field.split("."):
        v = v[part]
    print(v if not isinstance(v, (dict, list)) else json.dumps(v))


def cmd_readme(args):
    """Replaces the text between the peers markers in README (or appends the block)."""
    begin, end = "<!-- peers:results:begin -->", "<!-- peers:results:end -->"
    block = begin + "\n" + open(args.block).read().rstrip() + "\n" + end
    try:
        text = open(args.readme).read()
    except FileNotFoundError:
        text = ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + block + "\n"
    open(args.readme, "w").write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    w = sub.add_parser("wrk")
    w.add_argument("--extra", default="{}")
    w.set_defaults(fn=cmd_wrk)

    s = sub.add_parser("stampede")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--path", required=True)
    s.add_argument("--auth", required=True)
    s.add_argument("-n", type=int, default=500)
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--extra", default="{}")
    s.set_defaults(fn=cmd_stampede)

    q = sub.add_parser("seq")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--path-fmt", required=True, help="e.g. /usage?limit=10&offset={i}")
    q.add_argument("--warm-path", required=True)
    q.add_argument("--auth", required=True)
    q.add_argument("--start", type=int, default=0)
    q.add_argument("--count", type=int, default=2000)
    q.add_argument("--max-secs", type=float, default=120.0)
    q.add_argument("--extra", default="{}")
    q.set_defaults(fn=cmd_seq)

    f = sub.add_parser("fill")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--path-fmt", required=True)
    f.add_argument("--auth", required=True)
    f.add_argument("--start", type=int, default=0)
    f.add_argument("--count", type=int, default=10000)
    f.add_argument("--parallel", type=int, default=4)
    f.add_argument("--max-secs", type=float, default=900.0)
    f.add_argument("--extra", default="{}")
    f.set_defaults(fn=cmd_fill)

    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--meta")
    r.set_defaults(fn=cmd_report)

    st = sub.add_parser("set")
    st.add_argument("pairs", nargs="*")
    st.set_defaults(fn=cmd_set)

    g = sub.add_parser("get")
    g.add_argument("field")
    g.set_defaults(fn=cmd_get)

    rd = sub.add_parser("readme")
    rd.add_argument("--readme", required=True)
    rd.add_argument("--block", required=True)
    rd.set_defaults(fn=cmd_readme)

    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
