#!/usr/bin/env python3
"""make bench, trace export overhead of a one-shot probe (issue 10).

Runs `mailloop-agent probe` on the local mail stack, interleaved in
rounds (the order rotates each round): with trace export off (no OTEL_*
variable: nothing is built), exporting over OTLP/gRPC, and exporting over
OTLP/HTTP protobuf (OTEL_EXPORTER_OTLP_ENDPOINT, _PROTOCOL). The receiver
is real: `mailloop-loadgen --otlp-sink` (the opentelemetry-proto tonic
server for gRPC; an HTTP server decoding each body with the same types),
and every exported span must arrive. Each run is wrapped in GNU time
(bench.py's `measure`); CPU time (user+sys of the process tree, getrusage)
per probe. On a loaded machine the spread between runs is larger than the
effect, so the figure held against the goal is the median of the
per-round ratios (each round runs the three variants back to back, so a
load swing hits all three), with a bootstrap 90 % interval; the ratio of
the plain medians and the p90s are printed beside it. Then the same under
valgrind's callgrind (BENCH_TRACES_CALLGRIND rotating rounds, default 3):
instructions executed per probe, which load does not change. Goal: at
most 5 % more CPU with export on, for each protocol.

    python3 scripts/bench_traces.py STACK_ENV [RUNS]

Environment: MAILLOOP_BIN (default target/release/mailloop-agent),
LOADGEN_BIN (default target/release/mailloop-loadgen), BENCH_TRACES_RUNS
(counted runs per variant, default 50), BENCH_TRACES_CALLGRIND (rounds
under callgrind, default 3; 0 skips them, as does a missing valgrind).
Writes target/bench/traces-<UTC timestamp>.json.
"""

import datetime as dt
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (measure, mailloop_config, read_env, progress, die)

GOAL_OVERHEAD = 0.05


def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def paired(cpu, key, seed=10):
    """Median of the per-round ratios key/off, and a bootstrap 90 % interval."""
    ratios = [a / b for a, b in zip(cpu[key], cpu["off"]) if b > 0]
    rng = random.Random(seed)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return statistics.median(ratios) - 1, boot[100] - 1, boot[1899] - 1


def callgrind(cmd, env):
    """Instructions executed by one run under callgrind (all threads)."""
    for attempt in range(3):
        p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"] + cmd,
                           env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        m = re.search(r"Collected : (\d+)", p.stderr)
        if p.returncode == 0 and m:
            return int(m.group(1)), p.stdout
        # valgrind 3.19 now and then crashes itself (in the dynamic loader
        # before main, or on a signal in rustls' write): try again, twice;
        # then the instruction count is left out, the CPU figure stands.
        bench.progress(f"traces: the run under callgrind failed (exit {p.returncode}): "
                       + " ".join(p.stderr.strip().splitlines()[-1:]))
    return None, None


def main():
    if len(sys.argv) < 2:
        bench.die("usage: bench_traces.py STACK_ENV [RUNS]")
    env = bench.read_env(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else int(os.environ.get("BENCH_TRACES_RUNS", "50"))
    ml_bin = os.environ.get("MAILLOOP_BIN", "target/release/mailloop-agent")
    sink_bin = os.environ.get("LOADGEN_BIN", "target/release/mailloop-loadgen")
    for b, hint in ((ml_bin, "mailloop-agent"), (sink_bin, "mailloop-bench")):
        if not os.access(b, os.X_OK):
            bench.die(f"{b} not found: cargo build --release -p {hint}")

    sink = subprocess.Popen([sink_bin, "--otlp-sink"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    urls = dict(kv.split("=", 1) for kv in sink.stdout.readline().split())
    if set(urls) != {"grpc", "http"}:
        bench.die(f"mailloop-loadgen --otlp-sink printed {urls!r}")

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILLOOP_", "OTEL_"))}
    base_env["LC_ALL"] = "C"
    variants = [
        ("off", base_env),
        ("grpc", dict(base_env, OTEL_EXPORTER_OTLP_ENDPOINT=urls["grpc"], OTEL_EXPORTER_OTLP_PROTOCOL="grpc")),
        ("http", dict(base_env, OTEL_EXPORTER_OTLP_ENDPOINT=urls["http"], OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")),
    ]
    results = {k: [] for k, _ in variants}
    spans_sent = {"grpc": 0, "http": 0}
    with tempfile.TemporaryDirectory(prefix="mailloop-bench-traces.") as tmp:
        cfg = os.path.join(tmp, "mailloop.toml")
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(bench.mailloop_config(env))
        cmd = [ml_bin, "probe", "--config", cfg, "--output", "json"]
        # One warm-up round, not counted; then rounds in a rotating order.
        for rnd in range(runs + 1):
            k = rnd % len(variants)
            for key, e in variants[k:] + variants[:k]:
                r = bench.measure(cmd, e, bench.ML_TIMEOUT_S)
                if r["exit"] != 0:
                    bench.die(f"mailloop-agent probe ({key}) exited {r['exit']}: {r['stderr'][-500:]}", 2)
                reports = json.loads(r["stdout"])
                reports = reports if isinstance(reports, list) else [reports]
                if key != "off":
                    if not all(x.get("trace_id") for x in reports):
                        bench.die(f"export over {key}, but a report names no trace", 2)
                    spans_sent[key] += sum(1 + len(x.get("steps", [])) for x in reports)
                if rnd > 0:
                    results[key].append({"cpu_ms": r["rusage_cpu_ms"], "user_ms": r["rusage_user_ms"],
                                         "sys_ms": r["rusage_sys_ms"], "wall_ms": r["wall_ms"]})
            if rnd % 10 == 0:
                bench.progress(f"traces: round {rnd}/{runs}")
        grind_rounds = int(os.environ.get("BENCH_TRACES_CALLGRIND", "3"))
        if not shutil.which("valgrind"):
            bench.progress("traces: valgrind not found (apt-get install valgrind): no instruction counts")
            grind_rounds = 0
        instructions = {k: [] for k, _ in variants}
        for rnd in range(grind_rounds):
            bench.progress(f"traces: callgrind round {rnd + 1}/{grind_rounds}")
            k = rnd % len(variants)
            for key, e in variants[k:] + variants[:k]:
                ir, stdout = callgrind(cmd, e)
                if ir is None:
                    continue
                reports = json.loads(stdout)
                reports = reports if isinstance(reports, list) else [reports]
                if key != "off":
                    spans_sent[key] += sum(1 + len(x.get("steps", [])) for x in reports)
                instructions[key].append(ir)
    sink.stdin.close()
    received = json.loads(sink.stdout.readline() or "{}")
    sink.wait(timeout=30)

    cpu = {k: [x["cpu_ms"] for x in v] for k, v in results.items()}
    med = {k: statistics.median(v) for k, v in cpu.items()}
    pair = {k: paired(cpu, k) for k in ("grpc", "http")}
    ir = {k: statistics.median(v) for k, v in instructions.items() if v}
    if len(ir) < len(variants):
        ir = {}
    out = {
        "runs": runs,
        "cpu_ms_median": {k: round(v, 3) for k, v in med.items()},
        "cpu_ms_p90": {k: round(p90(v), 3) for k, v in cpu.items()},
        "wall_ms_median": {k: round(statistics.median(x["wall_ms"] for x in v), 2) for k, v in results.items()},
        "overhead": {k: round(pair[k][0], 4) for k in ("grpc", "http")},
        "overhead_interval_90": {k: [round(pair[k][1], 4), round(pair[k][2], 4)] for k in ("grpc", "http")},
        "overhead_of_medians": {k: round(med[k] / med["off"] - 1, 4) for k in ("grpc", "http")},
        "instructions": instructions,
        "instructions_overhead": {k: round(ir[k] / ir["off"] - 1, 4) for k in ("grpc", "http") if k in ir and "off" in ir},
        "goal": GOAL_OVERHEAD,
        "spans_received": received,
        "spans_at_least": spans_sent,
        "runs_raw": results,
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    print()
    print(f"One-shot probe CPU (user+sys) with trace export on vs off ({runs} rounds, rotating order; "
          f"load {' '.join(out['loadavg'])})")
    print("                 median      p90    of medians   per-round ratio (90 % interval)")
    print(f"  export off   {med['off']:7.2f}  {p90(cpu['off']):7.2f} ms")
    for k, label in (("grpc", "OTLP/gRPC"), ("http", "OTLP/HTTP")):
        o, lo, hi = pair[k]
        print(f"  {label:11}  {med[k]:7.2f}  {p90(cpu[k]):7.2f} ms  {out['overhead_of_medians'][k] * 100:+6.1f} %     "
              f"{o * 100:+6.1f} % ({lo * 100:+.1f} .. {hi * 100:+.1f})   goal <= {GOAL_OVERHEAD * 100:.0f} %  "
              + ("met" if o <= GOAL_OVERHEAD else "NOT met"))
    if ir:
        print(f"  instructions per probe (callgrind, median of {grind_rounds}): off {ir['off'] / 1e6:.1f} M, "
              + ", ".join(f"{label} {ir[k] / 1e6:.1f} M ({out['instructions_overhead'][k] * 100:+.1f} %)"
                          for k, label in (("grpc", "gRPC"), ("http", "HTTP"))))
    print(f"  spans received: gRPC {received.get('grpc_spans')}, HTTP {received.get('http_spans')} "
          f"(sent: gRPC {spans_sent['grpc']}, HTTP {spans_sent['http']}, warm-up included)")
    for k in ("grpc", "http"):
        if received.get(f"{k}_spans", 0) < spans_sent[k]:
            bench.die(f"the receiver got fewer {k} spans than the probes exported", 2)
    os.makedirs("target/bench", exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with open(f"target/bench/traces-{stamp}.json", "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
