# sscontrol-signaling: development, test and packaging entry points.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8443

.PHONY: run test unit-test system-deps deb system-test bench clean

$(STAMP): requirements.txt requirements-test.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements.txt -r requirements-test.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . --config-settings editable_mode=compat
	touch $@

venv: $(STAMP)

# Debian packages the tests drive for real (installed only when missing).
SYSTEM_PACKAGES := redis-server:redis-server coturn:turnserver prometheus:promtool
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  pkg=$${pair%%:*}; cmd=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: $(STAMP)
	@echo "sscontrol-signaling on ws://$(HOST):$(PORT)/ (in-memory state, auth off)."
	@echo "  connect: python -m websockets ws://$(HOST):$(PORT)/ws   then send {\"type\":\"join\",\"room_id\":\"demo\"}"
	@echo "  health:  curl http://$(HOST):$(PORT)/health    metrics: curl http://127.0.0.1:9464/metrics"
	$(BIN)/twistd --nodaemon --pidfile= sscontrol-signaling --host $(HOST) --port $(PORT)

unit-test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test: unit-test

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
