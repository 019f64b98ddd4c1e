# glassmesh: the two commands a new user runs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: venv demo test test-deps bench lint clean

# The hot path is compiled with mypyc in place (setup.py): edits to it must rebuild.
HOT_SRC := setup.py mypyc.ini glassmesh/protocols/http1.py glassmesh/protocols/mux.py glassmesh/proxy/http.py \
	glassmesh/proxy/sides.py glassmesh/proxy/pool.py glassmesh/proxy/mux.py glassmesh/proxy/linkstats.py \
	glassmesh/proxy/roundrobin.py glassmesh/proxy/routing.py glassmesh/proxy/tcp.py glassmesh/proxy/chain.py \
	glassmesh/proxy/stages/endpoint.py glassmesh/proxy/stages/eject.py glassmesh/proxy/stages/balance.py glassmesh/proxy/stages/split.py glassmesh/proxy/stages/route.py glassmesh/proxy/stages/retry.py glassmesh/proxy/stages/overload.py glassmesh/proxy/stages/fault.py glassmesh/proxy/stages/mirror.py

$(VENV)/.installed: pyproject.toml $(HOT_SRC)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/glassmesh demo $(ARGS)

test-deps: venv
	bash scripts/install-test-deps.sh

test: test-deps
	$(PY) -m ruff check glassmesh tests
	$(PY) -m pytest -q $(ARGS)

bench: venv
	bash bench/run.sh $(ARGS)

lint: venv
	$(PY) -m ruff check glassmesh tests

clean:
	rm -rf $(VENV) build *.egg-info
