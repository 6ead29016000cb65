#!/usr/bin/env python3
"""make bench, trace export overhead of a one-shot probe (issue 10).

Runs `mailloop-agent probe` on the local mail stack, interleaved: once with
trace export off (no OTEL_* variable: nothing is built) and once exporting
to a local OTLP/HTTP receiver (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf). Each run is wrapped in GNU time
(bench.py's `measure`); the CPU time (user+sys of the process tree) per
probe is compared by median. Goal: at most 5 % more CPU with export on.

The receiver is a plain HTTP server here that counts bytes and answers
200 with an empty ExportTraceServiceResponse (an empty protobuf message
is that message with no partial success); the spans' decoding by the
official protocol types is tested in tests/tests/traces.rs, not here.

    python3 scripts/bench_traces.py STACK_ENV [RUNS]

Environment: MAILLOOP_BIN (default target/release/mailloop-agent).
Writes target/bench/traces-<UTC timestamp>.json.
"""

import datetime as dt
import http.server
import json
import os
import statistics
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (measure, mailloop_config, read_env, empty_mailbox)

GOAL_OVERHEAD = 0.05


class Receiver(http.server.BaseHTTPRequestHandler):
    received = {"requests": 0, "bytes": 0}

    def do_POST(self):  # noqa: N802 (http.server's name)
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        Receiver.received["requests"] += 1
        Receiver.received["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    if len(sys.argv) < 2:
        bench.die("usage: bench_traces.py STACK_ENV [RUNS]")
    env = bench.read_env(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else int(os.environ.get("BENCH_RUNS", "10"))
    ml_bin = os.environ.get("MAILLOOP_BIN", "target/release/mailloop-agent")
    if not os.access(ml_bin, os.X_OK):
        bench.die(f"{ml_bin} not found: cargo build --release -p mailloop-agent")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILLOOP_", "OTEL_"))}
    base_env["LC_ALL"] = "C"
    exporting = dict(base_env, OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    results = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="mailloop-bench-traces.") as tmp:
        cfg = os.path.join(tmp, "mailloop.toml")
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(bench.mailloop_config(env))
        cmd = [ml_bin, "probe", "--config", cfg, "--output", "json"]
        # One warm-up of each, not counted; then interleaved, alternating who goes first.
        for rnd in range(runs + 1):
            order = [("off", base_env), ("on", exporting)]
            if rnd % 2:
                order.reverse()
            for key, e in order:
                r = bench.measure(cmd, e, bench.ML_TIMEOUT_S)
                if r["exit"] != 0:
                    bench.die(f"mailloop-agent probe ({key}) exited {r['exit']}: {r['stderr'][-500:]}", 2)
                report = json.loads(r["stdout"])
                if key == "on" and not report.get("trace_id"):
                    bench.die("export on, but the report names no trace", 2)
                if rnd > 0:
                    results[key].append({"cpu_ms": r["rusage_cpu_ms"], "wall_ms": r["wall_ms"], "rtt_ms": report.get("rtt_ms")})
            bench.progress(f"traces: round {rnd}/{runs}")
    server.shutdown()

    def median(key, field):
        return statistics.median(x[field] for x in results[key])

    off, on = median("off", "cpu_ms"), median("on", "cpu_ms")
    overhead = on / off - 1
    out = {
        "runs": runs,
        "cpu_ms_median": {"off": round(off, 2), "on": round(on, 2)},
        "wall_ms_median": {"off": round(median("off", "wall_ms"), 1), "on": round(median("on", "wall_ms"), 1)},
        "overhead": round(overhead, 4),
        "goal": GOAL_OVERHEAD,
        "receiver": Receiver.received,
        "runs_raw": results,
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    print()
    print(f"One-shot probe CPU with trace export on vs off ({runs} interleaved runs each, medians)")
    print(f"  export off   {off:8.1f} ms CPU")
    print(f"  export on    {on:8.1f} ms CPU   ({Receiver.received['requests']} OTLP requests, {Receiver.received['bytes']} bytes)")
    verdict = "met" if overhead <= GOAL_OVERHEAD else "NOT met"
    print(f"  overhead     {overhead * 100:+7.1f} %      goal <= {GOAL_OVERHEAD * 100:.0f} %  {verdict}")
    os.makedirs("target/bench", exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with open(f"target/bench/traces-{stamp}.json", "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
