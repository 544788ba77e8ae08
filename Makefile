# Development tasks for raps. `make help` lists the targets.

PYTHON ?= python3
VENV := .venv
# etc/raps-dev.toml is etc/raps.toml's defaults with the demo page on.
CONFIG ?= etc/raps-dev.toml

# Touched after a successful install, so that the venv is rebuilt only when
# the project's dependencies may have changed.
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := venv
.PHONY: help venv run test lint typecheck install-redis stop-redis clean

help:
	@echo "make venv        create $(VENV) and install raps editable with its test extras"
	@echo "make run         start a private Redis if none replies, then run the daemon (CONFIG=$(CONFIG))"
	@echo "make test        ruff, mypy and pytest; installs redis-server when missing"
	@echo "make lint        ruff check and ruff format --check only"
	@echo "make typecheck   mypy only"
	@echo "make stop-redis  stop the private redis-server that make run started"
	@echo "make clean       remove $(VENV), build output and caches (keeps .redis/)"

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@# Debian splits venv's ensurepip into the python3-venv package.
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || scripts/apt-install python3-venv
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/python scripts/ensure-redis --config $(CONFIG)
	@$(VENV)/bin/python scripts/demo-hint $(CONFIG)
	$(VENV)/bin/twistd -n --pidfile= raps --config $(CONFIG)

install-redis:
	@$(PYTHON) scripts/ensure-redis --install-only

lint: $(STAMP)
	$(VENV)/bin/ruff check redis_ajax_push tests
	$(VENV)/bin/ruff format --check redis_ajax_push tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The suite starts its own redis-server on a free loopback port, so it needs
# only the binary.
test: $(STAMP) install-redis lint typecheck
	$(VENV)/bin/pytest

stop-redis:
	@$(PYTHON) scripts/ensure-redis --stop

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f twisted/plugins/dropin.cache
