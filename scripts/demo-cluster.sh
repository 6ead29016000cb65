#!/usr/bin/env bash
# The distributed demo on one machine: a coordinator with one check and two
# agents in two regions ("eu-west", "us-east"), all probing the local mail
# stack, results read back with mailloopctl. Leaves everything running.
#
#   scripts/demo-cluster.sh STACK_ENV BIN_DIR     start (or restart) and show results
#   scripts/demo-cluster.sh stop                  stop the coordinator and agents
set -euo pipefail
DIR=${MAILLOOP_DEMO_DIR:-/var/lib/mailloop-demo-cluster}

stop() {
  for pidfile in "$DIR"/*.pid; do
    [[ -e $pidfile ]] || continue
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}
if [[ ${1:-} == stop ]]; then stop; echo "demo-cluster: stopped"; exit 0; fi

env_file=${1:?usage: demo-cluster.sh STACK_ENV BIN_DIR | stop}
bin=${2:?usage: demo-cluster.sh STACK_ENV BIN_DIR | stop}
[[ -r $env_file ]] || { echo "demo-cluster: $env_file not found: is the mail stack up?" >&2; exit 1; }
# shellcheck disable=SC1090
. "$env_file"
stop
mkdir -p "$DIR"
chmod 700 "$DIR"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
token() { python3 -c 'import secrets; print("mlt_" + secrets.token_hex(24))'; }
[[ -s $DIR/admin.token ]] || token >"$DIR/admin.token"
[[ -s $DIR/eu-1.token ]] || token >"$DIR/eu-1.token"
[[ -s $DIR/us-1.token ]] || token >"$DIR/us-1.token"
GRPC=$(free_port)
HTTP=$(free_port)

cat >"$DIR/coordinator.toml" <<TOML
[server]
grpc_listen = "127.0.0.1:$GRPC"
http_listen = "127.0.0.1:$HTTP"
data_dir = "$DIR/data"
admin_token_file = "$DIR/admin.token"
test_mode = true                      # allows the short demo interval

[[agent]]
name = "eu-1"
region = "eu-west"
token_file = "$DIR/eu-1.token"

[[agent]]
name = "us-1"
region = "us-east"
token_file = "$DIR/us-1.token"

[[check]]
name = "submission"
interval = "10s"
regions = ["eu-west", "us-east"]
from = "$MAILSTACK_SMTP_USER"
to = "probe-cluster@$MAILSTACK_RCPT_DOMAIN"
trusted_authserv_id = "$MAILSTACK_AUTHSERV_ID"
[check.smtp]
host = "$MAILSTACK_HOST"
port = $MAILSTACK_PORT_SUBMISSION
security = "starttls"
username = "$MAILSTACK_SMTP_USER"
password_env = "DEMO_SMTP_PASS"       # resolved by each agent in its own environment
ca_file = "$MAILSTACK_CA_FILE"
[check.imap]
host = "$MAILSTACK_HOST"
port = $MAILSTACK_PORT_IMAPS
security = "tls"
username = "probe-cluster@$MAILSTACK_RCPT_DOMAIN"
password_env = "DEMO_IMAP_PASS"
ca_file = "$MAILSTACK_CA_FILE"
[check.expect]
alignment = "strict"
TOML

"$bin/mailloop-coordinator" check-config -c "$DIR/coordinator.toml" >/dev/null
nohup "$bin/mailloop-coordinator" serve -c "$DIR/coordinator.toml" </dev/null >"$DIR/coordinator.out" 2>"$DIR/coordinator.log" &
echo $! >"$DIR/coordinator.pid"

for a in eu-1:eu-west us-1:us-east; do
  name=${a%%:*} region=${a##*:}
  cat >"$DIR/$name.toml" <<TOML
[agent]
name = "$name"
region = "$region"
coordinator_url = "http://127.0.0.1:$GRPC"
token_file = "$DIR/$name.token"
spool = "$DIR/$name-spool.db"
[dns]
nameservers = ["$MAILSTACK_DNS:53"]
TOML
  DEMO_SMTP_PASS=$MAILSTACK_SMTP_PASS DEMO_IMAP_PASS=$MAILSTACK_IMAP_PASS \
    nohup "$bin/mailloop-agent" run -c "$DIR/$name.toml" </dev/null >/dev/null 2>"$DIR/$name.log" &
  echo $! >"$DIR/$name.pid"
done

export MAILLOOP_URL="http://127.0.0.1:$HTTP" MAILLOOP_TOKEN
MAILLOOP_TOKEN=$(cat "$DIR/admin.token")
# Wait (bounded) until both regions have reported a round.
for _ in $(seq 1 60); do
  n=$("$bin/mailloopctl" --output json results submission --since 5m 2>/dev/null |
    python3 -c 'import json,sys; print(len({json.loads(l)["region"] for l in sys.stdin if l.strip()}))' 2>/dev/null || true)
  # (|| true, not || echo 0: under pipefail a failed mailloopctl would print "0" twice)
  [[ ${n:-0} -ge 2 ]] && break
  sleep 0.5
done
"$bin/mailloopctl" agents list
echo
"$bin/mailloopctl" results submission --since 5m
echo
# The judge decides a round once both regions reported it: wait (bounded)
# for the first verdict, then show the one-screen status.
for _ in $(seq 1 60); do
  "$bin/mailloopctl" --output json status 2>/dev/null |
    python3 -c 'import json,sys; sys.exit(0 if any(c.get("verdict") for c in json.load(sys.stdin)["checks"]) else 1)' 2>/dev/null && break
  sleep 0.5
done
echo "== mailloopctl status (each check's latest round verdict, per region)"
"$bin/mailloopctl" status
echo
echo "== mailloopctl probe submission (run it now in every region)"
"$bin/mailloopctl" probe submission --timeout 60s || true
echo
cat <<MSG
The coordinator and two agents keep running (every 10 s, both regions):
  export MAILLOOP_URL=$MAILLOOP_URL MAILLOOP_TOKEN=\$(cat $DIR/admin.token)
  $bin/mailloopctl results submission        # newest rounds, both regions
  $bin/mailloopctl latest submission         # the latest round, every step, per region
  $bin/mailloopctl status                    # verdicts: up, degraded, deferred, transit, down, unknown
  $bin/mailloopctl incidents list            # outages, regional transit, performance, auth drift, certificates
  $bin/mailloopctl probe submission          # run it now in both regions
  logs: $DIR/*.log      stop: scripts/demo-cluster.sh stop
MSG
