#!/usr/bin/env bash
# down.sh - stop the mailloop test mail stack started by up.sh.
#
# Stops exactly the daemons up.sh started, found through the pid files under
# $MAILSTACK_STATE (never by process name): all are sent SIGTERM at once,
# then it waits for them and all their children, bounded per daemon
# (MAILSTACK_STOP_TIMEOUT, default 3 s; the milters MAILSTACK_MILTER_STOP_TIMEOUT,
# default 0.5 s), and SIGKILLs what is left. Zombies count as dead.
# /dev/log is removed only if up.sh created it.
#
#   down.sh           stop; keep the state dir (keys, ports, mail, logs)
#   down.sh --purge   stop and delete the state dir
#
# Idempotent: running it when nothing is up is fine.
set -euo pipefail

HERE=${BASH_SOURCE[0]%/*}
[[ $HERE != "${BASH_SOURCE[0]}" ]] || HERE=.
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ms_serialize "$@"

PURGE=0
for arg in "$@"; do
  case $arg in
    --purge) PURGE=1 ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "down.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
[[ $EUID -eq 0 ]] || { echo "down.sh: must run as root" >&2; exit 1; }

S=$MS_STATE
# The milters keep no state worth a graceful exit and take ~2.5 s to
# leave after SIGTERM (libmilter's poll loop): they get 0.5 s.
MILTER_TIMEOUT=${MAILSTACK_MILTER_STOP_TIMEOUT:-0.5}
T0=${EPOCHREALTIME/./}

pids=()
names=()
if [[ -d $S ]]; then
  # one up.sh/down.sh at a time per state dir
  exec 9>"$S/.lock"
  flock -w 120 9 || { echo "down.sh: another up.sh/down.sh holds $S/.lock" >&2; exit 1; }
  for c in "${MS_COMPONENTS[@]}"; do
    if ms_pid "$c"; then
      case $c in
        opendkim | opendmarc | spamass) pids+=("$MS_PID:$MILTER_TIMEOUT") ;;
        *) pids+=("$MS_PID") ;;
      esac
      names+=("$c")
    fi
  done
fi

if ((${#pids[@]})); then
  echo "down.sh: stopping ${names[*]}"
  ms_stop_pids "${pids[@]}" || true
else
  echo "down.sh: nothing of the stack is running"
fi

# /dev/log: remove it only when it is still the socket our sink created.
if [[ -f $S/run/devlog.created ]]; then
  created_ino=$(cat "$S/run/devlog.created")
  if [[ -S /dev/log && $(stat -c %i /dev/log 2>/dev/null) == "$created_ino" ]]; then
    rm -f /dev/log
  fi
  rm -f "$S/run/devlog.created"
fi

# Leftover sockets and pid files (the daemons normally remove their own).
if [[ -d $S/run ]]; then
  rm -f "$S/run/opendkim/opendkim.sock" "$S/run/opendmarc/opendmarc.sock" \
    "$S/run/spamass/spamass.sock" "$S/run/spamd/spamd.sock" \
    "$S/run/"*.pid "$S/run/"*/*.pid
fi

if ((PURGE)) && [[ -d $S ]]; then
  # refuse obviously wrong targets (lib.sh already rejects "/" and relative)
  if [[ -f $S/stack.env || -d $S/postfix || -d $S/run ]]; then
    rm -rf --one-file-system "$S"
    echo "down.sh: purged $S"
  else
    echo "down.sh: $S does not look like a mailstack state dir, not purging" >&2
    exit 1
  fi
fi
echo "down.sh: done in $(((${EPOCHREALTIME/./} - T0) / 1000)) ms"
