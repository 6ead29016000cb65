# shellcheck shell=bash disable=SC2034
# (SC2034: the MS_* variables are used by the scripts that source this file)
# lib.sh - helpers shared by up.sh, down.sh and selftest.sh (sourced, not run).
#
# Everything the stack owns lives under $MS_STATE (env MAILSTACK_STATE,
# default /var/lib/mailloop-mailstack). Daemons are tracked by pid files under
# that directory only; nothing is ever looked up or killed by process name.

MS_STATE=${MAILSTACK_STATE:-/var/lib/mailloop-mailstack}
MS_STATE=${MS_STATE%/}
case $MS_STATE in
  /*) ;;
  *) echo "mailstack: MAILSTACK_STATE must be an absolute path (got '$MS_STATE')" >&2; exit 2 ;;
esac
case $MS_STATE in
  *[[:space:]]* | *[\'\"\$\`\\]* | '' | /)
    echo "mailstack: MAILSTACK_STATE must not be / nor contain spaces or quotes (got '$MS_STATE')" >&2
    exit 2 ;;
esac

MS_LOG=$MS_STATE/log
MS_RUN=$MS_STATE/run
MS_ETC=$MS_STATE/etc
MS_POSTFIX_ETC=$MS_ETC/postfix
MS_POSTFIX_SPOOL=$MS_STATE/postfix/spool
MS_DOVECOT_RUN=$MS_STATE/dovecot/run

# The components, in start order. down.sh stops all of them at once.
MS_COMPONENTS=(syslog dnsmasq opendkim opendmarc spamd spamass postgrey dovecot postfix exim)

# Exim, the second MTA (exim.sh), unpacked from its .deb by install.sh.
MS_EXIM_ROOT=/usr/local/lib/mailloop-mailstack/exim4
MS_EXIM=$MS_EXIM_ROOT/usr/sbin/exim4

# Pid file of each component, and a word that must appear in the command
# line of its pid, so that a stale pid file whose pid was recycled is never
# mistaken for ours.
declare -A MS_PIDFILE=(
  [syslog]=$MS_RUN/syslog-sink.pid
  [dnsmasq]=$MS_RUN/dnsmasq.pid
  [opendkim]=$MS_RUN/opendkim/opendkim.pid
  [opendmarc]=$MS_RUN/opendmarc/opendmarc.pid
  [spamd]=$MS_RUN/spamd/spamd.pid
  [spamass]=$MS_RUN/spamass/spamass-milter.pid
  [postgrey]=$MS_RUN/postgrey/postgrey.pid
  [dovecot]=$MS_DOVECOT_RUN/master.pid
  [postfix]=$MS_POSTFIX_SPOOL/pid/master.pid
  [exim]=$MS_RUN/exim/exim.pid
)
declare -A MS_CMDPAT=(
  [syslog]=syslog-sink [dnsmasq]=dnsmasq [opendkim]=opendkim
  [opendmarc]=opendmarc [spamd]=spamd [spamass]=spamass-milter [postgrey]=postgrey [dovecot]=dovecot
  [postfix]=postfix/sbin/master
  [exim]=sbin/exim4
)

# ms_alive PID: true when the process exists and is not a zombie. PID 1 of
# this sandbox reaps orphans only every ~2 s and kill -0 succeeds on a
# zombie, so the state letter in /proc/PID/stat is what counts.
# (Builtins only: a fork costs ~5 ms on a busy 2-core machine.)
ms_alive() {
  local pid=$1 stat rest
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  { IFS= read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
  rest=${stat##*) }        # the field after "(comm)" is the state letter
  [[ ${rest:0:1} != Z && ${rest:0:1} != X ]]
}

# ms_pid COMPONENT: true when the component runs; its pid is put in MS_PID.
ms_pid() {
  local f=${MS_PIDFILE[$1]} pid=''
  local -a argv
  MS_PID=''
  { IFS=' ' read -r pid <"$f"; } 2>/dev/null || [[ -n $pid ]] || return 1
  pid=${pid//[^0-9]/}
  [[ -n $pid ]] || return 1
  ms_alive "$pid" || return 1
  { mapfile -d '' argv <"/proc/$pid/cmdline"; } 2>/dev/null || return 1
  [[ " ${argv[*]} " == *"${MS_CMDPAT[$1]}"* ]] || return 1
  MS_PID=$pid
}

# ms_proc_scan: fill MS_CHILDREN (pid -> "child child ...") from /proc.
declare -A MS_CHILDREN=()
ms_proc_scan() {
  local p stat rest ppid
  MS_CHILDREN=()
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    { IFS= read -r stat <"/proc/$p/stat"; } 2>/dev/null || continue
    rest=${stat##*) }
    ppid=${rest#* }
    ppid=${ppid%% *}
    MS_CHILDREN[$ppid]+="$p "
  done
}

# ms_subtree PID: MS_SUBTREE = PID and all its live descendants (as of the
# last ms_proc_scan).
ms_subtree() {
  local -a todo=("$1")
  local p c
  MS_SUBTREE=''
  while ((${#todo[@]})); do
    p=${todo[0]}
    todo=("${todo[@]:1}")
    ms_alive "$p" && MS_SUBTREE+="$p "
    for c in ${MS_CHILDREN[$p]-}; do todo+=("$c"); done
  done
}

# ms_stop_pids PID[:TIMEOUT]... : SIGTERM the given pids all at once, wait
# for them and every descendant they had when signalled; whatever is still
# alive TIMEOUT seconds later (per pid, default $MS_STOP_TIMEOUT, decimals
# allowed) gets SIGKILL, together with its descendants.
MS_STOP_TIMEOUT=${MAILSTACK_STOP_TIMEOUT:-3}
ms_stop_pids() {
  (($#)) || return 0
  local arg pid t p tick=0 left
  local -a masters=() alive
  local -A deadline=() group=() quiet=()
  for arg in "$@"; do
    pid=${arg%%:*}
    t=$MS_STOP_TIMEOUT
    # an explicit (short) timeout means "SIGKILL is expected": no message
    [[ $arg == *:* ]] && t=${arg#*:} && quiet[$pid]=1
    # 0.05 s ticks: "3" -> 60, "0.5" -> 10
    if [[ $t == *.* ]]; then
      deadline[$pid]=$((${t%%.*} * 20 + ${t#*.} * 2))
    else
      deadline[$pid]=$((t * 20))
    fi
    masters+=("$pid")
  done
  ms_proc_scan
  for pid in "${masters[@]}"; do
    ms_subtree "$pid"
    group[$pid]=$MS_SUBTREE
  done
  kill -TERM "${masters[@]}" 2>/dev/null || true
  while :; do
    left=0
    for pid in "${masters[@]}"; do
      alive=()
      for p in ${group[$pid]}; do ms_alive "$p" && alive+=("$p"); done
      ((${#alive[@]})) || continue
      if ((tick >= deadline[$pid])); then
        [[ -n ${quiet[$pid]-} ]] ||
          echo "mailstack: pid $pid still alive after ${MS_STOP_TIMEOUT}s, SIGKILL: ${alive[*]}" >&2
        kill -KILL "${alive[@]}" 2>/dev/null || true
        deadline[$pid]=$((tick + 40))   # then 2 s more for the kernel
        ((tick < 200)) || { echo "mailstack: cannot kill ${alive[*]}" >&2; return 1; }
      fi
      left=1
    done
    ((left)) || return 0
    sleep 0.05
    tick=$((tick + 1))
  done
}

# ms_tail FILE [N] : print the last N lines of a log, indented.
ms_tail() {
  local f=$1 n=${2:-15}
  if [[ -s $f ]]; then
    echo "---- last $n lines of $f ----" >&2
    tail -n "$n" "$f" | sed 's/^/    /' >&2
  fi
}

# One up.sh or down.sh at a time, per state dir: two started at nearly the
# same moment once left OpenDKIM half-started (it refused to sign until
# restarted). Re-runs the calling script under flock(1); `-o` keeps the lock
# out of the daemons it starts, so it is released when the script ends.
ms_serialize() {
  [[ -z ${MS_SERIALIZED:-} ]] || return 0
  command -v flock >/dev/null || return 0
  mkdir -p "${MS_STATE%/*}"
  MS_SERIALIZED=1 exec flock -o -w "${MAILSTACK_LOCK_TIMEOUT:-300}" "$MS_STATE.lock" "$BASH" "$0" "$@"
}
