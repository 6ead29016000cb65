# shellcheck shell=bash
# exim.sh - the stack's second MTA: Exim as a submission relay in front of
# Postfix (sourced by up.sh after the Postfix section; not run on its own).
#
# A probe submitted here crosses two MTA implementations, each writing its
# own Received: style:
#
#   client --STARTTLS+AUTH--> Exim (relay.sender.test, "with esmtpsa (TLS1.3)
#   tls CIPHER (Exim 4.96)") --STARTTLS, DKIM-signed--> Postfix MX-hop
#   ("(using TLSv1.3 with cipher ...) by mx.receiver.test (Postfix) with
#   ESMTPS") --LMTP--> Dovecot
#
# Exim comes from Debian's exim4-daemon-light .deb, unpacked by install.sh
# into $MS_EXIM_ROOT (installing the package would remove Postfix: both
# provide mail-transport-agent). It runs with its own config (-C), spool,
# log and pid file under the state dir. Exim keeps root privilege only in
# the daemon started by root: every process it re-executes (deliveries,
# queue runs) runs as Debian-exim ("exim user lost privilege for using -C
# option" in its log is expected), so the files those processes read -
# the TLS key, the CA and the DKIM key - are copies owned by Debian-exim.
#
# Uses up.sh's globals: S HOST P_EXIM P_HOP MS_ETC MS_RUN MS_LOG SMTP_USER
# SMTP_PASS SENDER_DOMAIN RCPT_DOMAIN GREY_DOMAIN DKIM_SELECTOR, and its
# write_file / mkdir_as helpers.

EXIM_NAME=relay.$SENDER_DOMAIN
EXIM_DIR=$S/exim
EXIM_ETC=$MS_ETC/exim
EXIM_LOG_DIR=$MS_LOG/exim
# Deferred deliveries (the MX-hop was restarting, say) are retried by a
# queue run every EXIM_QUEUE_INTERVAL; a first attempt is made at once.
EXIM_QUEUE_INTERVAL=5s

exim_layout() {
  mkdir_as "$EXIM_DIR" root:root 755
  mkdir_as "$EXIM_DIR/spool" Debian-exim:Debian-exim 750
  mkdir_as "$EXIM_LOG_DIR" Debian-exim:Debian-exim 755
  mkdir_as "$EXIM_ETC" root:Debian-exim 750
  mkdir_as "$MS_RUN/exim" root:root 755
}

exim_config() {
  # Copies the unprivileged Exim processes can read ($S/tls is root-only).
  write_file exim "$EXIM_ETC/tls.pem" 644 Debian-exim:Debian-exim <"$S/tls/server.pem"
  write_file exim "$EXIM_ETC/tls.key" 600 Debian-exim:Debian-exim <"$S/tls/server.key"
  write_file exim "$EXIM_ETC/ca.pem" 644 Debian-exim:Debian-exim <"$S/tls/ca.pem"
  write_file exim "$EXIM_ETC/dkim.key" 600 Debian-exim:Debian-exim <"$S/dkim/$DKIM_SELECTOR.private"
  # Exim refuses a config that others can write; the Debian-exim processes
  # must read it (it names the stack's published test password).
  write_file exim "$EXIM_ETC/exim.conf" 640 root:Debian-exim <<EOF
# Exim for the mailloop test stack: an authenticated relay to Postfix.
exim_path = $MS_EXIM
keep_environment =
primary_hostname = $EXIM_NAME
qualify_domain = $SENDER_DOMAIN
spool_directory = $EXIM_DIR/spool
log_file_path = $EXIM_LOG_DIR/%slog
pid_file_path = $MS_RUN/exim/exim.pid
exim_user = Debian-exim
exim_group = Debian-exim
never_users = root
daemon_smtp_ports = $P_EXIM
local_interfaces = $HOST
# no ident or reverse lookups: nothing may leave the machine
rfc1413_hosts =
host_lookup =
log_selector = +received_recipients +tls_certificate_verified
queue_run_max = 1
timeout_frozen_after = 1h

tls_certificate = $EXIM_ETC/tls.pem
tls_privatekey = $EXIM_ETC/tls.key
tls_advertise_hosts = *
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data

begin acl
acl_check_rcpt:
  accept authenticated = *
         domains = $RCPT_DOMAIN : $GREY_DOMAIN
  deny   message = relay not permitted (authenticate first)
# Exim's own Authentication-Results (auth=pass smtp.auth=...), as relays
# that authenticate their senders write it: a header from an authserv-id
# (relay.sender.test) a receiver must not trust.
acl_check_data:
  warn   add_header = :at_start:\${authresults {\$primary_hostname}}
  accept

begin routers
# Everything the stack knows goes to Postfix's MX-hop; bounces to
# $SMTP_USER too (the MX accepts it).
to_postfix:
  driver = manualroute
  domains = $RCPT_DOMAIN : $GREY_DOMAIN : $SENDER_DOMAIN
  route_list = * $HOST
  self = send
  transport = to_postfix

begin transports
to_postfix:
  driver = smtp
  port = $P_HOP
  allow_localhost
  helo_data = $EXIM_NAME
  hosts_require_tls = *
  tls_verify_certificates = $EXIM_ETC/ca.pem
  tls_verify_hosts = *
  dkim_domain = \${if eq{\$sender_address_domain}{$SENDER_DOMAIN}{$SENDER_DOMAIN}{}}
  dkim_selector = $DKIM_SELECTOR
  dkim_private_key = $EXIM_ETC/dkim.key
  dkim_canon = relaxed

begin retry
*   *   F,1h,$EXIM_QUEUE_INTERVAL

begin authenticators
# AUTH only after STARTTLS, with the submission account of the stack.
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = \${if and{{eq{\$auth2}{$SMTP_USER}}{eq{\$auth3}{$SMTP_PASS}}}}
  server_set_id = \$auth2
  server_advertise_condition = \${if def:tls_in_cipher}
login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = <| Username: | Password:
  server_condition = \${if and{{eq{\$auth1}{$SMTP_USER}}{eq{\$auth2}{$SMTP_PASS}}}}
  server_set_id = \$auth1
  server_advertise_condition = \${if def:tls_in_cipher}
EOF
}

start_exim() {
  rm -f "$MS_RUN/exim/exim.pid"
  # -bd daemonizes; the daemon writes pid_file_path
  "$MS_EXIM" -C "$EXIM_ETC/exim.conf" -bd -q"$EXIM_QUEUE_INTERVAL" </dev/null >>"$DAEMONS_OUT" 2>&1 9>&-
}
