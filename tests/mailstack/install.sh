#!/usr/bin/env bash
# install.sh - install the Debian packages of the mailloop test/demo mail stack.
#
# Idempotent: when every package is already installed it does not touch apt
# at all (a second run takes well under a second). Nothing is started: the
# packages' init scripts are blocked with a temporary policy-rc.d (exit 101)
# when the machine has none, and up.sh runs every daemon itself.
#
# Usage: bash tests/mailstack/install.sh      (as root, Debian 12)
set -euo pipefail

# Packages of the stack. The Perl modules are named explicitly because
# --no-install-recommends would otherwise skip them (monitoring-plugins-contrib
# recommends ~40 unrelated packages). SpamAssassin (spamd + spamass-milter)
# is the stack's spam filter, dovecot-sieve files what it marks into Junk. dbconfig-no-thanks satisfies opendmarc's
# "dbconfig-mysql | dbconfig-no-thanks" dependency without pulling MySQL.
# prometheus (2.42, with promtool) is not part of the stack: tests/tests/metrics.rs
# lints the /metrics output with promtool and scrapes it with a real prometheus,
# started by the test itself (its service is blocked like the others).
# postgresql (15 on Debian 12) is not part of the stack either: the storage
# tests and the coordinator's PostgreSQL backend tests start a throwaway
# server of their own (tests/src/postgres.rs), as the postgres user.
PACKAGES=(
  postfix dovecot-core dovecot-imapd dovecot-lmtpd dovecot-sieve postgrey
  spamassassin spamd spamc spamass-milter
  opendkim opendkim-tools opendmarc dbconfig-no-thanks
  postfix-policyd-spf-python dnsmasq-base swaks monitoring-plugins-contrib
  libmail-imapclient-perl libnet-smtp-tls-perl libnet-smtp-ssl-perl
  libio-socket-ssl-perl libnet-ssleay-perl libauthen-sasl-perl
  openssl python3 iproute2 procps util-linux ca-certificates
  # ub_config_lock.c, preloaded into OpenDKIM (see there), is built by up.sh
  gcc libc6-dev diffutils
  prometheus
  postgresql
  # The status page's browser test (coordinator/tests/status_page.rs) drives
  # Debian's headless Chromium with playwright-core (tests/browser/, whose
  # two npm packages `make deps` installs with the node/npm already there).
  chromium
  # The OAuth2 identity provider of tests/tests/oauth2.rs (oauth2_idp.py, run
  # with Debian's /usr/bin/python3): Authlib's authorization server.
  python3-authlib
  # systemd-analyze (verify, security --offline) for tests/tests/systemd.rs,
  # which checks deploy/systemd/'s units.
  systemd
  # YAML reader of tests/tests/manifests.rs (deploy/kubernetes/).
  python3-yaml
)
# Exim's shared libraries: Exim itself is not installed as a package (see
# install_exim below), only unpacked, so its dependencies are named here.
PACKAGES+=(libdb5.3 libgnutls-dane0 libgnutls30 libidn12 libidn2-0 libnsl2 libpcre2-8-0 libcrypt1)

# --- Exim: the stack's second MTA, unpacked, not installed ------------------
# up.sh runs Exim as a relay in front of Postfix, so a probe crosses two MTA
# implementations. Debian's exim4-daemon-light (like every MTA package)
# conflicts with postfix through the mail-transport-agent virtual package:
# installing it would remove Postfix. So its .deb is fetched with
# `apt-get download` and unpacked with dpkg-deb -x into EXIM_ROOT, outside
# dpkg's database; up.sh runs $EXIM_ROOT/usr/sbin/exim4 with its own config
# (-C). The binary looks its user up by name at start, so the system user
# Debian-exim is created as the package's postinst would.
EXIM_ROOT=/usr/local/lib/mailloop-mailstack/exim4
install_exim() {
  if [[ -x $EXIM_ROOT/usr/sbin/exim4 ]] && getent passwd Debian-exim >/dev/null; then
    return 0
  fi
  if ! getent passwd Debian-exim >/dev/null; then
    echo "install.sh: creating system user Debian-exim (Exim's compiled-in user)"
    useradd --system --user-group --home-dir /var/spool/exim4 --no-create-home \
      --shell /usr/sbin/nologin Debian-exim
  fi
  if [[ ! -x $EXIM_ROOT/usr/sbin/exim4 ]]; then
    echo "install.sh: unpacking exim4-daemon-light into $EXIM_ROOT"
    local tmp
    tmp=$(mktemp -d)
    chmod 755 "$tmp"    # apt's _apt user downloads into it
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root exim4-daemon-light) || {
      apt-get update -q
      (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root exim4-daemon-light)
    }
    rm -rf "$EXIM_ROOT.new"
    mkdir -p "$EXIM_ROOT.new"
    dpkg-deb -x "$tmp"/exim4-daemon-light_*.deb "$EXIM_ROOT.new"
    # up.sh starts it as root; it needs no setuid bit
    chmod u-s "$EXIM_ROOT.new/usr/sbin/exim4"
    dpkg-deb -f "$tmp"/exim4-daemon-light_*.deb Version >"$EXIM_ROOT.new/VERSION"
    rm -rf "$tmp" "$EXIM_ROOT"
    mv "$EXIM_ROOT.new" "$EXIM_ROOT"
  fi
}

if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: must run as root" >&2
  exit 1
fi

# --- fast path: is everything installed already? ---------------------------
# One dpkg-query call; a package dpkg does not know prints nothing, so
# whatever is not reported as "install ok installed" is missing.
declare -A installed=()
while read -r pkg status; do
  [[ $status == "install ok installed" ]] && installed[${pkg%%:*}]=1
done < <(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for pkg in "${PACKAGES[@]}"; do
  [[ -n ${installed[$pkg]-} ]] || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  install_exim
  echo "install.sh: all ${#PACKAGES[@]} packages already installed, nothing to do"
  exit 0
fi
echo "install.sh: installing: ${missing[*]}"

# --- debconf preseed ---------------------------------------------------------
# Postfix: "No configuration" (up.sh writes its own config dir); OpenDMARC:
# no database setup.
debconf-set-selections <<'PRESEED'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string mx.receiver.test
opendmarc opendmarc/dbconfig-install boolean false
PRESEED

# --- keep services from starting -------------------------------------------
# Without systemd, invoke-rc.d runs the sysvinit scripts unless policy-rc.d
# forbids it. Add a temporary one only when the machine has none, and remove
# it again on exit (whatever happens).
POLICY=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
  if [[ $created_policy -eq 1 ]]; then rm -f "$POLICY"; fi
}
trap cleanup EXIT
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\n# temporary, from mailloop tests/mailstack/install.sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when they are missing or older than a day.
if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit 2>/dev/null) ]]; then
  apt-get update -q
fi
if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; then
  # stale package lists (404 on download): refresh once and retry
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
fi
install_exim
echo "install.sh: done"
