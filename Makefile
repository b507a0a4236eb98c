# sscontrol-signaling: development, test and packaging entry points.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8443
ADMIN_PORT ?= 9464

.PHONY: run test unit-test no-shortcuts-test system-deps deb system-test bench clean

$(STAMP): requirements.txt requirements-test.txt setup.cfg pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  echo "installing: python3.11-venv (python3 -m venv needs it)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3.11-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements.txt -r requirements-test.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . --config-settings editable_mode=compat
	touch $@

venv: $(STAMP)

# Debian packages the tests drive for real (installed only when missing).
SYSTEM_PACKAGES := redis-server:redis-server coturn:turnserver prometheus:promtool nginx:nginx haproxy:haproxy \
                   chromium:chromium iproute2:ip
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  pkg=$${pair%%:*}; cmd=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# make run [HOST=...] [PORT=...] [ADMIN_PORT=...]: the daemon in the foreground, logging to
# the terminal as it does to the journal (the plugin installs the project's log observer).
run: $(STAMP)
	@echo "sscontrol-signaling on ws://$(HOST):$(PORT)/ (in-memory state, auth off)."
	@echo "  connect: $(BIN)/websockets ws://$(HOST):$(PORT)/ws   then send {\"type\":\"join\",\"room_id\":\"demo\"}"
	@echo "  health:  curl http://$(HOST):$(PORT)/health    metrics: curl http://127.0.0.1:$(ADMIN_PORT)/metrics"
	$(BIN)/twistd --nodaemon --pidfile= --reactor sscontrol-epoll sscontrol-signaling --host $(HOST) --port $(PORT) --admin-port $(ADMIN_PORT)

# Node.js for the ws client the compatibility tests run (and the benchmarks).
.PHONY: node-deps
node-deps:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "installing: nodejs npm"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }

NODE_CLIENT := tests/clients/node/node_modules/.package-lock.json
$(NODE_CLIENT): tests/clients/node/package.json tests/clients/node/package-lock.json | node-deps
	cd tests/clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

unit-test: $(STAMP) system-deps $(NODE_CLIENT)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# The suite once more with the shortcuts into Twisted's and Autobahn's internals off
# (sscontrold/shortcuts/): their public path must behave the same. The daemons the
# tests start take SSCONTROL_SHORTCUTS from the environment (tests/conftest.py).
no-shortcuts-test: $(STAMP) system-deps $(NODE_CLIENT)
	SSCONTROL_SHORTCUTS=off $(BIN)/python -m pytest -q -p no:cacheprovider -m 'not system' \
	  --ignore=tests/system --ignore=tests/browser tests

test: unit-test no-shortcuts-test

# Static analysis (docs/development.md): any finding fails `make test`.
.PHONY: lint
lint: $(STAMP)
	$(BIN)/ruff check sscontrold tests bench twisted
	$(BIN)/bandit -q -r sscontrold
	$(BIN)/mypy
	$(BIN)/mypy --strict sscontrold/domain
unit-test: lint

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis

# --- test layers and coverage (begin)
# make check           -> the fast layers alone (settings, tree, memory, domain; tests/layers.py):
#                         in process, no port, no daemon; prints their counts and test time.
# make test            -> every layer (tests/layers.py prints the count of each), measured by
#                         coverage.py, lines and branches, the daemons the tests start included
#                         (COVERAGE_PROCESS_START and the .pth files below); then the report of
#                         sscontrold/ with the uncovered lines. The system tests run the .deb in
#                         a container: out of coverage's reach.
COVERAGE_DIR := $(CURDIR)/build/coverage
.PHONY: check coverage-hook coverage-report

check: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m fast tests

# coverage's wheel installs a1_coverage.pth (starts measuring when COVERAGE_PROCESS_START
# is set); ours makes a process that kills itself with a signal (twistd after SIGTERM)
# save its data first (tests/coverage/selfkill.py).
coverage-hook: $(STAMP)
	@site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	test -f $$site/a1_coverage.pth || { echo "coverage's a1_coverage.pth is missing from $$site" >&2; exit 1; }; \
	echo "import os; p = '$(CURDIR)/tests/coverage/selfkill.py'; os.path.exists(p) and exec(open(p).read())" \
	  > $$site/zz_sscontrol_coverage.pth
	rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR)

unit-test: coverage-hook
unit-test coverage-report: export COVERAGE_PROCESS_START := $(CURDIR)/setup.cfg
unit-test coverage-report: export COVERAGE_FILE := $(COVERAGE_DIR)/data

coverage-report: unit-test
	$(BIN)/coverage combine -q --rcfile=setup.cfg
	$(BIN)/coverage report --rcfile=setup.cfg

test: coverage-report
# --- test layers and coverage (end)

# --- packaging and system test (begin)
# make deb          -> build/deb/sscontrol-signaling_<version>_<arch>.deb (dh-virtualenv), rebuilt
#                      only when a packaged source is newer; built in a staged copy
#                      (build/deb/src) so the work tree stays clean.
# make deb-lint     -> lintian on it (errors fail).
# make system-test  -> only the pytest tests marked `system` (a booted Debian 12 container
#                      under systemd-nspawn; root). `make test` runs them too.
# Tools are apt-get installed when missing (CI machines start fresh).
DEB_NAME      := sscontrol-signaling
DEB_DIR       := build/deb
DEB_VERSION   := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
DEB_ARCH      := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_FILE      := $(DEB_DIR)/$(DEB_NAME)_$(DEB_VERSION)_$(DEB_ARCH).deb
# etc/: the two conffiles, and the operations files shipped as examples (debian/*.examples).
DEB_SOURCES   := setup.cfg pyproject.toml requirements.txt sscontrold twisted etc/sscontrol/signaling.conf \
                 etc/default/sscontrol-signaling etc/sysctl.d etc/systemd etc/prometheus etc/grafana \
                 etc/nginx etc/haproxy systemd debian $(wildcard README.md LICENSE*)
DEB_EXCLUDE   := __pycache__ '*.pyc' dropin.cache debian/$(DEB_NAME) debian/.debhelper
DEB_INPUTS    := $(shell find $(DEB_SOURCES) \( -path debian/$(DEB_NAME) -o -path debian/.debhelper \) -prune \
                   -o -type f ! -name '*.pyc' ! -name dropin.cache ! -path '*/__pycache__/*' -print 2>/dev/null)
# Debian packages -> a file each one provides (checked before apt-get is run at all).
PACKAGING_PACKAGES := debhelper:/usr/bin/dh dh-virtualenv:/usr/bin/dh_virtualenv dpkg-dev:/usr/bin/dpkg-buildpackage \
                      build-essential:/usr/share/build-essential/list python3.11-venv:/usr/lib/python3.11/ensurepip/__init__.py \
                      lintian:/usr/bin/lintian debootstrap:/usr/sbin/debootstrap \
                      debian-archive-keyring:/usr/share/keyrings/debian-archive-keyring.gpg \
                      systemd-container:/usr/bin/systemd-nspawn util-linux:/usr/bin/nsenter procps:/usr/bin/pgrep
PYTEST_SYSTEM ?= -q -p no:cacheprovider

.PHONY: packaging-deps deb-lint print-deb

packaging-deps:
	@missing=""; for pair in $(PACKAGING_PACKAGES); do \
	  [ -e "$${pair#*:}" ] || missing="$$missing $${pair%%:*}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deb: $(DEB_FILE)

print-deb:
	@echo $(DEB_FILE)

$(DEB_FILE): $(DEB_INPUTS) | packaging-deps
	@test -f etc/sscontrol/signaling.conf || { echo "etc/sscontrol/signaling.conf is missing: it is the package's conffile" >&2; exit 1; }
	rm -rf $(DEB_DIR)/src && mkdir -p $(DEB_DIR)/src
	tar -c $(addprefix --exclude=,$(DEB_EXCLUDE)) $(DEB_SOURCES) | tar -x -C $(DEB_DIR)/src
	@echo "dpkg-buildpackage (log: $(DEB_DIR)/build.log)"
	@cd $(DEB_DIR)/src && env -u PYTHONPATH -u PIP_REQUIRE_VIRTUALENV PATH=/usr/sbin:/usr/bin:/sbin:/bin \
	    dpkg-buildpackage -b -us -uc > ../build.log 2>&1 \
	  || { tail -n 60 ../build.log >&2; exit 1; }
	@test -f $@ && ls -l $@

deb-lint: $(DEB_FILE)
	lintian --fail-on error --no-tag-display-limit $(DEB_FILE)

system-test: $(STAMP) packaging-deps
	$(BIN)/python -m pytest $(PYTEST_SYSTEM) -m system tests/system

# `make test` runs the system tests too (they are under tests/): give it their tools.
unit-test: packaging-deps
# --- packaging and system test (end)

# --- bench (begin)
# make bench        -> bench/run.py: sscontrold and the reference Node.js `ws` relay side by
#                      side (relay, churn plain/TLS full and resumed, idle, reconnect storm:
#                      server pinned to core 0, the generator to core 1; and `cores`: every
#                      core, N processes on one port + Redis, unpinned, saturation and open
#                      loop at 80 %/120 % of it), alternating rounds; prints the figures, the
#                      ratios and every target MET/NOT MET, keeps the JSON lines and SVG charts
#                      in build/bench/. ~15 minutes (BENCH_ROUNDS=3: ~20).
#                      Quick look: make bench BENCH_SECONDS=2 BENCH_SHORT=1 BENCH_ROUNDS=1 (~3 min)
# make bench-smoke  -> seconds: the generator against sscontrold, figures sanity-checked
#                      (bench/smoke.sh; needs node, no npm install). Not part of `make test`.
BENCH_NPM := bench/reference/node_modules/.package-lock.json bench/loadgen/node_modules/.package-lock.json
BENCH_ARGS ?=

.PHONY: bench-smoke bench-deps bench-workers bench-ab

bench-deps: node-deps
	@command -v taskset >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 || { \
	  echo "installing: util-linux openssl"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends util-linux openssl; }

bench/%/node_modules/.package-lock.json: bench/%/package.json bench/%/package-lock.json | bench-deps
	cd bench/$* && npm ci --no-audit --no-fund --loglevel=error
	touch $@

bench: $(STAMP) bench-deps system-deps $(BENCH_NPM)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# make bench-workers -> only the `cores` family of make bench (bench/run.py --only cores):
#                      sscontrold with 1 and with one process per core on one port
#                      (reuse_port) sharing rooms through a local redis-server, against the
#                      reference; saturation, then open loop at 80 % and 120 % of it, with
#                      its targets; nothing pinned. ~6 minutes (2 rounds).
bench-workers: $(STAMP) bench-deps system-deps $(BENCH_NPM)
	$(BIN)/python bench/run.py --only cores $(BENCH_ARGS)

# make bench-ab BENCH_OLD=<rev> -> bench/ab.py: this checkout's daemon against the build of
#                      <rev> (checked out and installed under build/ab/ once), each beside
#                      the reference, alternating; relay C=2000 W=16 and churn plain. ~5 minutes.
BENCH_OLD ?=
bench-ab: $(STAMP) bench-deps system-deps $(BENCH_NPM)
	@test -n "$(BENCH_OLD)" || { echo "make bench-ab: say which build to compare with: BENCH_OLD=<git revision>"; exit 2; }
	$(BIN)/python bench/ab.py --old $(BENCH_OLD) $(BENCH_ARGS)

bench-smoke: $(STAMP) bench-deps
	bench/smoke.sh
# --- bench (end)
