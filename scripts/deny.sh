#!/usr/bin/env bash
# Supply-chain check of `make test`: cargo-deny against deny.toml.
#
#   bash scripts/deny.sh
#
# 1. Installs cargo-deny from crates.io when it is missing (pinned version,
#    --locked; a few minutes to build, once).
# 2. `cargo deny check licenses bans sources`: always; any error fails.
# 3. `cargo deny check advisories`: only when the RustSec advisory database
#    (a git repository) can be fetched. When it cannot, this says so loudly
#    and the step passes: an unreachable database is not a finding, but it is
#    never silently skipped either.
#
# Environment: CARGO (default cargo), DENY_VERSION (default below),
# DENY_FETCH_TIMEOUT (seconds for the database fetch, default 120).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
# 0.20.2 builds on Rust 1.95 (its rust-version is 1.88).
DENY_VERSION=${DENY_VERSION:-0.20.2}
FETCH_TIMEOUT=${DENY_FETCH_TIMEOUT:-120}

have_deny() {
  "$CARGO" deny --version 2>/dev/null | grep -q "cargo-deny $DENY_VERSION"
}

if ! have_deny; then
  echo "deny.sh: installing cargo-deny $DENY_VERSION from crates.io (once; a few minutes)"
  "$CARGO" install cargo-deny --version "$DENY_VERSION" --locked ||
    {
      echo "deny.sh: cannot install cargo-deny $DENY_VERSION (cargo install cargo-deny --version $DENY_VERSION --locked)" >&2
      exit 1
    }
fi

echo "== cargo deny check licenses bans sources"
"$CARGO" deny --log-level error check --show-stats licenses bans sources

echo "== cargo deny check advisories"
# `fetch db` clones or updates the advisory database; offline it fails (or
# hangs on the network), so it gets a bounded time.
if timeout "$FETCH_TIMEOUT" "$CARGO" deny --log-level error fetch db >/dev/null 2>&1; then
  "$CARGO" deny --log-level error check --disable-fetch --show-stats advisories
else
  echo "deny.sh: advisory database unreachable: advisories not checked" >&2
  echo "deny.sh: (cargo deny fetch db failed or took over ${FETCH_TIMEOUT}s; licenses, bans and sources were checked)" >&2
fi
