# mailloop — the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need (Debian packages for the mail stack; the Rust
# toolchain must already be there through rustup) and run as root.

SHELL := /bin/bash
CARGO ?= cargo
MAILSTACK := tests/mailstack
# State of the local mail stack (configs, spool, mailboxes, logs, pids).
export MAILSTACK_STATE ?= /var/lib/mailloop-mailstack
STACK_ENV := $(MAILSTACK_STATE)/stack.env
DEMO_CONFIG := target/demo/mailloop.toml

.PHONY: help deps toolchain cargo-deb build release deb demo demo-stop test deny bench screenshots mailstack-up mailstack-down mailstack-purge clean

help:
	@echo "make demo            bring up the local mail stack, build, run one probe per check (table),"
	@echo "                     then leave a coordinator and two agents (two regions) probing it"
	@echo "make demo-stop       stop the demo's coordinator and agents"
	@echo "make test            install deps, bring the stack up, run every test, bring it down;"
	@echo "                     then cargo deny (licences, bans, sources; advisories when reachable)"
	@echo "make deny            only the cargo deny step (installs cargo-deny when missing)"
	@echo "make bench           mailloop vs. check_email_delivery on the same stack, then the coordinator"
	@echo "                     load test and the status page (BENCH=quick: every part, shorter; goal < 3 min)"
	@echo "make deb             release .deb packages of the coordinator (+ mailloopctl) and the agent"
	@echo "                     in target/debian (cargo-deb; installed when missing)"
	@echo "make screenshots     regenerate docs/screenshots/*.png for README: the status page (light and dark),"
	@echo "                     the SRE console's overview, a round's waterfall and an incident (needs the stack)"
	@echo "make mailstack-up    start the real Postfix/Dovecot/OpenDKIM/OpenDMARC/SPF/postgrey/dnsmasq stack"
	@echo "make mailstack-down  stop it (make mailstack-purge also deletes its state)"

# Debian packages of the mail stack, and prometheus/promtool for the metrics
# tests (idempotent; fast when already installed; no service is started).
deps: toolchain cargo-deb
	@bash $(MAILSTACK)/install.sh
	@# playwright-core and axe-core (about 18 MB, no browser download: the
	@# tests drive Debian's /usr/bin/chromium); skipped when the lock is met.
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 18+ with npm (Debian: apt-get install nodejs npm)" >&2; exit 1; }
	@cmp -s tests/browser/package-lock.json tests/browser/node_modules/.installed-lock.json 2>/dev/null || { \
	  npm ci --prefix tests/browser --no-audit --no-fund --ignore-scripts && \
	  cp tests/browser/package-lock.json tests/browser/node_modules/.installed-lock.json; }

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust through rustup (see rust-toolchain.toml)" >&2; exit 1; }
	@$(CARGO) --version >/dev/null

# cargo-deb builds the .deb packages (make deb, tests/tests/packages.rs).
cargo-deb: toolchain
	@$(CARGO) deb --version >/dev/null 2>&1 || { echo "installing cargo-deb (cargo install cargo-deb --locked)" >&2; $(CARGO) install cargo-deb --locked; }

build: toolchain
	$(CARGO) build --workspace --bins --tests

release: toolchain
	$(CARGO) build --release -p mailloop-agent -p mailloop-coordinator

# Release packages: target/debian/mailloop-{coordinator,agent}_<version>-1_amd64.deb
# (binaries, systemd units, the coordinator's conffile; see deploy/debian).
deb: cargo-deb release
	$(CARGO) deb -p mailloop-coordinator --no-build
	$(CARGO) deb -p mailloop-agent --no-build
	@ls -l target/debian/*.deb

mailstack-up: deps
	@bash $(MAILSTACK)/up.sh

mailstack-down:
	@bash $(MAILSTACK)/down.sh

mailstack-purge:
	@bash $(MAILSTACK)/down.sh --purge

# The main job: a real round trip through the local stack, every step timed.
demo: mailstack-up release
	@mkdir -p $(dir $(DEMO_CONFIG))
	@bash scripts/demo-config.sh $(STACK_ENV) > $(DEMO_CONFIG)
	@echo "== mailloop-agent probe --config $(DEMO_CONFIG)"
	@./target/release/mailloop-agent probe --config $(DEMO_CONFIG); status=$$?; \
	  echo; echo "exit code $$status (0 ok, 1 degraded, 2 failed, 3 config error)"; \
	  [ $$status -le 1 ] || exit $$status
	@echo; echo "== a coordinator and two agents in two regions, probing the same stack"
	@bash scripts/demo-cluster.sh $(STACK_ENV) target/release
	@echo "the mail stack is still up: 'make mailstack-down' stops it"

# Stop the distributed demo's coordinator and agents.
demo-stop:
	@bash scripts/demo-cluster.sh stop

# Every test: unit tests, then the integration tests against the real stack.
# The stack comes down afterwards whether the tests passed or not. Then the
# supply-chain check (deny.toml), which also runs when a test failed.
test: deps build
	@bash $(MAILSTACK)/up.sh
	@status=0; \
	  $(CARGO) test --workspace --no-fail-fast || status=$$?; \
	  bash $(MAILSTACK)/down.sh || true; \
	  CARGO=$(CARGO) bash scripts/deny.sh || status=$$?; \
	  exit $$status

# cargo deny against deny.toml (installs cargo-deny from crates.io when missing).
deny: toolchain
	@CARGO=$(CARGO) bash scripts/deny.sh

bench: mailstack-up release
	$(CARGO) build --release -p mailloop-bench
	@BENCH=$(BENCH) bash scripts/bench.sh $(STACK_ENV)

# The screenshots in README: the status page's browser test's seeded page
# (coordinator/tests/status_page.rs) and a check's page, light and dark,
# taken by headless Chromium at 800 px; the SRE console's overview, a
# round's waterfall and an incident from its browser test
# (tests/tests/console.rs: real agents on the real stack, so the stack is
# brought up) at 1000 px, cut to 1100 px high. Copied into docs/screenshots
# and cut to a 256-colour palette by pngquant (Debian package, installed
# when missing): flat UI colours survive, the files shrink about 3 times.
screenshots: mailstack-up
	@command -v pngquant >/dev/null || apt-get install -y -qq pngquant >/dev/null
	STATUS_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots VIEWPORT_WIDTH=800 \
	  $(CARGO) test -p mailloop-coordinator --test status_page a_real_browser_renders -- --nocapture
	CONSOLE_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots VIEWPORT_WIDTH=1000 SCREENSHOT_MAX_HEIGHT=1100 \
	  $(CARGO) test -p mailloop-tests --test console the_console_shows_waterfalls -- --nocapture
	pngquant --force --skip-if-larger --strip --ext .png --speed 1 256 docs/screenshots/*.png
	@ls -l docs/screenshots

clean:
	$(CARGO) clean
