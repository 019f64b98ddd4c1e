# glassmesh: the two commands a new user runs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

# The interpreter the venv is made with: the system's python3 (Debian's, what `make dist`'s wheel runs
# on in production, see the README's hosts section) when it is 3.11+, can make a venv and has the
# headers the hot path compiles against; else the first python3 on PATH. Debian's is built with
# profile-guided and link-time optimisation; a python built without them (pyenv's default) costs the
# proxy pair about 4% more CPU per request, and `make bench` would measure an interpreter no host
# runs. PYTHON=... picks another.
PYTHON ?= $(shell p=/usr/bin/python3; [ -x $$p ] && $$p -c 'import sys, os, sysconfig, ensurepip; \
	sys.exit(sys.version_info < (3, 11) or not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	2>/dev/null && echo $$p || echo python3)
ARGS ?=

.PHONY: FORCE venv demo test test-deps bench lint clean dist reference

# The hot path is compiled with mypyc in place (setup.py): edits to it must rebuild.
HOT_SRC := setup.py mypyc.ini glassmesh/protocols/http1.py glassmesh/protocols/http1_codec.py glassmesh/protocols/mux.py glassmesh/protocols/mux_head.py glassmesh/proxy/http.py \
	glassmesh/proxy/sides.py glassmesh/proxy/pool.py glassmesh/proxy/mux.py glassmesh/proxy/linkstats.py glassmesh/proxy/ring.py \
	glassmesh/proxy/roundrobin.py glassmesh/proxy/routing.py glassmesh/proxy/tcp.py glassmesh/proxy/chain.py glassmesh/proxy/accepted.py glassmesh/proxy/observer.py \
	glassmesh/proxy/stages/endpoint.py glassmesh/proxy/stages/eject.py glassmesh/proxy/stages/balance.py glassmesh/proxy/stages/split.py glassmesh/proxy/stages/route.py glassmesh/proxy/stages/retry.py glassmesh/proxy/stages/overload.py glassmesh/proxy/stages/fault.py glassmesh/proxy/stages/mirror.py

# Which interpreter the venv was made with ($(VENV)/.python): when PYTHON resolves to another one, the
# venv is made anew (its compiled hot path and entry points belong to the old one).
VENV_PYTHON := $(shell readlink -f "$$(command -v $(PYTHON))")
ifneq ($(VENV_PYTHON),$(shell cat $(VENV)/.python 2>/dev/null))
VENV_STALE := FORCE
endif

# The stamp takes the time the build began (touch -r), not the time it ended: a source edited
# while mypyc compiled is newer than the stamp, so the next make rebuilds instead of keeping a
# compiled module older than its source.
$(VENV)/.installed: pyproject.toml $(HOT_SRC) $(VENV_STALE)
	@if [ -d $(VENV) ] && [ "$$(cat $(VENV)/.python 2>/dev/null)" != "$(VENV_PYTHON)" ]; then \
		echo "make: $(VENV) was made with another python; made anew with $(VENV_PYTHON)"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	echo "$(VENV_PYTHON)" > $(VENV)/.python
	touch $(VENV)/.building
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch -r $(VENV)/.building $@ && rm -f $(VENV)/.building

venv: $(VENV)/.installed

FORCE:

# The wheel (the hot path compiled: a failed C build is an error here) and the sdist, in dist/.
# python -m build makes the sdist, then the wheel from it: the sdist is proved to build.
dist: venv
	rm -rf dist
	GLASSMESH_REQUIRE_COMPILED=1 $(PY) -m build --outdir dist .

demo: venv
	$(VENV)/bin/glassmesh demo $(ARGS)

test-deps: venv
	bash scripts/install-test-deps.sh

# The suite runs on TEST_WORKERS pytest-xdist workers (TEST_WORKERS=0: one process, in order).
TEST_WORKERS ?= 2

test: test-deps
	$(PY) -m ruff check glassmesh tests
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(ARGS)

bench: venv
	bash bench/run.sh $(ARGS)

# docs/reference from the click commands and the schemas (a unit test fails when it is stale).
reference: venv
	$(PY) -m glassmesh.docs.reference

lint: venv
	$(PY) -m ruff check glassmesh tests

clean:
	rm -rf $(VENV) build *.egg-info
