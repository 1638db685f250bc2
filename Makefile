# mqtt-twisted: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Editable in "compat" mode: twistd sees the plugin and the code stays live (PEP 660 mode hides the plugin).
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q
EDITABLE := --config-settings editable_mode=compat
ARGS ?=

.PHONY: run test check install install-test install-check clean bench bench-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(PIP_INSTALL) -e . $(EDITABLE)
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[test]' $(EDITABLE)
	touch $@

$(VENV)/.installed-speedups: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[speedups]' $(EDITABLE)
	touch $@

# The packet parser compiled with mypyc (pure Python without a C compiler); rebuilt when
# parser.py changes, and never used for a parser.py it was not built from.
$(VENV)/.speedups: $(VENV)/.installed-speedups mqtt_twisted/packets/parser.py tools/build_speedups.py
	$(BIN)/python tools/build_speedups.py
	touch $@

install: $(VENV)/.installed $(VENV)/.speedups

install-test: $(VENV)/.installed-test $(VENV)/.speedups

$(VENV)/.installed-check: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[check]' $(EDITABLE)
	touch $@

install-check: $(VENV)/.installed-check

## make run: create .venv, install, start the broker with its defaults (tcp:1883 on 127.0.0.1)
run: install
	$(BIN)/twistd -n mqtt $(ARGS)

## make test: install the test extra and run the whole suite
test: install-test
	$(BIN)/python -m pytest $(ARGS)

## make check: ruff (lint and format) and mypy (with mypy-zope), as CI runs them
check: install-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## make bench: ours vs Mosquitto and amqtt when installed (ARGS=--quick: under 2 minutes)
bench: install
	ulimit -n 65536 2>/dev/null || ulimit -n $$(ulimit -Hn); $(BIN)/python bench/run.py $(ARGS)

## make bench-deps: Debian's mosquitto, amqtt in bench/.venv-amqtt, py-spy in .venv
bench-deps: install
	test -x /usr/sbin/mosquitto || (apt-get update && apt-get install -y --no-install-recommends mosquitto)
	test -x bench/.venv-amqtt/bin/amqtt || ($(PYTHON) -m venv bench/.venv-amqtt && \
		bench/.venv-amqtt/bin/pip install --disable-pip-version-check -q amqtt)
	$(PIP_INSTALL) py-spy

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache mqtt_twisted/packets/_parser_compiled*.so
