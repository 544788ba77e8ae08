# Development tasks for raps. `make help` lists the targets.

PYTHON ?= python3
VENV := .venv
# etc/raps-dev.toml is etc/raps.toml's defaults with the demo page on.
CONFIG ?= etc/raps-dev.toml

# Touched after a successful install, so that the venv is rebuilt only when
# the project's dependencies may have changed.
STAMP := $(VENV)/.installed

# A second venv, on PyPy, that runs the daemon only: the test extras are not
# installed in it, because the suite runs on CPython.
PYPY ?= pypy3
PYPY_VENV := .venv-pypy3
PYPY_STAMP := $(PYPY_VENV)/.installed

.DEFAULT_GOAL := venv
.PHONY: help venv venv-pypy3 run test bench lint typecheck install-redis stop-redis clean

help:
	@echo "make venv        create $(VENV) and install raps editable with its test extras"
	@echo "make venv-pypy3  create $(PYPY_VENV) with $(PYPY) and install raps editable, without extras"
	@echo "make run         start a private Redis if none replies, then run the daemon (CONFIG=$(CONFIG))"
	@echo "make test        ruff, mypy and pytest; installs redis-server when missing"
	@echo "make bench       benchmark the daemon (PYTHON=pypy3: on PyPy); see docs/performance.md"
	@echo "make lint        ruff check and ruff format --check only"
	@echo "make typecheck   mypy only"
	@echo "make stop-redis  stop the private redis-server that make run started"
	@echo "make clean       remove $(VENV), $(PYPY_VENV), build output and caches (keeps .redis/)"

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@# Debian splits venv's ensurepip into the python3-venv package.
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || scripts/apt-install python3-venv
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

venv-pypy3: $(PYPY_STAMP)

$(PYPY_STAMP): pyproject.toml setup.py
	@command -v $(PYPY) >/dev/null 2>&1 || scripts/apt-install pypy3 pypy3-venv
	@# Debian's ensurepip takes pip from /usr/share/python-wheels, which the
	@# pypy3-venv package pulls in; without it ensurepip.version() is None.
	@$(PYPY) -c 'import ensurepip, sys, venv; sys.exit(ensurepip.version() is None)' 2>/dev/null \
		|| scripts/apt-install pypy3-venv
	$(PYPY) -m venv $(PYPY_VENV)
	$(PYPY_VENV)/bin/pip install --quiet --upgrade pip
	$(PYPY_VENV)/bin/pip install -e .
	touch $@

run: $(STAMP)
	$(VENV)/bin/python scripts/ensure-redis --config $(CONFIG)
	@$(VENV)/bin/python scripts/demo-hint $(CONFIG)
	$(VENV)/bin/twistd -n --pidfile= raps --config $(CONFIG)

install-redis:
	@$(PYTHON) scripts/ensure-redis --install-only

lint: $(STAMP)
	$(VENV)/bin/ruff check redis_ajax_push tests bench
	$(VENV)/bin/ruff format --check redis_ajax_push tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The suite starts its own redis-server on a free loopback port, so it needs
# only the binary. tests/test_pypy.py runs the daemon from $(PYPY_VENV) when
# make venv-pypy3 has built it (.ci/run does), and skips otherwise.
test: $(STAMP) install-redis lint typecheck
	$(VENV)/bin/pytest

# make bench measures the daemon on CPython from $(VENV); with
# PYTHON=pypy3 (or another PyPy) it runs the daemon from $(PYPY_VENV) and the
# load driver still from $(VENV). BENCH_ARGS passes options to bench/run.py,
# for example BENCH_ARGS=--quick.
ifneq (,$(findstring pypy,$(notdir $(PYTHON))))
bench: PYPY = $(PYTHON)
bench: $(PYPY_STAMP)
	$(MAKE) venv install-redis PYTHON=python3
	$(VENV)/bin/python bench/run.py --python $(PYPY_VENV)/bin/python $(BENCH_ARGS)
else
bench: $(STAMP) install-redis
	$(VENV)/bin/python bench/run.py --python $(VENV)/bin/python $(BENCH_ARGS)
endif

stop-redis:
	@$(PYTHON) scripts/ensure-redis --stop

clean:
	rm -rf $(VENV) $(PYPY_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f twisted/plugins/dropin.cache
