#!/usr/bin/env python3
"""make bench: one closing table of every part's headline figure and goal.

Reads the JSON files the parts of this `make bench` run wrote (bench.py's
bench-*.json, bench_traces.py's traces-*.json, mailloop-loadgen's
load-*.json; any may be missing, e.g. BENCH_LOAD=0 or BENCH_TRACES=0) and
prints one line per figure: what was measured, the goal, and whether it
is met. The parts' own tables above it have the detail.

    python3 scripts/bench_summary.py [--seconds N] [--quick] FILE.json ...

python3 stdlib only. A figure a part did not measure shows as "-".
"""

import json
import os
import sys


def num(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def get(doc, *path):
    for p in path:
        if isinstance(doc, dict):
            doc = doc.get(p)
        elif isinstance(doc, list) and isinstance(p, int) and -len(doc) <= p < len(doc):
            doc = doc[p]
        else:
            return None
    return doc


def median_of(summary, key, field):
    return get(summary, key, field, "median")


class Table:
    def __init__(self):
        self.rows = []

    def add(self, part, figure, value, goal, met):
        self.rows.append((part, figure, value, goal, met))

    def print(self, header):
        print()
        print(header)
        w = [max(len(r[i]) for r in self.rows + [("part", "figure", "measured", "goal", "")]) for i in range(4)]
        print(f"{'part':<{w[0]}}  {'figure':<{w[1]}}  {'measured':>{w[2]}}  {'goal':<{w[3]}}  met")
        for part, figure, value, goal, met in self.rows:
            tag = "-" if met is None else ("yes" if met else "NO")
            print(f"{part:<{w[0]}}  {figure:<{w[1]}}  {value:>{w[2]}}  {goal:<{w[3]}}  {tag}")


def at_most(v, goal):
    return None if v is None else v <= goal


def at_least(v, goal):
    return None if v is None else v >= goal


def probe_rows(t, doc):
    per = get(doc, "summary", "per_tool") or {}
    ml = median_of(per, "mailloop", "cpu_ms")
    for key, label in (("peer_default", "defaults"), ("peer_fast", "shortest waits")):
        peer = median_of(per, key, "cpu_ms")
        r = peer / ml if peer and ml else None
        t.add("probe", f"CPU per round trip, peer ({label}) / mailloop", "-" if r is None else f"{r:.1f}x", ">= 10x", at_least(r, 10.0))
    wall = median_of(per, "mailloop", "wall_ms")
    floor = get(doc, "summary", "mailloop", "connect_to_visible_floor_ms", "median")
    over = wall - floor if wall is not None and floor is not None else None
    t.add("probe", "one-shot wall over the stack's floor (ms)", num(over), "<= 100 ms", at_most(over, 100.0))
    lag = get(doc, "summary", "mailloop", "detection_lag_ms", "median")
    t.add("probe", "arrival detection lag, median (ms)", num(lag), "<= 10 ms", at_most(lag, 10.0))


def traces_rows(t, doc):
    goal = doc.get("goal", 0.05)
    for k, label in (("grpc", "OTLP/gRPC"), ("http", "OTLP/HTTP")):
        o = get(doc, "overhead", k)
        t.add("traces", f"probe CPU with export over {label}", "-" if o is None else f"{o * 100:+.1f} %", f"<= {goal * 100:.0f} %", at_most(o, goal))


def load_rows(t, doc):
    goal_connect = {1000: 5.0, 10000: 30.0}
    for r in doc.get("load") or []:
        n = r.get("agents")
        tag = f"load {n:,}"
        if r.get("reports_per_s") is not None:
            v = r["reports_per_s"]
            t.add(tag, "reports stored per second", num(v), ">= 20,000", at_least(v, 20000.0))
            p99 = get(r, "ack_ms", "p99")
            t.add(tag, "ack latency p99 (ms)", num(p99), "<= 250 ms at 1,000" if n == 1000 else "", at_most(p99, 250.0) if n == 1000 else None)
            t.add(tag, "coordinator CPU per 1,000 reports (ms)", num(r.get("cpu_ms_per_1000_reports")), "", None)
            t.add(tag, "reports acked = rows stored", f"{r.get('acked')} = {r.get('stored_rows')}", "equal", r.get("acked") == r.get("stored_rows"))
        c = r.get("connect_s")
        g = goal_connect.get(n)
        t.add(tag, "connect storm: all connected + assigned (s)", num(c, 2), f"<= {g:g} s" if g else "", at_most(c, g) if g else None)
        kib = r.get("idle_kib_per_agent")
        t.add(tag, "coordinator RSS per idle agent (KiB)", num(kib), "<= 100 KiB", at_most(kib, 100.0))
        p99 = get(r, "propagation_ms", "p99_from_call")
        t.add(tag, "check change at every agent, p99 (ms)", num(p99), "< 1,000 ms at 10,000" if n == 10000 else "", (p99 < 1000.0 if p99 is not None else None) if n == 10000 else None)
        t.add(tag, "coordinator CPU per check change (ms)", num(r.get("cpu_ms_per_change")), "", None)
    tr = doc.get("traces")
    if tr:
        ratio = tr.get("ratio")
        t.add("overhead", "ingest with metrics + traces on / off", "-" if ratio is None else f"{ratio * 100:.1f} %", ">= 95 %", at_least(ratio, 0.95))
    for i, r in enumerate(doc.get("postgres_load") or []):
        v = r.get("reports_per_s")
        t.add("postgres", f"reports stored per second, {r.get('replicas', i + 1)} replica(s)", num(v), ">= 8,000 (1 replica)" if i == 0 else "", at_least(v, 8000.0) if i == 0 else None)
    fo = doc.get("failover")
    if fo:
        t.add("postgres", "leader kill -9 -> takeover, max (s)", num(fo.get("max_s"), 2), "<= 10 s", at_most(fo.get("max_s"), 10.0))
        t.add("postgres", "leader kill -9 -> first new verdict, max (s)", num(fo.get("verdict_max_s"), 2), "<= 10 s", at_most(fo.get("verdict_max_s"), 10.0))
    fp = doc.get("footprint")
    if fp:
        rss = get(fp, "idle", "rss_mib")
        t.add("agent", f"idle agent RSS, {fp.get('checks')} checks (MiB)", num(rss), "< 30 MB", None if rss is None else rss * 1.048576 < 30.0)
    rp = doc.get("replay")
    if rp:
        v = rp.get("reports_per_s")
        t.add("replay", "spool replay, reports per second", num(v), ">= 10,000", at_least(v, 10000.0))
    sp = doc.get("status_page")
    if sp:
        b = get(sp, "build_ms", "p50")
        t.add("status", "status page build p50 (ms)", num(b), "<= 50 ms", at_most(b, 50.0))
        for w in sp.get("wrk") or []:
            s = w.get("server_p99_ms")
            t.add("status", f"cached page, server's own p99 (ms), -c{w.get('connections')}, {w.get('accept_encoding')}", num(s, 3), "<= 1 ms", at_most(s, 1.0))
        kb = get(sp, "bytes", "plain")
        kb = kb / 1024.0 if kb is not None else None
        t.add("status", "page weight, uncompressed (KB)", num(kb), "<= 150 KB", at_most(kb, 150.0))
    m = doc.get("metrics")
    if m:
        p50 = get(m, "formats", "openmetrics", "scrape_ms", "p50")
        t.add("metrics", f"/metrics scrape p50, {m.get('checks')} checks x {m.get('regions')} regions (ms)", num(p50), "< 100 ms", None if p50 is None else p50 < 100.0)


def main(argv):
    seconds, quick, files = None, False, []
    it = iter(argv)
    for a in it:
        if a == "--seconds":
            seconds = int(next(it))
        elif a == "--quick":
            quick = True
        else:
            files.append(a)
    t = Table()
    # The parts in the order they ran: the probe, the trace export, the load.
    order = {"bench-": 0, "traces-": 1}
    files.sort(key=lambda p: (next((v for k, v in order.items() if os.path.basename(p).startswith(k)), 2), p))
    for path in files:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            print(f"bench_summary: {path}: {e}", file=sys.stderr)
            continue
        name = os.path.basename(path)
        if name.startswith("bench-"):
            probe_rows(t, doc)
        elif name.startswith("traces-"):
            traces_rows(t, doc)
        else:
            load_rows(t, doc)
    if seconds is not None:
        t.add("bench", "total time (s)", str(seconds), "< 180 s (quick mode)" if quick else "", (seconds < 180) if quick else None)
    if t.rows:
        t.print(f"Summary of this make bench{' (quick mode: smaller runs, figures are indicative)' if quick else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
