#!/usr/bin/python3
"""oauth2_idp.py - a local OAuth2 authorization server for the mailloop tests.

Built on Authlib's framework-independent AuthorizationServer (Debian package
python3-authlib, installed by install.sh) and the standard library's HTTP
server, over TLS on loopback. It serves the grants mailloop uses:

  POST /token    client_credentials, refresh_token (rotated: every refresh
                 issues a new refresh token and revokes the old one, as
                 Microsoft and RFC 9700 recommend), device_code (RFC 8628)
  POST /device   the device authorization endpoint (RFC 8628 §3.1)

Access tokens are JWTs (HS256) signed with the key given on the command line
and naming its kid, with the claims Dovecot's oauth2 passdb checks locally
(email = the mailbox login, sub, iat, nbf, exp).

Test control, form-encoded POSTs over the same listener (loopback only, for
the test that started this process), answered with JSON:

  /admin/client    client_id, client_secret (absent: a public client), email
                   (whose mailbox its client-credentials tokens open), grants
                   (comma-separated grant types)
  /admin/revoke    client_id: every later request of the client fails with
                   invalid_client
  /admin/approve   user_code, email: a person signed in for that code
  /admin/refresh   client_id, email, scope: a refresh token as if the client
                   had signed in (no device flow needed)
  /admin/lifetime  seconds: lifetime of the access tokens issued next
  /admin/issued    every access and refresh token issued so far, and the
                   number of token requests per grant type

Usage: oauth2_idp.py --cert PEM --key PEM --signing-key FILE --kid KID
Prints "listening 127.0.0.1:PORT" once it accepts connections (port 0: the
kernel picks); stops on SIGTERM or when its standard input closes.
"""

import argparse
import base64
import json
import secrets
import signal
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

from authlib.jose import jwt
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidClientError
from authlib.oauth2.rfc6749.wrappers import OAuth2Request
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant, DeviceCredentialDict

LOCK = threading.Lock()


class Client(ClientMixin):
    def __init__(self, client_id, client_secret, email, grant_types):
        self.client_id = client_id
        self.client_secret = client_secret
        self.email = email
        self.grant_types = grant_types
        self.revoked = False

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return self.client_secret is not None and secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        if self.client_secret is None:
            return method == "none"
        return method in ("client_secret_post", "client_secret_basic")

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


class RefreshToken:
    def __init__(self, value, client_id, email, scope):
        self.value = value
        self.client_id = client_id
        self.email = email
        self.scope = scope
        self.revoked = False

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return None


class State:
    def __init__(self, key, kid, issuer):
        self.key = key
        self.kid = kid
        self.issuer = issuer
        self.clients = {}
        self.refresh_tokens = {}
        self.devices = {}        # device_code -> DeviceCredentialDict
        self.approvals = {}      # user_code -> email
        self.lifetime = 3600
        self.issued_access = []
        self.issued_refresh = []
        self.requests = {}


STATE = None
AUTH_METHODS = ["client_secret_post", "client_secret_basic", "none"]


class ClientCredentials(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS


class Refresh(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        token = STATE.refresh_tokens.get(refresh_token)
        if token is not None and not token.revoked:
            return token
        return None

    def authenticate_user(self, credential):
        return credential.email

    def revoke_old_credential(self, credential):
        credential.revoked = True


class DeviceCode(DeviceCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def query_device_credential(self, device_code):
        return STATE.devices.get(device_code)

    def query_user_grant(self, user_code):
        email = STATE.approvals.get(user_code)
        return (email, True) if email else None

    def should_slow_down(self, credential):
        return False


class DeviceEndpoint(DeviceAuthorizationEndpoint):
    INTERVAL = 1
    EXPIRES_IN = 600

    def get_verification_uri(self):
        return STATE.issuer + "/activate"

    def save_device_credential(self, client_id, scope, data):
        cred = DeviceCredentialDict(client_id=client_id, scope=scope, expires_at=int(time.time()) + self.EXPIRES_IN, **data)
        STATE.devices[data["device_code"]] = cred


class Server(AuthorizationServer):
    def query_client(self, client_id):
        client = STATE.clients.get(client_id)
        if client is not None and client.revoked:
            raise InvalidClientError(description="client %s has been disabled by the administrator" % client_id)
        return client

    def save_token(self, token, request):
        if token.get("refresh_token"):
            email = request.user if isinstance(request.user, str) else request.client.email
            STATE.refresh_tokens[token["refresh_token"]] = RefreshToken(
                token["refresh_token"], request.client.get_client_id(), email, token.get("scope"))
            STATE.issued_refresh.append(token["refresh_token"])
        STATE.issued_access.append(token["access_token"])

    def send_signal(self, name, *args, **kwargs):
        pass

    def create_oauth2_request(self, request):
        return request

    def handle_response(self, status, body, headers):
        return status, body, headers


def generate_token(grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True):
    now = int(time.time())
    email = user if isinstance(user, str) else client.email
    lifetime = STATE.lifetime
    claims = {"iss": STATE.issuer, "sub": email, "email": email, "iat": now, "nbf": now - 1,
              "exp": now + lifetime, "jti": secrets.token_hex(8), "client_id": client.get_client_id()}
    if scope:
        claims["scope"] = scope
    header = {"alg": "HS256", "typ": "JWT", "kid": STATE.kid}
    token = {"token_type": "Bearer", "access_token": jwt.encode(header, claims, STATE.key).decode(), "expires_in": lifetime}
    if scope:
        token["scope"] = scope
    if include_refresh_token:
        token["refresh_token"] = secrets.token_urlsafe(32)
    return token


SERVER = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass  # requests carry secrets; nothing is logged

    def reply(self, status, body, headers=()):
        data = (json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(status)
        for k, v in headers:
            if k.lower() != "content-length":
                self.send_header(k, v)
        if not any(k.lower() == "content-type" for k, _ in headers):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n).decode() if n else ""

    def do_POST(self):
        try:
            self.answer_post()
        except Exception as e:  # an answer, never a connection closed without one
            import traceback
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            self.reply(500, {"error": "server_error", "error_description": "%s: %s" % (type(e).__name__, e)})

    def answer_post(self):
        raw = self.body()
        uri = STATE.issuer + self.path
        with LOCK:
            form = dict(parse_qsl(raw, keep_blank_values=True))
            if self.path.startswith("/admin/"):
                return self.admin(self.path[len("/admin/"):], form)
            request = OAuth2Request("POST", uri, body=form, headers=dict(self.headers.items()))
            if self.path == "/token":
                grant = form.get("grant_type", "")
                STATE.requests[grant] = STATE.requests.get(grant, 0) + 1
                return self.reply(*SERVER.create_token_response(request))
            if self.path == "/device":
                return self.reply(*SERVER.create_endpoint_response("device_authorization", request))
        self.reply(404, {"error": "not_found"})

    def admin(self, what, args):
        if what == "client":
            STATE.clients[args["client_id"]] = Client(args["client_id"], args.get("client_secret"), args.get("email"),
                                                      args.get("grants", "client_credentials").split(","))
            return self.reply(200, {})
        if what == "revoke":
            STATE.clients[args["client_id"]].revoked = True
            return self.reply(200, {})
        if what == "approve":
            STATE.approvals[args["user_code"]] = args["email"]
            return self.reply(200, {})
        if what == "refresh":
            value = secrets.token_urlsafe(32)
            STATE.refresh_tokens[value] = RefreshToken(value, args["client_id"], args["email"], args.get("scope"))
            STATE.issued_refresh.append(value)
            return self.reply(200, {"refresh_token": value})
        if what == "lifetime":
            STATE.lifetime = int(args["seconds"])
            return self.reply(200, {})
        if what == "issued":
            return self.reply(200, {"access": STATE.issued_access, "refresh": STATE.issued_refresh,
                                    "requests": STATE.requests})
        return self.reply(404, {"error": "not_found"})


class TlsServer(ThreadingHTTPServer):
    """TLS per connection, handshake in the connection's own thread.

    Wrapping the listening socket instead would run every handshake inside
    accept() on the one serving thread: a slow or broken client would hold up
    every other connection, and its failure would surface as a connection
    closed without an answer.
    """

    tls = None

    def finish_request(self, request, client_address):
        request.settimeout(30)
        try:
            request = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            print("TLS handshake with %s:%d failed: %s" % (client_address[0], client_address[1], e), file=sys.stderr, flush=True)
            return
        try:
            super().finish_request(request, client_address)
        finally:
            try:
                request.settimeout(1)
                request.unwrap()  # close_notify before the close
            except (ssl.SSLError, OSError):
                pass
            request.close()


def main():
    global STATE, SERVER
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--signing-key", required=True, help="file holding base64 of the HS256 secret")
    p.add_argument("--kid", required=True)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    with open(a.signing_key) as f:
        key = base64.b64decode(f.read().strip())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    httpd = TlsServer(("127.0.0.1", a.port), Handler)
    httpd.daemon_threads = True
    httpd.tls = ctx
    port = httpd.server_address[1]
    STATE = State(key, a.kid, "https://127.0.0.1:%d" % port)
    SERVER = Server()
    SERVER.register_token_generator("default", generate_token)
    SERVER.register_grant(ClientCredentials)
    SERVER.register_grant(Refresh)
    SERVER.register_grant(DeviceCode)
    SERVER.register_endpoint(DeviceEndpoint)

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown).start())
    # The test that started us holds our stdin: when it goes, so do we.
    threading.Thread(target=lambda: (sys.stdin.read(), httpd.shutdown()), daemon=True).start()
    print("listening 127.0.0.1:%d" % port, flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
