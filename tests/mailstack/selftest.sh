#!/usr/bin/env bash
# selftest.sh - prove the mailloop test mail stack works (run after up.sh).
#
# Uses swaks for SMTP and a small python3 imaplib script for IMAP, all with
# certificate verification against the stack's own CA (never disabled):
#   1. 587-style submission (STARTTLS + AUTH) -> IMAPS fetch; the delivered
#      message carries spf=pass, dkim=pass, dmarc=pass from mx.receiver.test,
#      and Dovecot logged its delivery of msgid=<...> into INBOX
#   2. 465-style submissions (implicit TLS + AUTH) -> IMAP STARTTLS fetch
#   3. wrong SMTP password -> 535, and the next good AUTH is not slowed down
#   4. wrong IMAP password -> NO, and the next good LOGIN is not slowed down
#   5. unknown recipient -> 550 at RCPT (submission and MX)
#   6. greylist port: a new triplet gets 451 at RCPT
#   7. IMAP capabilities after login include IDLE and UIDPLUS
#   8. spoofed.test via the MX: spf=fail, dmarc=fail (still delivered)
#   9. the LOGIN-only submission offers AUTH LOGIN and nothing else; LOGIN works
#  10. the Exim relay: STARTTLS + AUTH -> Exim -> Postfix -> Dovecot, both
#      MTAs' Received: headers, spf/dkim/dmarc pass (Exim DKIM-signs)
# Exit status: 0 when all passed. Prints "N passed, N failed" at the end.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

ENV_FILE=$MS_STATE/stack.env
[[ -r $ENV_FILE ]] || { echo "selftest.sh: $ENV_FILE missing - run up.sh first" >&2; exit 1; }
# shellcheck disable=SC1090
. "$ENV_FILE"
command -v swaks >/dev/null || { echo "selftest.sh: swaks missing - run install.sh" >&2; exit 1; }
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3

H=$MAILSTACK_HOST
CA=$MAILSTACK_CA_FILE
TOKEN=st-$(date +%s)-$$
PASS=0
FAIL=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

ok() { PASS=$((PASS + 1)); echo "PASS  $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL  $*"; }

# swaks_run NAME ARGS... : run swaks, keep its transcript in $TMP/NAME.log,
# return swaks' exit status.
swaks_run() {
  local name=$1
  shift
  local rc=0
  swaks --server "$H" --tls-verify --tls-ca-path "$CA" --timeout 20 \
    --hide-informational "$@" >"$TMP/$name.log" 2>&1 || rc=$?
  return "$rc"
}
show() { sed 's/^/      /' "$TMP/$1.log" | tail -n "${2:-8}"; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# imap_fetch PORT MODE USER PASS TOKEN : wait (up to 15 s) for the message
# with header X-Selftest-Token: TOKEN, print its header block. The folder
# is $FOLDER (default INBOX).
imap_fetch() {
  "$PY" - "$H" "$@" "$CA" "${FOLDER:-INBOX}" <<'PY'
import imaplib, ssl, sys, time
host, port, mode, user, password, token, ca, folder = sys.argv[1:9]
ctx = ssl.create_default_context(cafile=ca)      # verifies chain + 127.0.0.1 SAN
if mode == "imaps":
    imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
else:
    imap = imaplib.IMAP4(host, int(port))
    imap.starttls(ssl_context=ctx)
imap.login(user, password)
deadline = time.time() + 15
while True:
    imap.select(folder)
    typ, data = imap.uid("SEARCH", None, "HEADER", "X-Selftest-Token", token)
    uids = data[0].split()
    if uids:
        break
    if time.time() > deadline:
        print("message with token %s not found" % token, file=sys.stderr)
        sys.exit(1)
    time.sleep(0.1)
typ, data = imap.uid("FETCH", uids[-1], "(BODY.PEEK[HEADER])")
sys.stdout.write(data[0][1].decode("utf-8", "replace").replace("\r\n", "\n"))
imap.logout()
PY
}

# imap_login_time PORT USER PASS : prints "OK ms" or "NO ms" (IMAPS login)
imap_login_time() {
  "$PY" - "$H" "$@" "$CA" <<'PY'
import imaplib, ssl, sys, time
host, port, user, password, ca = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
t = time.monotonic()
imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
try:
    imap.login(user, password)
    res = "OK"
except imaplib.IMAP4.error:
    res = "NO"
print(res, int((time.monotonic() - t) * 1000))
try:
    imap.logout()
except Exception:
    pass
PY
}

# check_ar NAME HEADERFILE EXPECT... : the unfolded Authentication-Results
# headers with authserv-id mx.receiver.test must contain every EXPECT word.
check_ar() {
  local name=$1 file=$2
  shift 2
  local ar missing=()
  ar=$(awk '/^[^ \t]/ { if (h != "") print h; h = $0; next } { sub(/^[ \t]+/, " "); h = h $0 } END { print h }' "$file" |
    grep -i "^Authentication-Results: $MAILSTACK_AUTHSERV_ID;" || true)
  for w in "$@"; do grep -q -- "$w" <<<"$ar" || missing+=("$w"); done
  if ((${#missing[@]} == 0)); then
    ok "$name: Authentication-Results has $*"
  else
    bad "$name: Authentication-Results lacks ${missing[*]}"
  fi
  [[ -z $ar ]] || printf '      %s\n' "${ar//$'\n'/$'\n'      }"
}

echo "selftest: stack $MAILSTACK_STATE, token $TOKEN"

# --- 1. submission (587-style) -> IMAPS ------------------------------------
RCPT1=probe@receiver.test
if swaks_run sub587 --port "$MAILSTACK_PORT_SUBMISSION" --tls \
  --auth PLAIN --auth-user "$MAILSTACK_SMTP_USER" --auth-password "$MAILSTACK_SMTP_PASS" \
  --from "$MAILSTACK_SMTP_USER" --to "$RCPT1" \
  --header "Subject: selftest 587 $TOKEN" --header "X-Selftest-Token: $TOKEN-587"; then
  ok "587 STARTTLS+AUTH submission to $RCPT1 accepted"
  if imap_fetch "$MAILSTACK_PORT_IMAPS" imaps "$RCPT1" "$MAILSTACK_IMAP_PASS" "$TOKEN-587" >"$TMP/h587" 2>"$TMP/e587"; then
    ok "587 message fetched via IMAPS as $RCPT1"
    check_ar "587" "$TMP/h587" "spf=pass" "dkim=pass" "dmarc=pass"
    if grep -q '^DKIM-Signature: .*d=sender.test' "$TMP/h587"; then
      ok "587 message is DKIM-signed by sender.test"
    else
      bad "587 message has no DKIM-Signature d=sender.test"
    fi
    msgid=$(grep -i '^Message-Id:' "$TMP/h587" | head -n1 | sed 's/^[^:]*: *//' | tr -d '\r')
    # without Sieve "saved mail to INBOX", with it "stored mail into mailbox 'INBOX'"
    if grep -F "msgid=$msgid: " "$MAILSTACK_DOVECOT_LOG" | grep -qE ": (saved mail to INBOX|stored mail into mailbox 'INBOX')"; then
      ok "Dovecot log has the LMTP delivery line with msgid=$msgid"
      grep -F "msgid=$msgid: " "$MAILSTACK_DOVECOT_LOG" | tail -n1 | sed 's/^/      /'
    else
      bad "no 'msgid=$msgid: saved mail to / stored mail into' line in $MAILSTACK_DOVECOT_LOG"
    fi
  else
    bad "587 message not found via IMAPS"; sed 's/^/      /' "$TMP/e587"
  fi
else
  bad "587 submission failed"; show sub587 12
fi

# --- 2. submissions (465-style, implicit TLS) -> IMAP + STARTTLS ----------
RCPT2="t-selftest-465@receiver.test"
if swaks_run sub465 --port "$MAILSTACK_PORT_SUBMISSIONS" --tls-on-connect \
  --auth LOGIN --auth-user "$MAILSTACK_SMTP_USER" --auth-password "$MAILSTACK_SMTP_PASS" \
  --from "$MAILSTACK_SMTP_USER" --to "$RCPT2" \
  --header "Subject: selftest 465 $TOKEN" --header "X-Selftest-Token: $TOKEN-465"; then
  ok "465 implicit-TLS+AUTH submission to $RCPT2 accepted"
  if imap_fetch "$MAILSTACK_PORT_IMAP" starttls "$RCPT2" "$MAILSTACK_IMAP_PASS" "$TOKEN-465" >"$TMP/h465" 2>"$TMP/e465"; then
    ok "465 message fetched via IMAP+STARTTLS as $RCPT2 (own mailbox)"
    check_ar "465" "$TMP/h465" "spf=pass" "dkim=pass" "dmarc=pass"
  else
    bad "465 message not found via IMAP"; sed 's/^/      /' "$TMP/e465"
  fi
else
  bad "465 submission failed"; show sub465 12
fi

# --- 3. wrong SMTP password -> 535, then a good AUTH is fast ---------------
t=$(now_ms)
rc=0
swaks_run badauth --port "$MAILSTACK_PORT_SUBMISSION" --tls --quit-after AUTH \
  --auth PLAIN --auth-user "$MAILSTACK_SMTP_USER" --auth-password wrong-password || rc=$?
t_bad=$(($(now_ms) - t))
if grep -q '^<[~*]\* *535' "$TMP/badauth.log"; then
  ok "wrong SMTP password: 535 ($(grep -o '535.*' "$TMP/badauth.log" | head -n1 | tr -d '\r'), ${t_bad} ms)"
else
  bad "wrong SMTP password: no 535 (swaks rc=$rc)"; show badauth
fi
t=$(now_ms)
swaks_run goodauth --port "$MAILSTACK_PORT_SUBMISSION" --tls --quit-after AUTH \
  --auth PLAIN --auth-user "$MAILSTACK_SMTP_USER" --auth-password "$MAILSTACK_SMTP_PASS" || true
t_good=$(($(now_ms) - t))
if grep -q '<~ *235' "$TMP/goodauth.log" && ((t_bad < 1000 && t_good < 1000)); then
  ok "good SMTP AUTH right after a failed one: 235 in ${t_good} ms (no auth penalty)"
else
  bad "good SMTP AUTH after a failed one: ${t_good} ms (bad one ${t_bad} ms)"; show goodauth
fi

# --- 9. LOGIN-only submission: EHLO after TLS says AUTH LOGIN, LOGIN works --
swaks_run loginonly --port "$MAILSTACK_PORT_SUBMISSION_LOGIN" --tls --quit-after AUTH \
  --auth LOGIN --auth-user "$MAILSTACK_SMTP_USER" --auth-password "$MAILSTACK_SMTP_PASS" || true
if grep -q '<~ *250[- ]AUTH LOGIN *$' <(tr -d '\r' <"$TMP/loginonly.log") && grep -q '<~ *235' "$TMP/loginonly.log"; then
  ok "LOGIN-only submission: offers AUTH LOGIN only, LOGIN gets 235"
else
  bad "LOGIN-only submission: no 'AUTH LOGIN' alone in EHLO, or no 235"; show loginonly 14
fi

# --- 4. wrong IMAP password -> NO, then a good login is fast --------------
read -r r1 ms1 < <(imap_login_time "$MAILSTACK_PORT_IMAPS" "$RCPT1" wrong-password)
read -r r2 ms2 < <(imap_login_time "$MAILSTACK_PORT_IMAPS" "$RCPT1" "$MAILSTACK_IMAP_PASS")
read -r r3 _ < <(imap_login_time "$MAILSTACK_PORT_IMAPS" nosuchuser@receiver.test "$MAILSTACK_IMAP_PASS")
if [[ $r1 == NO && $r2 == OK && $r3 == NO ]] && ((ms1 < 500 && ms2 < 500)); then
  ok "IMAP: wrong password NO in ${ms1} ms, then good login OK in ${ms2} ms; nosuchuser refused"
else
  bad "IMAP: wrong password $r1/${ms1} ms, good login $r2/${ms2} ms, nosuchuser $r3"
fi

# --- 5. unknown recipient -> 550 at RCPT (submission and MX) ---------------
rc=0
swaks_run unknown587 --port "$MAILSTACK_PORT_SUBMISSION" --tls --quit-after RCPT \
  --auth PLAIN --auth-user "$MAILSTACK_SMTP_USER" --auth-password "$MAILSTACK_SMTP_PASS" \
  --from "$MAILSTACK_SMTP_USER" --to nosuchuser@receiver.test || rc=$?
if grep -q '^<[~*]\* *550.*User unknown' "$TMP/unknown587.log"; then
  ok "submission, unknown recipient: $(grep -o '550.*' "$TMP/unknown587.log" | head -n1 | tr -d '\r')"
else
  bad "submission, unknown recipient: no 550 at RCPT (rc=$rc)"; show unknown587
fi
rc=0
swaks_run unknownmx --port "$MAILSTACK_PORT_MX" --tls --quit-after RCPT \
  --from "$MAILSTACK_SMTP_USER" --to nosuchuser@receiver.test || rc=$?
if grep -q '^<[~*]\* *550.*User unknown' "$TMP/unknownmx.log"; then
  ok "MX, unknown recipient: 550 at RCPT"
else
  bad "MX, unknown recipient: no 550 at RCPT (rc=$rc)"; show unknownmx
fi

# --- 6. greylisting: new triplet -> 451 ---------------------------------
rc=0
swaks_run grey --port "$MAILSTACK_PORT_GREY" --tls --quit-after RCPT \
  --from "$MAILSTACK_SMTP_USER" --to "grey-$TOKEN@$MAILSTACK_GREY_DOMAIN" || rc=$?
if grep -q '^<[~*]\* *451.*Greylisted' "$TMP/grey.log"; then
  ok "greylist port, new triplet: 451 Greylisted (delay ${MAILSTACK_GREY_DELAY}s)"
else
  bad "greylist port: no 451 at RCPT (rc=$rc)"; show grey
fi

# --- 7. IMAP capabilities after login: IDLE and UIDPLUS ---------------------
caps=$("$PY" - "$H" "$MAILSTACK_PORT_IMAPS" "$RCPT1" "$MAILSTACK_IMAP_PASS" "$CA" <<'PY2'
import imaplib, ssl, sys
host, port, user, password, ca = sys.argv[1:6]
imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=ssl.create_default_context(cafile=ca))
imap.login(user, password)
typ, data = imap.capability()
print(data[0].decode())
imap.logout()
PY2
) || caps=''
if [[ " $caps " == *" IDLE "* && " $caps " == *" UIDPLUS "* ]]; then
  ok "IMAP capabilities after login include IDLE and UIDPLUS"
else
  bad "IMAP capabilities after login: '$caps'"
fi

# --- 8. spoofed.test via the MX: spf=fail, dmarc=fail, still delivered ---
RCPT7="t-selftest-spoof@receiver.test"
if swaks_run spoof --port "$MAILSTACK_PORT_MX" --tls \
  --from attacker@spoofed.test --to "$RCPT7" \
  --header "Subject: selftest spoof $TOKEN" --header "X-Selftest-Token: $TOKEN-spoof"; then
  if imap_fetch "$MAILSTACK_PORT_IMAPS" imaps "$RCPT7" "$MAILSTACK_IMAP_PASS" "$TOKEN-spoof" >"$TMP/hspoof" 2>"$TMP/espoof"; then
    check_ar "spoofed.test" "$TMP/hspoof" "spf=fail" "dmarc=fail"
  else
    bad "spoofed.test message not delivered"; sed 's/^/      /' "$TMP/espoof"
  fi
else
  bad "spoofed.test message refused by the MX"; show spoof 12
fi

# --- 9. GTUBE via the MX: SpamAssassin flags it, Sieve files it into Junk ---
RCPT8="t-selftest-junk@receiver.test"
GTUBE='XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X'
if swaks_run junk --port "$MAILSTACK_PORT_MX" --tls --from probe@sender.test --to "$RCPT8" \
  --header "Subject: selftest junk $TOKEN" --header "X-Selftest-Token: $TOKEN-junk" --body "$GTUBE"; then
  if FOLDER=Junk imap_fetch "$MAILSTACK_PORT_IMAPS" imaps "$RCPT8" "$MAILSTACK_IMAP_PASS" "$TOKEN-junk" >"$TMP/hjunk" 2>"$TMP/ejunk"; then
    if grep -q '^X-Spam-Flag: YES' "$TMP/hjunk" && grep -q '^X-Spam-Status: Yes, score=.*GTUBE' "$TMP/hjunk"; then
      ok "GTUBE message filed into Junk with X-Spam-Flag: YES (SpamAssassin + Sieve)"
    else
      bad "GTUBE message in Junk lacks SpamAssassin's verdict"; grep -i '^X-Spam' "$TMP/hjunk" | sed 's/^/      /'
    fi
  else
    bad "GTUBE message not found in Junk"; sed 's/^/      /' "$TMP/ejunk"
  fi
else
  bad "GTUBE message refused by the MX"; show junk 12
fi
if grep -q '^X-Spam-Status: No, score=' "$TMP/h587" 2>/dev/null; then
  ok "normal mail scored by SpamAssassin and kept in INBOX ($(grep -o '^X-Spam-Status: No, score=[^ ]*' "$TMP/h587"))"
else
  bad "normal mail (587) has no 'X-Spam-Status: No' header"
fi

# --- 10. Exim relay: STARTTLS + AUTH -> Exim -> Postfix MX-hop -> Dovecot ---
RCPT9="t-selftest-exim@receiver.test"
if swaks_run exim --port "$MAILSTACK_PORT_EXIM" --tls \
  --auth LOGIN --auth-user "$MAILSTACK_SMTP_USER" --auth-password "$MAILSTACK_SMTP_PASS" \
  --from "$MAILSTACK_SMTP_USER" --to "$RCPT9" \
  --header "Subject: selftest exim $TOKEN" --header "X-Selftest-Token: $TOKEN-exim"; then
  if imap_fetch "$MAILSTACK_PORT_IMAPS" imaps "$RCPT9" "$MAILSTACK_IMAP_PASS" "$TOKEN-exim" >"$TMP/hexim" 2>"$TMP/eexim"; then
    # unfolded Received: headers, top first: Dovecot, Postfix, Exim
    recv=$(awk '/^[^ \t]/ { if (h != "") print h; h = $0; next } { sub(/^[ \t]+/, " "); h = h $0 } END { print h }' "$TMP/hexim" |
      grep '^Received:' || true)
    if grep -q 'by mx.receiver.test (Postfix) with ESMTPS' <<<"$recv" &&
      grep -q 'by relay.sender.test with esmtpsa  *(TLS1.3) tls .*(Exim ' <<<"$recv"; then
      ok "Exim relay: delivered via Exim (esmtpsa, TLS1.3) then Postfix (ESMTPS)"
    else
      bad "Exim relay: Received chain lacks the Exim or Postfix hop"; printf '      %s\n' "${recv//$'\n'/$'\n'      }"
    fi
    check_ar "Exim relay" "$TMP/hexim" "spf=pass" "dkim=pass" "dmarc=pass"
  else
    bad "Exim relay: message not delivered"; sed 's/^/      /' "$TMP/eexim"; ms_tail "$MAILSTACK_EXIM_LOG" 8
  fi
else
  bad "Exim relay refused the submission"; show exim 12
fi

echo "selftest: $PASS passed, $FAIL failed"
((FAIL == 0))
