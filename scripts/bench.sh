#!/usr/bin/env bash
# make bench: mailloop-agent probe vs. Debian's check_email_delivery
# (monitoring-plugins-contrib) on the running local mail stack, same round
# trip (submission with STARTTLS + AUTH, then IMAPS), interleaved runs.
# Prints a table to stdout and writes every run's raw numbers to
# target/bench/bench-<UTC timestamp>.json. The work is in scripts/bench.py.
#
#   bash scripts/bench.sh STACK_ENV
#
# Environment: BENCH_RUNS (counted runs per tool, default 10; one warm-up
# run each is not counted), BENCH_MAX_SECONDS (total budget, default 60 s per
# round), MAILLOOP_BIN (default target/release/mailloop-agent), BENCH_PEER
# (default /usr/lib/nagios/plugins/check_email_delivery).
#
# Exit status: 0 done; 1 setup problem (stack down, peer or tool missing) or
# the time budget ran out; 2 a mailloop run did not end ok. A failed peer run
# is reported, not fatal.
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
[[ -x $peer ]] || fail "the peer $peer is missing (apt-get install monitoring-plugins-contrib)"
bin=${MAILLOOP_BIN:-target/release/mailloop-agent}
[[ -x $bin ]] || fail "$bin not found: run 'cargo build --release -p mailloop-agent' (make release)"

exec python3 "$repo/scripts/bench.py" "$env_file"
