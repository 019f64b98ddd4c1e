# glassmesh: the two commands a new user runs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: venv demo test test-deps bench lint clean dist reference

# The hot path is compiled with mypyc in place (setup.py): edits to it must rebuild.
HOT_SRC := setup.py mypyc.ini glassmesh/protocols/http1.py glassmesh/protocols/http1_codec.py glassmesh/protocols/mux.py glassmesh/proxy/http.py \
	glassmesh/proxy/sides.py glassmesh/proxy/pool.py glassmesh/proxy/mux.py glassmesh/proxy/linkstats.py glassmesh/proxy/ring.py \
	glassmesh/proxy/roundrobin.py glassmesh/proxy/routing.py glassmesh/proxy/tcp.py glassmesh/proxy/chain.py glassmesh/proxy/accepted.py glassmesh/proxy/observer.py \
	glassmesh/proxy/stages/endpoint.py glassmesh/proxy/stages/eject.py glassmesh/proxy/stages/balance.py glassmesh/proxy/stages/split.py glassmesh/proxy/stages/route.py glassmesh/proxy/stages/retry.py glassmesh/proxy/stages/overload.py glassmesh/proxy/stages/fault.py glassmesh/proxy/stages/mirror.py

# The stamp takes the time the build began (touch -r), not the time it ended: a source edited
# while mypyc compiled is newer than the stamp, so the next make rebuilds instead of keeping a
# compiled module older than its source.
$(VENV)/.installed: pyproject.toml $(HOT_SRC)
	python3 -m venv $(VENV)
	touch $(VENV)/.building
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch -r $(VENV)/.building $@ && rm -f $(VENV)/.building

venv: $(VENV)/.installed

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
