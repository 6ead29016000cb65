#!/usr/bin/env bash
# up.sh - bring up the mailloop test/demo mail stack (no systemd needed).
#
#   Postfix   MX (receiver.test), MX-hop, greylisted MX, submission (STARTTLS
#             + AUTH), submissions (implicit TLS + AUTH), a submission that
#             offers only AUTH LOGIN, DKIM signing
#   Dovecot   IMAP (STARTTLS), IMAPS, LMTP delivery, SASL for Postfix
#   OpenDKIM  sign (submission) / verify (MX), OpenDMARC, policyd-spf
#   SpamAssassin (spamd + spamass-milter) on the inbound ports; Dovecot's
#             Sieve files mail it flags as spam into Junk (\Junk special use)
#   postgrey  greylisting, dnsmasq the fake .test zone, a syslog sink
#   Exim      a second MTA: STARTTLS + AUTH relay into the MX-hop (exim.sh)
#
# Everything listens on 127.0.0.1 (dnsmasq on 127.53.53.53:53) and lives
# under $MAILSTACK_STATE. Idempotent: when the stack is already up and its
# configuration did not change, it only checks it and rewrites stack.env.
# Daemons whose configuration changed are reloaded or restarted.
#
# Environment knobs (all optional), see README.md:
#   MAILSTACK_STATE       state dir (default /var/lib/mailloop-mailstack)
#   MAILSTACK_PORT_SUBMISSION MAILSTACK_PORT_SUBMISSIONS MAILSTACK_PORT_MX
#   MAILSTACK_PORT_MXHOP MAILSTACK_PORT_GREY MAILSTACK_PORT_IMAP
#   MAILSTACK_PORT_IMAPS MAILSTACK_PORT_POSTGREY MAILSTACK_PORT_SUBMISSION_LOGIN
#   MAILSTACK_PORT_EXIM
#                         TCP ports on 127.0.0.1; unset = free port picked at
#                         first start and kept in $MAILSTACK_STATE/ports.env
#   MAILSTACK_DNS         loopback address for dnsmasq (default 127.53.53.53)
#   MAILSTACK_GREY_DELAY  postgrey delay in seconds (default 10)
#   MAILSTACK_UP_TIMEOUT  seconds to wait for the daemons (default 20)
set -euo pipefail

HERE=${BASH_SOURCE[0]%/*}
[[ $HERE != "${BASH_SOURCE[0]}" ]] || HERE=.
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ms_serialize "$@"

S=$MS_STATE
HOST=127.0.0.1
GREY_DELAY=${MAILSTACK_GREY_DELAY:-10}
UP_TIMEOUT=${MAILSTACK_UP_TIMEOUT:-20}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3

# Fixed names of the test world.
RCPT_DOMAIN=receiver.test
GREY_DOMAIN=grey.receiver.test
SENDER_DOMAIN=sender.test
MX_NAME=mx.receiver.test
SUBMIT_NAME=mail.sender.test
SMTP_USER=probe@sender.test
SMTP_PASS=sender-secret
IMAP_PASS=receiver-secret
DKIM_SELECTOR=mail

die() {
  echo "up.sh: ERROR: $*" >&2
  exit 1
}
say() { echo "up.sh: $*"; }

# Speed matters (target: ~1 s cold, well under 1 s when already up) and a
# fork costs ~5 ms on a busy 2-core machine, so hot paths use builtins.
T0=${EPOCHREALTIME/./}
elapsed() { echo "$(((${EPOCHREALTIME/./} - T0) / 1000)) ms"; }

[[ $EUID -eq 0 ]] || die "must run as root"
[[ $GREY_DELAY =~ ^[0-9]+$ ]] || die "MAILSTACK_GREY_DELAY must be an integer (seconds)"
for cmd in postfix postconf dovecot doveconf opendkim opendmarc postgrey dnsmasq \
  spamd spamc spamass-milter sievec setpriv openssl unshare mount ss setsid flock gcc cmp /usr/bin/policyd-spf; do
  command -v "$cmd" >/dev/null || die "'$cmd' not found - run tests/mailstack/install.sh first"
done
[[ -x $MS_EXIM ]] || die "'$MS_EXIM' (Exim, unpacked from its .deb) not found - run tests/mailstack/install.sh first"
getent passwd Debian-exim >/dev/null || die "user Debian-exim (Exim's) missing - run tests/mailstack/install.sh first"

# The state dir must be reachable by the unprivileged daemons (postfix,
# dovecot, opendkim... so every directory above it needs o+x), and OpenDKIM
# refuses its config and key when a directory above them can be written by
# others (e.g. /tmp): say so now rather than fail later.
anc=() d=$S
while [[ -n $d ]]; do
  [[ -e $d ]] && anc+=("$d")
  d=${d%/*}
done
while read -r mode dir; do
  if (((8#$mode & 8#002) != 0)); then
    die "MAILSTACK_STATE=$S lies under $dir, which others can write to: OpenDKIM refuses that. Use a path like /var/lib/NAME."
  fi
  if (((8#$mode & 8#001) == 0)); then
    die "MAILSTACK_STATE=$S lies under $dir (mode $mode), which other users cannot enter: postfix/dovecot/opendkim could not reach their files. Use a path like /var/lib/NAME."
  fi
done < <(stat -c '%a %n' / "${anc[@]}")

# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------
# mkdir_as DIR OWNER MODE: create DIR (once) with owner and mode.
mkdir_as() {
  [[ -d $1 ]] && return 0
  install -d -o "${2%%:*}" -g "${2#*:}" -m "$3" "$1"
}
[[ -d $S ]] || install -d -m 755 "$S"
# One up.sh/down.sh at a time per state dir (parallel test runners may race).
# The daemons are started with fd 9 closed, or they would hold the lock.
exec 9>"$S/.lock"
flock -w 120 9 || die "another up.sh/down.sh holds $S/.lock"
for d in "$MS_LOG" "$MS_RUN" "$MS_ETC" "$MS_POSTFIX_ETC" "$MS_ETC/postgrey" "$S/bin" \
  "$MS_POSTFIX_SPOOL" "$MS_DOVECOT_RUN" "$S/dovecot/state"; do
  mkdir_as "$d" root:root 755
done
mkdir_as "$S/tls" root:root 700
mkdir_as "$S/postfix/data" postfix:postfix 700
mkdir_as "$S/dkim" opendkim:opendkim 700
mkdir_as "$MS_RUN/opendkim" opendkim:opendkim 755
mkdir_as "$MS_RUN/opendmarc" opendmarc:opendmarc 755
mkdir_as "$MS_RUN/postgrey" postgrey:postgrey 755
mkdir_as "$MS_RUN/spamd" debian-spamd:debian-spamd 755
mkdir_as "$MS_RUN/spamass" spamass-milter:spamass-milter 755
mkdir_as "$S/spamd" debian-spamd:debian-spamd 700
mkdir_as "$MS_ETC/spamassassin" root:root 755
mkdir_as "$S/postgrey" postgrey:postgrey 700
mkdir_as "$S/mail" mail:mail 700
[[ -e $MS_LOG/daemons.out ]] || : >"$MS_LOG/daemons.out"

# ---------------------------------------------------------------------------
# What is running already? (pid file + live, non-zombie process)
# ---------------------------------------------------------------------------
declare -A RUNNING=()
for c in "${MS_COMPONENTS[@]}"; do
  if ms_pid "$c"; then RUNNING[$c]=$MS_PID; fi
done

# ---------------------------------------------------------------------------
# Ports: env > ports.env (if still free or held by our running daemon) > a
# fresh free port. Fresh ports are drawn at random below the kernel's
# ephemeral range, so they never collide with outgoing connections.
# ---------------------------------------------------------------------------
PORT_NAMES=(SUBMISSION SUBMISSIONS MX MXHOP GREY IMAP IMAPS POSTGREY SUBMISSION_LOGIN)
declare -A PORT_OWNER=([SUBMISSION]=postfix [SUBMISSIONS]=postfix [MX]=postfix
  [MXHOP]=postfix [GREY]=postfix [IMAP]=dovecot [IMAPS]=dovecot [POSTGREY]=postgrey
  [SUBMISSION_LOGIN]=postfix)
PORT_NAMES+=(EXIM)
PORT_OWNER[EXIM]=exim
declare -A STORED=()
if [[ -r $S/ports.env ]]; then
  while IFS='=' read -r k v; do
    [[ $k =~ ^MAILSTACK_[A-Z_]+$ && $v =~ ^[0-9.]+$ ]] && STORED[$k]=$v
  done <"$S/ports.env"
fi

# One line per wanted socket: NAME ADDR PORT MODE RUNNING PROTOS, in REQS;
# ALL_HELD=1 when every socket is already held by our running daemons.
REQS=''
ALL_HELD=1
req() {
  REQS+="$*"$'\n'
  [[ $4 != none && $5 == 1 ]] || ALL_HELD=0
}
port_requests() {
  local n var mode val run
  for n in "${PORT_NAMES[@]}"; do
    var=MAILSTACK_PORT_$n
    run=0
    [[ -n ${RUNNING[${PORT_OWNER[$n]}]-} ]] && run=1
    if [[ -n ${!var-} ]]; then
      mode=explicit val=${!var}
      if ! [[ $val =~ ^[0-9]+$ ]] || ((val < 1 || val > 65535)); then die "$var=$val is not a port"; fi
      # A running daemon holds its stored port; an explicit new one must be free.
      [[ ${STORED[$var]-} == "$val" ]] || run=0
    elif [[ -n ${STORED[$var]-} ]]; then
      mode=stored val=${STORED[$var]}
    else
      mode=none val=0
    fi
    req "$var" "$HOST" "$val" "$mode" "$run" tcp
  done
  run=0
  [[ -n ${RUNNING[dnsmasq]-} ]] && run=1
  if [[ -n ${MAILSTACK_DNS-} ]]; then
    [[ $MAILSTACK_DNS =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "MAILSTACK_DNS must be a 127.x.y.z address"
    [[ ${STORED[MAILSTACK_DNS]-} == "$MAILSTACK_DNS" ]] || run=0
    req MAILSTACK_DNS "$MAILSTACK_DNS" 53 explicit "$run" tcp,udp
  elif [[ -n ${STORED[MAILSTACK_DNS]-} ]]; then
    req MAILSTACK_DNS "${STORED[MAILSTACK_DNS]}" 53 stored "$run" tcp,udp
  else
    req MAILSTACK_DNS 127.53.53.53 53 stored 0 tcp,udp
  fi
}

port_requests
if ((ALL_HELD)); then
  # already up with the same ports: nothing to check
  PORTS_OUT=''
  while read -r n a p _; do
    [[ -n $n ]] || continue
    if [[ $p == 53 ]]; then PORTS_OUT+="$n $a"$'\n'; else PORTS_OUT+="$n $p"$'\n'; fi
  done <<<"$REQS"
else
  PORTS_OUT=$("$PY" -c '
import random, socket, sys

def free(addr, port, protos):
    """True when addr:port can be bound (TIME_WAIT leftovers do not count)."""
    for proto in protos.split(","):
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
        except OSError:
            return False
        finally:
            s.close()
    return True

with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    eph_lo = int(f.read().split()[0])
hi = min(eph_lo, 32768)
lo = 20000 if hi > 21000 else 10000
taken, out, err = set(), [], []
reqs = [l.split() for l in sys.stdin if l.strip()]
# explicit and stored values first, so fresh picks avoid them
for name, addr, port, mode, running, protos in reqs:
    if mode != "none":
        taken.add((addr, int(port)))
for name, addr, port, mode, running, protos in reqs:
    port = int(port)
    if mode == "explicit":
        if running == "1" or free(addr, port, protos):
            out.append((name, addr, port)); continue
        err.append("%s=%s: %s:%d is already in use" % (name, addr if port == 53 else port, addr, port)); continue
    if mode == "stored" and (running == "1" or free(addr, port, protos)):
        out.append((name, addr, port)); continue
    if port == 53:          # DNS: try other loopback addresses, same port
        for i in range(54, 100):
            cand = "127.53.53.%d" % i
            if (cand, 53) not in taken and free(cand, 53, protos):
                taken.add((cand, 53)); out.append((name, cand, 53)); break
        else:
            err.append("%s: no free 127.53.53.x:53 found" % name)
        continue
    for _ in range(500):
        cand = random.randrange(lo, hi)
        if (addr, cand) not in taken and free(addr, cand, protos):
            taken.add((addr, cand)); out.append((name, addr, cand)); break
    else:
        err.append("%s: no free port found" % name)
for e in err:
    print("ERROR", e)
for name, addr, port in out:
    print(name, addr if port == 53 else port)
' <<<"$REQS") || die "port selection failed"
fi
declare -A P=()
errors=''
while read -r k v; do
  [[ -n $k ]] || continue
  if [[ $k == ERROR ]]; then errors+="$v; "; else P[$k]=$v; fi
done <<<"$PORTS_OUT"
[[ -z $errors ]] || die "${errors%; }"
P_SUB=${P[MAILSTACK_PORT_SUBMISSION]}
P_SUBS=${P[MAILSTACK_PORT_SUBMISSIONS]}
P_MX=${P[MAILSTACK_PORT_MX]}
P_HOP=${P[MAILSTACK_PORT_MXHOP]}
P_GREY=${P[MAILSTACK_PORT_GREY]}
P_IMAP=${P[MAILSTACK_PORT_IMAP]}
P_IMAPS=${P[MAILSTACK_PORT_IMAPS]}
P_PG=${P[MAILSTACK_PORT_POSTGREY]}
P_SUBL=${P[MAILSTACK_PORT_SUBMISSION_LOGIN]}
P_EXIM=${P[MAILSTACK_PORT_EXIM]}
DNS=${P[MAILSTACK_DNS]}
# All ports must differ from each other.
declare -A seen_port=()
for p in "$P_SUB" "$P_SUBS" "$P_MX" "$P_HOP" "$P_GREY" "$P_IMAP" "$P_IMAPS" "$P_PG" "$P_SUBL" "$P_EXIM"; do
  [[ -z ${seen_port[$p]-} ]] || die "port $p is used twice (check the MAILSTACK_PORT_* variables)"
  seen_port[$p]=1
done
[[ $P_HOP != 25 ]] || die "MAILSTACK_PORT_MXHOP must not be 25 (Postfix refuses to relay to itself on port 25)"

# ---------------------------------------------------------------------------
# write_file COMPONENT PATH [MODE [OWNER]] < content
# Replaces PATH only when the content differs, marks COMPONENT as changed,
# and backdates the file by 10 s: Postfix commands pause in 300 ms steps
# ("cool down") while main.cf is younger than about a second.
# ---------------------------------------------------------------------------
declare -A CHANGED=()
BACKDATE=$((${EPOCHREALTIME%.*} - 10))
write_file() {
  local comp=$1 path=$2 mode=${3:-644} owner=${4:-root:root} new='' old=''
  IFS= read -r -d '' new || true          # all of stdin (builtin, no fork)
  if [[ -f $path ]]; then
    IFS= read -r -d '' old <"$path" || true
    [[ $new == "$old" ]] && return 0
  fi
  printf '%s' "$new" >"$path.new"
  chmod "$mode" "$path.new"
  chown "$owner" "$path.new"
  touch -d "@$BACKDATE" "$path.new"
  mv -f "$path.new" "$path"
  CHANGED[$comp]=1
}

# ---------------------------------------------------------------------------
# Keys: a private CA + server certificate (EC P-256, 10 years) and the DKIM
# RSA-2048 key, created once. Generated in parallel.
# ---------------------------------------------------------------------------
gen_tls() {
  local d=$S/tls
  umask 077
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$d/ca.key.new" -out "$d/ca.pem.new" -days 3650 \
    -subj "/O=mailloop/CN=mailloop mailstack test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$d/server.key.new" -out "$d/server.csr" \
    -subj "/O=mailloop/CN=$MX_NAME" 2>/dev/null
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement" \
    "extendedKeyUsage=serverAuth" \
    "subjectKeyIdentifier=hash" \
    "authorityKeyIdentifier=keyid" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:$MX_NAME,DNS:$SUBMIT_NAME" \
    >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem.new" -CAkey "$d/ca.key.new" \
    -set_serial "0x$(openssl rand -hex 12)" -days 3649 -sha256 \
    -extfile "$d/server.ext" -out "$d/server.pem.new" 2>/dev/null
  rm -f "$d/server.csr" "$d/server.ext"
  chmod 644 "$d/ca.pem.new" "$d/server.pem.new"
  mv -f "$d/ca.key.new" "$d/ca.key"
  mv -f "$d/server.key.new" "$d/server.key"
  mv -f "$d/server.pem.new" "$d/server.pem"
  mv -f "$d/ca.pem.new" "$d/ca.pem"   # last: its presence means "done"
}
gen_dkim() {
  local k=$S/dkim/$DKIM_SELECTOR.private
  openssl genrsa -out "$k.new" 2048 2>/dev/null
  chown opendkim:opendkim "$k.new"
  chmod 600 "$k.new"       # OpenDKIM refuses group/world-readable keys
  mv -f "$k.new" "$k"
}
pids_gen=()
if [[ ! -s $S/tls/ca.pem || ! -s $S/tls/server.pem || ! -s $S/tls/server.key ]]; then
  say "creating CA and server certificate"
  gen_tls &
  pids_gen+=($!)
fi
if [[ ! -s $S/dkim/$DKIM_SELECTOR.private ]]; then
  say "creating DKIM key"
  gen_dkim &
  pids_gen+=($!)
fi
for p in "${pids_gen[@]}"; do wait "$p" || die "key generation failed"; done
CA_FILE=$S/tls/ca.pem
# Derived values, cached next to the keys: the DKIM public key (for the TXT
# record) and the certificate fingerprint (written into the configs, so a
# new certificate makes Postfix/Dovecot reload).
DKIM_PUB_FILE=$S/dkim/$DKIM_SELECTOR.pub.b64
if [[ ! -s $DKIM_PUB_FILE || $DKIM_PUB_FILE -ot $S/dkim/$DKIM_SELECTOR.private ]]; then
  openssl rsa -in "$S/dkim/$DKIM_SELECTOR.private" -pubout -outform DER 2>/dev/null |
    base64 -w0 >"$DKIM_PUB_FILE"
fi
DKIM_PUB=''
read -r DKIM_PUB <"$DKIM_PUB_FILE" || true
[[ -n $DKIM_PUB ]] || die "cannot read the DKIM key $S/dkim/$DKIM_SELECTOR.private"
TLS_FP_FILE=$S/tls/server.fingerprint
if [[ ! -s $TLS_FP_FILE || $TLS_FP_FILE -ot $S/tls/server.pem ]]; then
  openssl x509 -in "$S/tls/server.pem" -noout -fingerprint -sha256 >"$TLS_FP_FILE"
fi
TLS_SUM=''
read -r TLS_SUM <"$TLS_FP_FILE" || true
TLS_SUM=${TLS_SUM##*=}
TLS_SUM=${TLS_SUM//:/}

# ---------------------------------------------------------------------------
# Syslog sink: opendkim, opendmarc, postgrey and policyd-spf only log via
# syslog(3) and this machine has no syslog daemon. The sink binds /dev/log
# (only when no live syslog socket is there) and writes microsecond-stamped
# lines to log/syslog.log.
# ---------------------------------------------------------------------------
write_file syslog "$S/bin/syslog-sink.py" 755 <<'PY'
#!/usr/bin/python3
"""Minimal syslog receiver: AF_UNIX datagrams on a socket -> log file."""
import datetime, os, re, signal, socket, sys

sock_path, log_path, pid_path = sys.argv[1:4]
PRI = re.compile(rb"^<\d{1,3}>")
STAMP = re.compile(rb"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sock_path)
os.chmod(sock_path, 0o666)
log = open(log_path, "ab", buffering=0)
with open(pid_path + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(pid_path + ".tmp", pid_path)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
try:
    while True:
        msg = STAMP.sub(b"", PRI.sub(b"", s.recv(65536))).rstrip(b"\n\0")
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f ")
        log.write(now.encode() + msg + b"\n")
finally:
    try:
        if os.stat(sock_path).st_ino == os.fstat(s.fileno()).st_ino:
            os.unlink(sock_path)
    except OSError:
        pass
PY

# Is /dev/log a live socket of somebody else? (connect succeeds only if a
# process is bound to it.)
devlog_live() {
  "$PY" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    s.connect("/dev/log")
except OSError:
    sys.exit(1)
' 2>/dev/null
}

start_syslog() {
  if [[ -e /dev/log || -L /dev/log ]]; then
    if devlog_live; then
      say "a syslog daemon owns /dev/log: opendkim/opendmarc/postgrey/policyd-spf log there"
      rm -f "$MS_RUN/devlog.created"
      return 0
    fi
    rm -f /dev/log   # stale socket nobody listens on
  fi
  rm -f "${MS_PIDFILE[syslog]}"
  setsid "$PY" "$S/bin/syslog-sink.py" /dev/log "$MS_LOG/syslog.log" "${MS_PIDFILE[syslog]}" \
    </dev/null >>"$MS_LOG/daemons.out" 2>&1 9>&- &
  # remember that we created /dev/log (down.sh removes it only then)
  local tries=100
  while ((tries-- > 0)); do
    [[ -S /dev/log && -s ${MS_PIDFILE[syslog]} ]] && break
    sleep 0.02
  done
  stat -c %i /dev/log >"$MS_RUN/devlog.created" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# DNS: dnsmasq with the fake zone. resolv.conf for the private mount
# namespaces of the resolving daemons, unbound config for OpenDKIM.
# ---------------------------------------------------------------------------
# SPF lookup-budget zones for mailloop's SPF walk tests (RFC 7208 §4.6.4):
# spfN.test needs N DNS lookups (N includes of one-line leaf records; spf3
# uses two includes and an "a"), spfloop.test includes itself through a
# second record, spfvoid.test makes three void lookups (limit 2).
spf_budget_zone() {
  local n=$1 domain="spf$1.test" terms="" i
  for ((i = 1; i <= n; i++)); do
    terms+="include:i$i.$domain "
    echo "txt-record=i$i.$domain,\"v=spf1 ip4:127.0.0.1 -all\""
  done
  echo "txt-record=$domain,\"v=spf1 ${terms}-all\""
}
SPF_ZONES=$(
  echo "txt-record=spf3.test,\"v=spf1 include:i1.spf3.test include:i2.spf3.test a -all\""
  echo "txt-record=i1.spf3.test,\"v=spf1 ip4:127.0.0.1 -all\""
  echo "txt-record=i2.spf3.test,\"v=spf1 ip4:127.0.0.1 -all\""
  echo "host-record=spf3.test,127.0.0.1"
  for n in 9 10 11; do spf_budget_zone "$n"; done
  echo "txt-record=spfloop.test,\"v=spf1 include:loop2.spfloop.test -all\""
  echo "txt-record=loop2.spfloop.test,\"v=spf1 include:spfloop.test -all\""
  echo "txt-record=spfvoid.test,\"v=spf1 a:nx1.spfvoid.test a:nx2.spfvoid.test a:nx3.spfvoid.test -all\""
)

# DKIM public key as TXT; dnsmasq splits long strings into 255-byte chunks.
mkdir_as "$MS_ETC/dnsbl.d" root:root 755
write_file dnsmasq "$MS_ETC/dnsmasq.conf" <<EOF
# dnsmasq for the mailloop test stack: authoritative-ish fake .test zone.
port=53
listen-address=$DNS
bind-interfaces
no-resolv
no-hosts
no-poll
no-negcache
local=/test/
pid-file=$MS_RUN/dnsmasq.pid
log-facility=$MS_LOG/dnsmasq.log
log-queries
# MX and hosts
mx-host=$RCPT_DOMAIN,$MX_NAME,10
mx-host=$GREY_DOMAIN,$MX_NAME,10
mx-host=$SENDER_DOMAIN,$SUBMIT_NAME,10
host-record=$MX_NAME,127.0.0.1
host-record=$SUBMIT_NAME,127.0.0.1
# SPF (envelope domain and HELO name), DKIM, DMARC of the sender
txt-record=$SENDER_DOMAIN,"v=spf1 ip4:127.0.0.0/8 -all"
txt-record=$SUBMIT_NAME,"v=spf1 ip4:127.0.0.0/8 -all"
txt-record=$RCPT_DOMAIN,"v=spf1 ip4:127.0.0.0/8 -all"
txt-record=$MX_NAME,"v=spf1 ip4:127.0.0.0/8 -all"
txt-record=$DKIM_SELECTOR._domainkey.$SENDER_DOMAIN,"v=DKIM1; h=sha256; k=rsa; p=$DKIM_PUB"
txt-record=_dmarc.$SENDER_DOMAIN,"v=DMARC1; p=reject; adkim=s; aspf=s"
# negative case: spoofed.test allows only 192.0.2.1, has no DKIM key
mx-host=spoofed.test,mail.spoofed.test,10
host-record=mail.spoofed.test,192.0.2.1
txt-record=spoofed.test,"v=spf1 ip4:192.0.2.1 -all"
txt-record=_dmarc.spoofed.test,"v=DMARC1; p=reject"
# SPF lookup budgets (see spf_budget_zone above)
$SPF_ZONES
# Blocklists (mailloop's [check.blocklists]): dnsbl.test for addresses,
# dbl.test for domains. 127.0.0.2, the address every DNSBL lists as its
# test point, and the domain listed.test are listed for good; the listing
# codes of anything else come from files in hostsdir, which dnsmasq reads
# again by itself when one is added, changed or removed, so a test lists
# and delists an address by writing and removing its own file there.
host-record=2.0.0.127.dnsbl.test,127.0.0.2
txt-record=2.0.0.127.dnsbl.test,"Listed by the mailloop test stack: the DNSBL test point"
host-record=listed.test.dbl.test,127.0.1.2
txt-record=listed.test.dbl.test,"Listed by the mailloop test stack: a test domain"
txt-record=1.0.0.127.dnsbl.test,"Listed by the mailloop test stack: its outbound relay 127.0.0.1"
hostsdir=$MS_ETC/dnsbl.d
EOF

write_file resolv "$MS_ETC/resolv.conf" <<EOF
# bind-mounted over /etc/resolv.conf inside the private mount namespaces
# of postfix (policyd-spf), opendkim and opendmarc only
nameserver $DNS
options timeout:1 attempts:2
EOF

# libunbound (OpenDKIM) refuses to query 127.0.0.0/8 and answers "test."
# itself (RFC 6761) unless told otherwise. No trust anchor: zone is unsigned.
write_file opendkim "$MS_ETC/unbound.conf" <<EOF
server:
  do-not-query-localhost: no
  module-config: "iterator"
  local-zone: "test." nodefault
  do-ip6: no
forward-zone:
  name: "."
  forward-addr: $DNS
EOF

# run_in_ns CMD... : run CMD in a private mount namespace where
# /etc/resolv.conf is our file; the real /etc/resolv.conf is never touched.
run_in_ns() {
  # shellcheck disable=SC2016 # $0/$@ are expanded by the inner sh
  unshare -m --propagation private -- /bin/sh -c \
    'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$MS_ETC/resolv.conf" "$@"
}

# ---------------------------------------------------------------------------
# OpenDKIM: one instance. Mail from the submission services (milter macro
# {daemon_name}=ORIGINATING) is signed for sender.test; everything else is
# verified (InternalHosts must not contain 127.0.0.1, which is the default).
# ---------------------------------------------------------------------------
write_file opendkim "$MS_ETC/opendkim.conf" <<EOF
Syslog                  yes
SyslogSuccess           yes
LogWhy                  yes
Background              yes
# A filter that dies takes every message of its ports with it (Postfix
# answers 451 4.7.1 "Service unavailable" while milter_default_action is
# tempfail), so a crash is restarted by the filter's own parent and logged
# ("automatic restart"); more than 10 a minute and it gives up.
AutoRestart             yes
AutoRestartRate         10/1m
UserID                  opendkim:opendkim
UMask                   000
Socket                  local:$MS_RUN/opendkim/opendkim.sock
PidFile                 $MS_RUN/opendkim/opendkim.pid
Mode                    sv
MTA                     ORIGINATING
InternalHosts           csl:192.0.2.1
Domain                  $SENDER_DOMAIN
Selector                $DKIM_SELECTOR
KeyFile                 $S/dkim/$DKIM_SELECTOR.private
Canonicalization        relaxed/relaxed
SignatureAlgorithm      rsa-sha256
OversignHeaders         From
AuthservID              $MX_NAME
ResolverConfiguration   $MS_ETC/unbound.conf
# key marker (a new key restarts opendkim): ${DKIM_PUB: -24}
EOF

# OpenDKIM loads ResolverConfiguration into a new libunbound context for
# every message, and libunbound's config parser is not thread-safe: under
# parallel submissions the filter segfaulted or tempfailed everything (see
# ub_config_lock.c). A preloaded mutex serialises those parses.
UB_LOCK=$S/lib/ub_config_lock.so
mkdir_as "$S/lib" root:root 755
if [[ ! -s $UB_LOCK ]] || ! cmp -s "$HERE/ub_config_lock.c" "$S/lib/ub_config_lock.c"; then
  gcc -shared -fPIC -O2 -Wall -o "$UB_LOCK.new" "$HERE/ub_config_lock.c" -ldl -lpthread \
    || die "cannot build $UB_LOCK (gcc and libc6-dev: run tests/mailstack/install.sh)"
  cp "$HERE/ub_config_lock.c" "$S/lib/ub_config_lock.c"
  mv -f "$UB_LOCK.new" "$UB_LOCK"
  CHANGED[opendkim]=1
fi

# ---------------------------------------------------------------------------
# OpenDMARC: reads the SPF (policyd-spf) and DKIM (OpenDKIM) results from
# Authentication-Results headers with our authserv-id. Loopback is ignored
# by default (IgnoreHosts); point that at an unused address instead.
# ---------------------------------------------------------------------------
write_file opendmarc "$MS_ETC/opendmarc.ignore" <<EOF
192.0.2.1
EOF
write_file opendmarc "$MS_ETC/opendmarc.conf" <<EOF
Syslog                  true
SyslogFacility          mail
Background              true
# Restarted by its own parent when it dies, as OpenDKIM above.
AutoRestart             true
AutoRestartRate         10/1m
UserID                  opendmarc:opendmarc
UMask                   000
Socket                  local:$MS_RUN/opendmarc/opendmarc.sock
PidFile                 $MS_RUN/opendmarc/opendmarc.pid
AuthservID              $MX_NAME
TrustedAuthservIDs      $MX_NAME
IgnoreHosts             $MS_ETC/opendmarc.ignore
IgnoreAuthenticatedClients true
RejectFailures          false
FailureReports          false
SPFSelfValidate         false
SPFIgnoreResults        false
RequiredHeaders         false
EOF

# ---------------------------------------------------------------------------
# SpamAssassin: spamd (local tests only: -L, no DNS/network rules) behind
# spamass-milter on the inbound smtpd ports. The milter only adds the
# X-Spam-* headers (-m: body, Subject and Content-Type untouched) and never
# rejects; Dovecot's Sieve files X-Spam-Flag: YES into Junk. The site config
# is the Debian one (plugin .pre files) plus our local.cf: no Bayes, no
# auto-learning, nothing written to disk.
# ---------------------------------------------------------------------------
for f in /etc/spamassassin/*.pre; do
  write_file spamd "$MS_ETC/spamassassin/${f##*/}" <"$f"
done
write_file spamd "$MS_ETC/spamassassin/local.cf" <<EOF
required_score 5.0
report_safe 0
use_bayes 0
bayes_auto_learn 0
# One sending path with a bad reputation: mail submitted from 127.0.0.66
# (a test region's own submission address) scores as spam. It stands in
# for the DNS blocklist rules that -L switches off.
header MAILSTACK_BAD_PATH Received =~ /\[127\.0\.0\.66\]/
describe MAILSTACK_BAD_PATH Submitted from the test stack's bad-reputation address 127.0.0.66
score MAILSTACK_BAD_PATH 10.0
EOF
SPAMD_ARGS=(
  -L -x -u debian-spamd -H "$S/spamd" --siteconfigpath="$MS_ETC/spamassassin"
  --socketpath="$MS_RUN/spamd/spamd.sock" --socketowner=debian-spamd --socketmode=0666
  -r "${MS_PIDFILE[spamd]}" -s "$MS_LOG/spamd.log" -d
  --min-children=1 --max-children=3 --min-spare=1 --max-spare=2
)
SPAMASS_ARGS=(
  -p "$MS_RUN/spamass/spamass.sock" -P "${MS_PIDFILE[spamass]}" -f -m
  -- -U "$MS_RUN/spamd/spamd.sock"
)
printf -v sa_args '%s\n' "${SPAMD_ARGS[@]}"
write_file spamd "$MS_ETC/spamassassin/spamd.args" <<<"$sa_args"
printf -v sa_args '%s\n' "${SPAMASS_ARGS[@]}"
write_file spamass "$MS_ETC/spamassassin/spamass-milter.args" <<<"$sa_args"

# ---------------------------------------------------------------------------
# policyd-spf: annotate only (never reject), Authentication-Results header
# with our authserv-id; do not skip loopback (default skip_addresses does).
# An empty skip_addresses crashes it, hence a TEST-NET address.
# ---------------------------------------------------------------------------
write_file postfix "$MS_ETC/policyd-spf.conf" <<EOF
debugLevel = 1
TestOnly = 1
HELO_reject = False
Mail_From_reject = False
PermError_reject = False
TempError_Defer = False
skip_addresses = 192.0.2.255/32
Header_Type = AR
Authserv_Id = $MX_NAME
EOF

# ---------------------------------------------------------------------------
# postgrey: greylist every new triplet for GREY_DELAY seconds; no automatic
# whitelisting of 127.0.0.1; empty whitelists (the Debian ones list real
# mail providers only, but keep the test deterministic).
# ---------------------------------------------------------------------------
write_file postgrey "$MS_ETC/postgrey/whitelist_clients" </dev/null
write_file postgrey "$MS_ETC/postgrey/whitelist_recipients" </dev/null
POSTGREY_ARGS=(
  --inet="$HOST:$P_PG" --delay="$GREY_DELAY" --auto-whitelist-clients=0
  --dbdir="$S/postgrey" --pidfile="${MS_PIDFILE[postgrey]}" --daemonize
  --user=postgrey --group=postgrey --hostname="$MX_NAME"
  --whitelist-clients="$MS_ETC/postgrey/whitelist_clients"
  --whitelist-recipients="$MS_ETC/postgrey/whitelist_recipients"
)
printf -v pg_args '%s\n' "${POSTGREY_ARGS[@]}"
write_file postgrey "$MS_ETC/postgrey/args" <<<"$pg_args"

# ---------------------------------------------------------------------------
# Dovecot
# ---------------------------------------------------------------------------
mkdir_as "$MS_ETC/sieve" root:root 755
write_file dovecot "$MS_ETC/sieve/junk.sieve" <<'EOF'
# mailloop test stack: file what SpamAssassin flagged as spam into Junk.
require ["fileinto"];
if header :contains "X-Spam-Flag" "YES" {
  fileinto "Junk";
  stop;
}
EOF
# Dovecot cannot write the compiled script here (the delivering user is
# "mail"): compile it now, readable by everyone.
if [[ ! -s $MS_ETC/sieve/junk.svbin || $MS_ETC/sieve/junk.sieve -nt $MS_ETC/sieve/junk.svbin ]]; then
  sievec "$MS_ETC/sieve/junk.sieve" >>"$MS_LOG/daemons.out" 2>&1 || die "sievec $MS_ETC/sieve/junk.sieve failed (see $MS_LOG/daemons.out)"
  chmod 644 "$MS_ETC/sieve/junk.svbin"
fi

# ---------------------------------------------------------------------------
# OAuth2 bearer tokens (XOAUTH2, OAUTHBEARER) for IMAP and, through Dovecot
# SASL, for submission. Tokens are JWTs validated locally: the key of a JWT
# whose header names kid K (and no azp) is read from
# $OAUTH2_KEYS/default/<alg>/K, base64 of the secret. The stack creates no
# key: each test writes its own (a random kid), so tests cannot accept each
# other's tokens. The directories are setgid dovecot: a key written by root
# is readable by the auth process and by nobody else.
# ---------------------------------------------------------------------------
OAUTH2_KEYS=$S/dovecot/oauth2-keys
mkdir_as "$OAUTH2_KEYS" root:dovecot 2750
mkdir_as "$OAUTH2_KEYS/default" root:dovecot 2750
mkdir_as "$OAUTH2_KEYS/default/HS256" root:dovecot 2750
write_file dovecot "$MS_ETC/dovecot-oauth2.conf.ext" <<EOF
# The token's "email" claim must be the login name; exp/nbf/iat are checked.
introspection_mode = local
local_validation_key_dict = fs:posix:prefix=$OAUTH2_KEYS/
username_attribute = email
EOF

write_file dovecot "$MS_ETC/dovecot.conf" <<EOF
# Dovecot for the mailloop test stack (own instance, own base_dir).
instance_name = mailloop-mailstack
base_dir = $MS_DOVECOT_RUN
state_dir = $S/dovecot/state
protocols = imap lmtp
listen = $HOST
hostname = $MX_NAME
postmaster_address = postmaster@$RCPT_DOMAIN

log_path = $MS_LOG/dovecot.log
info_log_path = $MS_LOG/dovecot.log
debug_log_path = $MS_LOG/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S.%{usecs} "
# LMTP: "msgid=<...>: saved mail to INBOX" (Dovecot's default format;
# Sieve deliveries log "sieve: msgid=<...>: stored mail into mailbox 'INBOX'")
deliver_log_format = msgid=%m: %\$
auth_verbose = yes

ssl = yes
ssl_cert = <$S/tls/server.pem
ssl_key = <$S/tls/server.key
ssl_min_protocol = TLSv1.2
# tls certificate checksum (forces a reload when keys change): $TLS_SUM

# Authentication. Failed logins must not slow down later good ones (tests
# use wrong passwords on purpose). Dovecot 2.3 answers a failure only after
# auth_failure_delay (checked in 500 ms steps even when 0) AND raises a
# per-IP "auth penalty" (2, 4, 8.. 15 s of delay before the next auth from
# that IP, for ~30 s). Both happen only in its delayed-failure path, which
# the passdb extra field "nodelay" skips - but fields of a passdb that
# *failed* are discarded. So every failure ends in a final deny passdb that
# "finds" any user (nopassword) and returns nodelay: a wrong password or an
# unknown user fails at once, without penalty. Clients still see the normal
# "NO [AUTHENTICATIONFAILED]" / SMTP 535; only the log says "user disabled".
auth_mechanisms = plain login xoauth2 oauthbearer
auth_failure_delay = 0
auth_cache_size = 0
auth_username_format = %Lu
# OAuth2 bearer tokens: the oauth2 passdb answers XOAUTH2/OAUTHBEARER only,
# and a token it refused ends in its own nodelay deny (no auth penalty), so
# a token is never compared with the static passwords below.
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $MS_ETC/dovecot-oauth2.conf.ext
}
passdb {
  driver = static
  mechanisms = xoauth2 oauthbearer
  args = nopassword=yes nodelay=yes
  deny = yes
}
passdb {
  driver = static
  args = password=$SMTP_PASS
  username_filter = $SMTP_USER
}
passdb {
  driver = static
  args = password=$IMAP_PASS
  username_filter = probe@$RCPT_DOMAIN probe-*@$RCPT_DOMAIN t-*@$RCPT_DOMAIN test-*@$RCPT_DOMAIN
}
passdb {
  driver = static
  args = nopassword=yes nodelay=yes
  deny = yes
}
userdb {
  driver = static
  args = uid=mail gid=mail home=$S/mail/%d/%n
}
first_valid_uid = 8
last_valid_uid = 8
first_valid_gid = 8
mail_location = maildir:~/Maildir
mail_max_userip_connections = 200
# Junk: created and subscribed on first login, RFC 6154 \Junk special use
# (LIST answers "(\HasNoChildren \Junk) "." Junk").
namespace inbox {
  inbox = yes
  mailbox Junk {
    special_use = \Junk
    auto = subscribe
  }
}
# Sieve at LMTP delivery: a site script run before any user script files
# mail SpamAssassin flagged (X-Spam-Flag: YES) into Junk. With Sieve the
# delivery log line reads "sieve: msgid=<...>: stored mail into mailbox 'X'".
protocol lmtp {
  mail_plugins = \$mail_plugins sieve
}
plugin {
  sieve_before = $MS_ETC/sieve/junk.sieve
}

service imap-login {
  inet_listener imap {
    address = $HOST
    port = $P_IMAP
  }
  inet_listener imaps {
    address = $HOST
    port = $P_IMAPS
    ssl = yes
  }
  # one long-lived login process, pre-started: faster logins
  service_count = 0
  process_min_avail = 1
}
service lmtp {
  unix_listener lmtp-postfix {
    user = postfix
    group = postfix
    mode = 0600
  }
}
service auth {
  unix_listener auth-postfix {
    user = postfix
    group = postfix
    mode = 0600
  }
}
protocol imap {
  mail_max_userip_connections = 200
}
EOF

# ---------------------------------------------------------------------------
# Postfix: own config dir (postfix -c), own queue dir, nothing chrooted.
# ---------------------------------------------------------------------------
RCPT_RE='(probe|probe-[a-z0-9._-]+|t-[a-z0-9._-]+|test-[a-z0-9._-]+)'
write_file postfix "$MS_POSTFIX_ETC/vmailbox" <<EOF
# Valid mailboxes (anything else at these domains: 550 User unknown).
/^$RCPT_RE@receiver\.test\$/    receiver.test/\$1/
/^probe@sender\.test\$/         sender.test/probe/
EOF
write_file postfix "$MS_POSTFIX_ETC/valias" <<EOF
# grey.receiver.test is a catch-all: a valid mailbox name keeps its mailbox,
# anything else lands in probe-grey@receiver.test.
/^$RCPT_RE@grey\.receiver\.test\$/  \$1@receiver.test
/@grey\.receiver\.test\$/           probe-grey@receiver.test
EOF
write_file postfix "$MS_POSTFIX_ETC/grey_recipients" <<EOF
# On the MX ports, recipients at grey.receiver.test are greylisted too.
/@grey\.receiver\.test\$/  greylist
EOF

SPF_POLICY="check_policy_service unix:private/policyd-spf"
write_file postfix "$MS_POSTFIX_ETC/main.cf" <<EOF
# Postfix main.cf of the mailloop test stack (generated by up.sh).
compatibility_level = 3.6
queue_directory = $MS_POSTFIX_SPOOL
data_directory = $S/postfix/data
mail_owner = postfix
setgid_group = postdrop

myhostname = $MX_NAME
mydomain = $RCPT_DOMAIN
myorigin = \$myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = $HOST
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
relayhost =
# Nothing ever leaves the machine.
default_transport = error:no delivery outside the test stack
relay_transport = error:no delivery outside the test stack
biff = no
append_dot_mydomain = no
readme_directory = no
smtpd_banner = \$myhostname ESMTP mailloop test stack

# Logging without syslog (postlogd service in master.cf), ms delays.
maillog_file = $MS_LOG/postfix.log
maillog_file_prefixes = $MS_LOG
delay_logging_resolution_limit = 3

# Mailboxes: LMTP to Dovecot.
virtual_mailbox_domains = $RCPT_DOMAIN, $SENDER_DOMAIN
virtual_mailbox_maps = regexp:$MS_POSTFIX_ETC/vmailbox
virtual_alias_domains = $GREY_DOMAIN
virtual_alias_maps = regexp:$MS_POSTFIX_ETC/valias
virtual_transport = lmtp:unix:$MS_DOVECOT_RUN/lmtp-postfix

# TLS
smtpd_tls_chain_files = $S/tls/server.key, $S/tls/server.pem
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtp_tls_security_level = may
smtp_tls_CAfile = $CA_FILE
smtp_tls_loglevel = 1
# tls certificate checksum (forces a reload when keys change): $TLS_SUM

# SASL via Dovecot (enabled on the submission services only)
smtpd_sasl_type = dovecot
smtpd_sasl_path = $MS_DOVECOT_RUN/auth-postfix
smtpd_sasl_auth_enable = no

# Inbound (MX, MX-hop): no relaying, unknown users 550, SPF annotation,
# greylisting only for grey.receiver.test.
smtpd_restriction_classes = greylist
greylist = check_policy_service inet:$HOST:$P_PG
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unlisted_recipient, reject_unauth_destination, $SPF_POLICY, check_recipient_access regexp:$MS_POSTFIX_ETC/grey_recipients
policyd-spf_time_limit = 3600
access_map_defer_code = 451
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
disable_vrfy_command = yes

# Milters over UNIX sockets: DKIM verify + DMARC + SpamAssassin inbound.
smtpd_milters = unix:$MS_RUN/opendkim/opendkim.sock, unix:$MS_RUN/opendmarc/opendmarc.sock, unix:$MS_RUN/spamass/spamass.sock
non_smtpd_milters =
milter_default_action = tempfail

# Retry quickly (greylisting behind submission), never keep mail long.
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 10s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
EOF

# Submission services share these options (587-style and 465-style): TLS
# and AUTH required, DKIM signing (milter macro daemon_name=ORIGINATING),
# then everything goes to the MX-hop unchanged (no virtual alias expansion
# here, so grey.receiver.test is greylisted at the hop, as on a real MX).
SUBMIT_OPTS="
  -o myhostname=$SUBMIT_NAME
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o { smtpd_relay_restrictions = permit_sasl_authenticated, reject }
  -o { smtpd_recipient_restrictions = reject_unlisted_recipient, permit_sasl_authenticated, reject }
  -o smtpd_milters=unix:$MS_RUN/opendkim/opendkim.sock
  -o milter_macro_daemon_name=ORIGINATING
  -o content_filter=relay-out:[$HOST]:$P_HOP
  -o receive_override_options=no_address_mappings"

write_file postfix "$MS_POSTFIX_ETC/master.cf" <<EOF
# Postfix master.cf of the mailloop test stack (generated by up.sh).
# Nothing is chrooted (column 5 = n).
# service type  private unpriv  chroot  wakeup  maxproc command + args
$HOST:$P_MX      inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/mx
$HOST:$P_HOP     inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/mxhop
$HOST:$P_GREY    inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/grey
  -o { smtpd_recipient_restrictions = reject_unlisted_recipient, reject_unauth_destination, $SPF_POLICY, greylist }
$HOST:$P_SUB     inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission$SUBMIT_OPTS
$HOST:$P_SUBS    inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes$SUBMIT_OPTS
# Like submission, but EHLO offers AUTH LOGIN only (a relay that knows no PLAIN).
$HOST:$P_SUBL    inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission-login$SUBMIT_OPTS
  -o smtpd_sasl_mechanism_filter=login
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
# submission -> MX-hop (not port 25: Postfix bounces "loops back to myself")
relay-out unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/relay-out
  -o myhostname=$SUBMIT_NAME
  -o smtp_helo_name=$SUBMIT_NAME
policyd-spf unix -      n       n       -       0       spawn
  user=policyd-spf argv=/usr/bin/policyd-spf $MS_ETC/policyd-spf.conf
EOF

# ---------------------------------------------------------------------------
# Exim, the second MTA, relaying into the MX-hop (see exim.sh)
# ---------------------------------------------------------------------------
# shellcheck source=exim.sh
. "$HERE/exim.sh"
exim_layout
exim_config

# ---------------------------------------------------------------------------
# Start / restart
# ---------------------------------------------------------------------------
DAEMONS_OUT=$MS_LOG/daemons.out

# stop_component NAME: stop one running component (used on config change).
stop_component() {
  local pid
  pid=${RUNNING[$1]-}
  [[ -n $pid ]] || return 0
  ms_stop_pids "$pid" || true
  unset "RUNNING[$1]"
}

start_dnsmasq() {
  rm -f "$MS_RUN/dnsmasq.pid"
  dnsmasq --conf-file="$MS_ETC/dnsmasq.conf" </dev/null >>"$DAEMONS_OUT" 2>&1 9>&- \
    || { ms_tail "$DAEMONS_OUT" 5; die "dnsmasq failed to start"; }
}
start_opendkim() {
  rm -f "$MS_RUN/opendkim/opendkim.sock" "$MS_RUN/opendkim/opendkim.pid"
  run_in_ns env LD_PRELOAD="$UB_LOCK" opendkim -x "$MS_ETC/opendkim.conf" </dev/null >>"$DAEMONS_OUT" 2>&1 9>&-
}
start_opendmarc() {
  rm -f "$MS_RUN/opendmarc/opendmarc.sock" "$MS_RUN/opendmarc/opendmarc.pid"
  run_in_ns opendmarc -c "$MS_ETC/opendmarc.conf" </dev/null >>"$DAEMONS_OUT" 2>&1 9>&-
}
start_spamd() {
  rm -f "$MS_RUN/spamd/spamd.sock" "${MS_PIDFILE[spamd]}"
  spamd "${SPAMD_ARGS[@]}" </dev/null >>"$DAEMONS_OUT" 2>&1 9>&-
}
start_spamass() {
  rm -f "$MS_RUN/spamass/spamass.sock" "${MS_PIDFILE[spamass]}"
  # umask 000: Postfix (another user) must connect to the socket
  (umask 000 && exec setpriv --reuid=spamass-milter --regid=spamass-milter --init-groups \
    spamass-milter "${SPAMASS_ARGS[@]}" </dev/null >>"$DAEMONS_OUT" 2>&1 9>&-)
}
start_postgrey() {
  rm -f "${MS_PIDFILE[postgrey]}"
  postgrey "${POSTGREY_ARGS[@]}" </dev/null >>"$DAEMONS_OUT" 2>&1 9>&-
}
start_dovecot() {
  dovecot -c "$MS_ETC/dovecot.conf" </dev/null >>"$DAEMONS_OUT" 2>&1 9>&-
}
start_postfix() {
  # "postfix check" creates the queue subdirectories with the right owners;
  # needed only once (or after the spool was damaged).
  if [[ ! -d $MS_POSTFIX_SPOOL/maildrop || ! -d $MS_POSTFIX_SPOOL/private ]]; then
    postfix -c "$MS_POSTFIX_ETC" check </dev/null >>"$DAEMONS_OUT" 2>&1 9>&- || true
  fi
  run_in_ns postfix -c "$MS_POSTFIX_ETC" start </dev/null >>"$DAEMONS_OUT" 2>&1 9>&-
}

# DNS address changes: the resolving daemons must be restarted (their
# bind mount pins the old file).
if [[ -n ${CHANGED[resolv]-} ]]; then
  CHANGED[opendkim]=1 CHANGED[opendmarc]=1 CHANGED[postfix-restart]=1
fi

started=()
reloaded=()
# 1. syslog sink and dnsmasq first: the others log/resolve through them.
if [[ -n ${RUNNING[syslog]-} && -n ${CHANGED[syslog]-} ]]; then stop_component syslog; fi
if [[ -z ${RUNNING[syslog]-} ]]; then start_syslog; started+=(syslog); fi
if [[ -n ${RUNNING[dnsmasq]-} && -n ${CHANGED[dnsmasq]-} ]]; then stop_component dnsmasq; fi
if [[ -z ${RUNNING[dnsmasq]-} ]]; then start_dnsmasq; started+=(dnsmasq); fi

# 2. milters, postgrey, dovecot, postfix - in parallel (each daemonizes).
bg=()
for c in opendkim opendmarc spamd spamass postgrey exim; do
  if [[ -n ${RUNNING[$c]-} && -n ${CHANGED[$c]-} ]]; then stop_component "$c"; fi
  if [[ -z ${RUNNING[$c]-} ]]; then
    "start_$c" &
    bg+=("$c:$!")
    started+=("$c")
  fi
done
if [[ -n ${RUNNING[dovecot]-} && -n ${CHANGED[dovecot]-} ]]; then
  say "dovecot configuration changed: reloading"
  kill -HUP "${RUNNING[dovecot]}"
  reloaded+=(dovecot)
fi
if [[ -z ${RUNNING[dovecot]-} ]]; then
  rm -f "$MS_DOVECOT_RUN/master.pid"
  start_dovecot &
  bg+=("dovecot:$!")
  started+=(dovecot)
fi
if [[ -n ${RUNNING[postfix]-} && -n ${CHANGED[postfix-restart]-} ]]; then stop_component postfix; fi
if [[ -n ${RUNNING[postfix]-} && -n ${CHANGED[postfix]-} ]]; then
  say "postfix configuration changed: reloading"
  postfix -c "$MS_POSTFIX_ETC" reload </dev/null >>"$DAEMONS_OUT" 2>&1 9>&-
  reloaded+=(postfix)
fi
if [[ -z ${RUNNING[postfix]-} ]]; then
  start_postfix &
  bg+=("postfix:$!")
  started+=(postfix)
fi
failed_start=()
for item in "${bg[@]}"; do
  wait "${item#*:}" || failed_start+=("${item%%:*}")
done

# ---------------------------------------------------------------------------
# Readiness: every daemon must be alive and have its sockets.
# ---------------------------------------------------------------------------
# Expected sockets per component: tcp:ADDR:PORT, udp:ADDR:PORT, unix:PATH.
declare -A EXPECT=(
  [syslog]=''
  [dnsmasq]="tcp:$DNS:53 udp:$DNS:53"
  [opendkim]="unix:$MS_RUN/opendkim/opendkim.sock"
  [opendmarc]="unix:$MS_RUN/opendmarc/opendmarc.sock"
  [spamd]="unix:$MS_RUN/spamd/spamd.sock"
  [spamass]="unix:$MS_RUN/spamass/spamass.sock"
  [postgrey]="tcp:$HOST:$P_PG"
  [dovecot]="tcp:$HOST:$P_IMAP tcp:$HOST:$P_IMAPS unix:$MS_DOVECOT_RUN/auth-postfix unix:$MS_DOVECOT_RUN/lmtp-postfix"
  [postfix]="tcp:$HOST:$P_MX tcp:$HOST:$P_HOP tcp:$HOST:$P_GREY tcp:$HOST:$P_SUB tcp:$HOST:$P_SUBS"
)
EXPECT[exim]="tcp:$HOST:$P_EXIM"
[[ -f $MS_RUN/devlog.created ]] && EXPECT[syslog]="unix:/dev/log"
# the log to show when a component fails
declare -A LOG_OF=(
  [syslog]=$DAEMONS_OUT [dnsmasq]=$MS_LOG/dnsmasq.log [opendkim]=$MS_LOG/syslog.log
  [opendmarc]=$MS_LOG/syslog.log [postgrey]=$MS_LOG/syslog.log
  [spamd]=$MS_LOG/spamd.log [spamass]=$MS_LOG/syslog.log
  [dovecot]=$MS_LOG/dovecot.log [postfix]=$MS_LOG/postfix.log
)
LOG_OF[exim]=$EXIM_LOG_DIR/mainlog
# refresh_listen: LISTEN = " tcp:ADDR:PORT udp:ADDR:PORT ... " (one ss call)
refresh_listen() {
  local netid local_addr rest
  LISTEN=' '
  while read -r netid _ _ _ local_addr rest; do
    LISTEN+="$netid:$local_addr "
  done < <(ss -Hltun)
}
# missing_sockets COMPONENT: sets MISSING to the expected sockets not there
missing_sockets() {
  local e
  MISSING=''
  for e in ${EXPECT[$1]}; do
    case $e in
      unix:*) [[ -S ${e#unix:} ]] || MISSING+="$e " ;;
      *) [[ $LISTEN == *" $e "* ]] || MISSING+="$e " ;;
    esac
  done
  [[ -z $MISSING ]]
}
component_ready() {
  [[ $1 == syslog && ! -f $MS_RUN/devlog.created ]] && return 0
  ms_pid "$1" || return 1
  missing_sockets "$1"
}

pending=("${MS_COMPONENTS[@]}")
ticks=$((UP_TIMEOUT * 20))
while :; do
  refresh_listen
  still=()
  for c in "${pending[@]}"; do component_ready "$c" || still+=("$c"); done
  pending=("${still[@]}")
  ((${#pending[@]})) || break
  # a start command that failed and left no live daemon: stop waiting
  for c in "${failed_start[@]}"; do
    if [[ " ${pending[*]} " == *" $c "* ]] && ! ms_pid "$c"; then ticks=0; fi
  done
  ((ticks-- > 0)) || break
  sleep 0.05
done

if ((${#pending[@]})); then
  echo "up.sh: ERROR: not up after ${UP_TIMEOUT}s (or its start command failed): ${pending[*]}" >&2
  for c in "${pending[@]}"; do
    if ms_pid "$c"; then
      missing_sockets "$c" || true
      echo "  $c: pid $MS_PID alive, but not listening on: $MISSING" >&2
    else
      echo "  $c: not running" >&2
    fi
    ms_tail "${LOG_OF[$c]}" 12
  done
  ms_tail "$DAEMONS_OUT" 10
  echo "up.sh: the stack is partly up; tests/mailstack/down.sh stops it" >&2
  exit 1
fi

# ---------------------------------------------------------------------------
# stack.env and ports.env
# ---------------------------------------------------------------------------
ports_env=''
for n in "${PORT_NAMES[@]}"; do ports_env+="MAILSTACK_PORT_$n=${P[MAILSTACK_PORT_$n]}"$'\n'; done
ports_env+="MAILSTACK_DNS=$DNS"
write_file state "$S/ports.env" <<<"$ports_env"

write_file state "$S/stack.env" <<EOF
MAILSTACK_STATE=$S
MAILSTACK_HOST=$HOST
MAILSTACK_PORT_SUBMISSION=$P_SUB
MAILSTACK_PORT_SUBMISSIONS=$P_SUBS
MAILSTACK_PORT_MX=$P_MX
MAILSTACK_PORT_MXHOP=$P_HOP
MAILSTACK_PORT_GREY=$P_GREY
MAILSTACK_PORT_IMAP=$P_IMAP
MAILSTACK_PORT_IMAPS=$P_IMAPS
MAILSTACK_PORT_POSTGREY=$P_PG
MAILSTACK_PORT_SUBMISSION_LOGIN=$P_SUBL
MAILSTACK_CA_FILE=$CA_FILE
MAILSTACK_SMTP_USER=$SMTP_USER
MAILSTACK_SMTP_PASS=$SMTP_PASS
MAILSTACK_IMAP_USER=probe@$RCPT_DOMAIN
MAILSTACK_IMAP_PASS=$IMAP_PASS
MAILSTACK_RCPT_DOMAIN=$RCPT_DOMAIN
MAILSTACK_GREY_DOMAIN=$GREY_DOMAIN
MAILSTACK_SENDER_DOMAIN=$SENDER_DOMAIN
MAILSTACK_AUTHSERV_ID=$MX_NAME
MAILSTACK_DNS=$DNS
MAILSTACK_GREY_DELAY=$GREY_DELAY
MAILSTACK_DOVECOT_LOG=$MS_LOG/dovecot.log
MAILSTACK_POSTFIX_LOG=$MS_LOG/postfix.log
MAILSTACK_SYSLOG_LOG=$MS_LOG/syslog.log
MAILSTACK_SPAMD_LOG=$MS_LOG/spamd.log
MAILSTACK_DNSMASQ_LOG=$MS_LOG/dnsmasq.log
MAILSTACK_DNSBL_DIR=$MS_ETC/dnsbl.d
MAILSTACK_MAIL_DIR=$S/mail
MAILSTACK_OAUTH2_KEY_DIR=$OAUTH2_KEYS/default/HS256
MAILSTACK_PORT_EXIM=$P_EXIM
MAILSTACK_EXIM_LOG=$EXIM_LOG_DIR/mainlog
EOF

what="already up"
((${#started[@]})) && what="started: ${started[*]}"
((${#reloaded[@]})) && what="$what; reloaded: ${reloaded[*]}"
cat <<EOF
up.sh: mail stack up in $(elapsed) ($what)
  submission   $HOST:$P_SUB  (STARTTLS + AUTH, user $SMTP_USER / $SMTP_PASS)
  submissions  $HOST:$P_SUBS  (implicit TLS + AUTH)
  submission   $HOST:$P_SUBL  (as above, AUTH LOGIN only)
  MX           $HOST:$P_MX  (receiver.test, no auth)   MX-hop $HOST:$P_HOP
  greylist MX  $HOST:$P_GREY  (451 for ${GREY_DELAY}s per new triplet; postgrey $HOST:$P_PG)
  IMAP         $HOST:$P_IMAP (STARTTLS)   IMAPS $HOST:$P_IMAPS   password $IMAP_PASS
  Exim relay   $HOST:$P_EXIM  (STARTTLS + AUTH; relays to the MX-hop, DKIM-signs)
  DNS          $DNS:53    CA $CA_FILE
  env          $S/stack.env
EOF
