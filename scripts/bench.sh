#!/usr/bin/env bash
# make bench, in two parts:
# 1. mailloop-agent probe vs. Debian's check_email_delivery
#    (monitoring-plugins-contrib) on the running local mail stack, same round
#    trip (submission with STARTTLS + AUTH, then IMAPS), interleaved runs.
#    Prints a table and writes every run's raw numbers to
#    target/bench/bench-<UTC timestamp>.json. The work is in scripts/bench.py.
# 2. The coordinator load test and agent footprint (issue 4): 
#    target/release/mailloop-loadgen (crate bench/, mailloop-bench) starts a real coordinator per agent
#    count (100 and 1,000 simulated agents over gRPC, no mail traffic) and a
#    real agent holding 1,000 checks; prints a table with the goals beside
#    the figures and writes target/bench/load-<UTC timestamp>.json.
#    Per agent count (issue 15): the connect storm (every agent connects at
#    once to the fresh coordinator, timed until each holds its check), the
#    coordinator's RSS per idle connected agent, and its CPU per 1,000
#    reports (the figure that carries over to another machine). Each
#    simulated agent is one HTTP/2 connection of the one loadgen process,
#    so N agents need about N fds on each side: the limit is raised to the
#    hard limit below (10,000 agents: `ulimit -Hn` of at least 20,000;
#    --agents 100,1000,10000 in BENCH_LOAD_ARGS).
#    Then the /metrics scrape (issue 10): a coordinator with 1,000 checks x 5
#    regions, every check x region with stored reports; scrape time, size and
#    series count, OpenMetrics and classic text, idle and with a steady report
#    flow, and the coordinator's CPU per scrape (--metrics-checks,
#    --metrics-regions, --metrics-changed-share in BENCH_LOAD_ARGS;
#    --metrics-only for just this).
#    Then the coordinator's ingest with metrics and traces both off, traces
#    only and both on (--traces-agents, default 100, 0 skips it;
#    --overhead-rounds runs of each in a rotating order, default 3,
#    medians), goal >= 95 % of the throughput, the coordinator's CPU per
#    1,000 reports beside it.
#    Then the public status page (issue 11): 100 public checks x 5 regions
#    x 90 days of stored verdicts; page build time (goal <= 50 ms), served
#    from cache under 500 concurrent connections with wrk (Debian package
#    `wrk`, installed here when missing; goal p99 <= 1 ms: wrk's p99, which
#    at -c500 is queueing by Little's law, and beside it the coordinator's
#    own time per cached answer from its /metrics histogram), page weight
#    plain, gzip and br (goal <= 150 KB plain). --status-checks,
#    --status-days, --status-connections in BENCH_LOAD_ARGS; --status-only
#    or BENCH_ONLY=status for just this.
#    Then the spool replay (issue 15): a real agent whose spool holds
#    --replay-reports reports replays them; reports/s (goal >= 10,000), the
#    agent's and the coordinator's CPU per 1,000 reports, stored = spooled.
# Between the two: the CPU of a one-shot probe with trace export off, over
#    OTLP/gRPC and over OTLP/HTTP (scripts/bench_traces.py, 50 rotating
#    rounds against mailloop-loadgen --otlp-sink, median of the per-round
#    ratios with a bootstrap interval, then instructions per probe under
#    callgrind, BENCH_TRACES_CALLGRIND rounds, default 3), goal <= 5 %
#    more; BENCH_TRACES=0 skips it.
#
#   bash scripts/bench.sh STACK_ENV
#
# Quick mode (`make bench BENCH=quick`, or BENCH_QUICK=1): a smoke run of
# every part under 3 minutes on the 2-core machine: 1 counted run per tool,
# 6 rounds of the trace export comparison without callgrind, the loadgen's
# --quick (100 and 1,000 agents, 20,000 reports, one round of the overhead
# comparison, 200 footprint and /metrics checks, 3 s windows).
# Both modes end with one summary table of every part's headline figure
# beside its goal (scripts/bench_summary.py, from the parts' JSON files)
# and the elapsed time.
# 10,000 agents: BENCH_LOAD_ARGS="--agents 10000" (the loadgen raises its
# open-file limit to the hard limit with setrlimit; it needs agents + 512).
#
# Environment: BENCH_QUICK=1 (see above), BENCH_RUNS (counted runs per tool, default 10; one warm-up
# run each is not counted), BENCH_MAX_SECONDS (total budget, default 60 s per
# round), MAILLOOP_BIN (default target/release/mailloop-agent), BENCH_PEER
# (default /usr/lib/nagios/plugins/check_email_delivery), BENCH_LOAD=0 (skip
# part 2), BENCH_LOAD_ARGS (extra mailloop-loadgen arguments; see its --help),
# BENCH_ONLY=status (only the status page measurement of part 2),
# BENCH_ONLY=replay (only the spool replay of part 2: a real agent replays
#   --replay-reports spooled reports, default 50,000, 10,000 in quick mode;
#   reports/s beside the 10,000/s goal, agent and coordinator CPU per 1,000),
# BENCH_ONLY=placement (only mailloop's placement runs of part 1 - INBOX +
# Junk, INBOX only, a GTUBE probe filed to Junk -, no peer, no part 2:
#   BENCH_ONLY=placement bash scripts/bench.sh STACK_ENV).
#
# Exit status: 0 done; 1 setup problem (stack down, peer or tool missing) or
# the time budget ran out; 2 a mailloop run did not end ok. A failed peer run
# is reported, not fatal. Part 2 exits 1 if reports acked and rows stored differ.
set -euo pipefail
env_file=${1:?usage: bench.sh STACK_ENV}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

fail() { echo "bench.sh: $*" >&2; exit 1; }
[[ -r $env_file ]] || fail "$env_file not found: is the mail stack up? (make mailstack-up)"
command -v python3 >/dev/null || fail "python3 not found"
time_version=$(/usr/bin/time --version 2>&1 || true)
[[ $time_version == *GNU* ]] || fail "GNU time not found at /usr/bin/time (apt-get install time)"
peer=${BENCH_PEER:-/usr/lib/nagios/plugins/check_email_delivery}
if [[ ${BENCH_LOAD:-1} != 0 ]] && ! command -v wrk >/dev/null; then
  echo "bench.sh: installing wrk (Debian package) for the status page under load" >&2
  apt-get install -y -qq wrk >/dev/null || fail "wrk is missing and could not be installed (apt-get install wrk)"
fi
if [[ ${BENCH_ONLY:-} == status ]]; then
  loadgen=target/release/mailloop-loadgen
  [[ -x $loadgen ]] || fail "$loadgen not found: run 'cargo build --release -p mailloop-coordinator -p mailloop-bench' (make bench builds both)"
  mkdir -p target/bench
  # shellcheck disable=SC2086
  exec "$loadgen" --status-only --json "target/bench/status-$(date -u +%Y%m%dT%H%M%SZ).json" ${BENCH_LOAD_ARGS:-}
fi
if [[ ${BENCH_ONLY:-} == replay ]]; then
  loadgen=target/release/mailloop-loadgen
  [[ -x $loadgen ]] || fail "$loadgen not found: run 'cargo build --release -p mailloop-coordinator -p mailloop-agent -p mailloop-bench' (make bench builds them)"
  mkdir -p target/bench
  # shellcheck disable=SC2086
  exec "$loadgen" --replay-only --json "target/bench/replay-$(date -u +%Y%m%dT%H%M%SZ).json" ${BENCH_LOAD_ARGS:-}
fi
if [[ ${BENCH_ONLY:-} == placement ]]; then
  export BENCH_LOAD=0
else
  [[ -x $peer ]] || fail "the peer $peer is missing (apt-get install monitoring-plugins-contrib)"
fi
bin=${MAILLOOP_BIN:-target/release/mailloop-agent}
[[ -x $bin ]] || fail "$bin not found: run 'cargo build --release -p mailloop-agent' (make release)"

loadgen=target/release/mailloop-loadgen
[[ ${BENCH_LOAD:-1} == 0 || -x $loadgen ]] || fail "$loadgen not found: run 'cargo build --release -p mailloop-coordinator -p mailloop-bench' (make bench builds both)"

[[ ${BENCH:-} == quick ]] && BENCH_QUICK=1
bench_started=$SECONDS
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
  # One counted round (after the warm-up) of the five probes: a round
  # takes 15-35 s on a loaded machine (the peer waits 5 s, SpamAssassin).
  export BENCH_RUNS=${BENCH_RUNS:-1}
  # The trace export comparison: 50 rounds of three probes and 3 rounds
  # under callgrind by default, which alone took 40 s of a quick run
  # (fewer than 6 rounds: the median ratio is mostly the machine's noise).
  export BENCH_TRACES_RUNS=${BENCH_TRACES_RUNS:-6}
  export BENCH_TRACES_CALLGRIND=${BENCH_TRACES_CALLGRIND:-0}
  quick=(--quick)
else
  quick=()
fi
# The JSON files this run writes (every part's), for the closing summary.
mkdir -p target/bench
marker=$(mktemp target/bench/.started.XXXXXX)
summary() {
  local files
  mapfile -t files < <(find target/bench -maxdepth 1 -name '*.json' -newer "$marker" | sort)
  rm -f "$marker"
  python3 "$repo/scripts/bench_summary.py" --seconds "$((SECONDS - bench_started))" \
    $([[ ${BENCH_QUICK:-0} == 1 ]] && echo --quick) "${files[@]}" || true
}
python3 "$repo/scripts/bench.py" "$env_file"
if [[ ${BENCH_TRACES:-1} != 0 ]]; then
  MAILLOOP_BIN=$bin python3 "$repo/scripts/bench_traces.py" "$env_file"
fi

if [[ ${BENCH_LOAD:-1} == 0 ]]; then
  summary
  echo "bench: $((SECONDS - bench_started)) s in all"
  exit 0
fi
mkdir -p target/bench
# 1,000 agents hold 1,000 connections on each side; the loadgen needs the fds.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo
echo "Coordinator load test and agent footprint (about 4 minutes; BENCH=quick for a short run)"
echo "machine load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# A throwaway PostgreSQL (the Debian package's server, as the tests start
# it: a temporary cluster on a free loopback port, fsync on) for the ingest
# figure on PostgreSQL and the leader failover times (issue 13).
# BENCH_PG=0 skips them.
pg_args=()
if [[ ${BENCH_PG:-1} != 0 ]]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n $pgbin && -x $pgbin/initdb ]] || fail "PostgreSQL is not installed: run 'make deps' (or apt-get install postgresql); BENCH_PG=0 skips its figures"
  pgdir=$(mktemp -d /tmp/mailloop-bench-pg.XXXXXX)
  as_pg=()
  if [[ $(id -u) == 0 ]]; then
    chown postgres: "$pgdir"
    as_pg=(runuser -u postgres --)
  fi
  "${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -U mailloop -A trust -E UTF8 --no-instructions >/dev/null
  pgport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
    -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  # shellcheck disable=SC2064
  trap "${as_pg[*]} $pgbin/pg_ctl -D $pgdir/data -m fast stop >/dev/null; rm -rf $pgdir" EXIT
  pg_args=(--postgres-url "postgres://mailloop@127.0.0.1:$pgport/postgres?sslmode=disable" --failovers "${BENCH_FAILOVERS:-$([[ ${BENCH_QUICK:-0} == 1 ]] && echo 2 || echo 10)}")
fi
status=0
# shellcheck disable=SC2086
"$loadgen" "${quick[@]}" "${pg_args[@]}" --json "target/bench/load-$(date -u +%Y%m%dT%H%M%SZ).json" ${BENCH_LOAD_ARGS:-} || status=$?
summary
echo "bench: $((SECONDS - bench_started)) s in all$([[ ${BENCH_QUICK:-0} == 1 ]] && echo " (quick mode; goal < 180 s)")"
exit "$status"
