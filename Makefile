# `make test` works on a fresh clone: it creates .venv, installs Gossamer with its
# test extras, then runs the linters, the type checker and the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint typecheck unit demo bench clean golden h2-build-deps

# The native HTTP/2 engines (decisions 0097, 0102) are built by pip when a C compiler,
# pkg-config, Python's headers and libnghttp2's are present; as root on Debian they are
# installed here. Without them the install goes on and the proxy uses the pure-Python
# codec, but the test suite, which tests each engine, fails the native ones and says why.
H2_BUILD_DEPS := gcc pkg-config libnghttp2-dev python3-dev

h2-build-deps:
	@if ! command -v gcc >/dev/null || ! pkg-config --exists libnghttp2 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; \
	    apt-get install -y -qq $(H2_BUILD_DEPS) >/dev/null; \
	  else \
	    echo "note: without $(H2_BUILD_DEPS) the native HTTP/2 codec is not built"; \
	  fi; \
	fi

$(BIN)/gossamer: pyproject.toml setup.py src/gossamer/proxy/wire/_h2native.c src/gossamer/proxy/wire/_h1native.c \
		src/gossamer/proxy/wire/_h2session.c src/gossamer/proxy/wire/_h2fields.c | h2-build-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# xds-protos (the envoy extra) ships older opentelemetry protos over the files of
	# opentelemetry-proto, whichever pip installs last; the tests decode the proxy's OTLP
	# with opentelemetry-proto's (ResourceSpans.scope_spans), so its files go in last.
	$(BIN)/python -m pip install -q --force-reinstall --no-deps "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $@

lint: $(BIN)/gossamer
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)

typecheck: $(BIN)/gossamer
	$(BIN)/mypy src

unit: $(BIN)/gossamer
	$(BIN)/pytest

test: lint typecheck unit

golden: $(BIN)/gossamer
	UPDATE_GOLDEN=1 $(BIN)/pytest tests

demo: $(BIN)/gossamer
	$(BIN)/gossamer demo

# `make bench` needs nginx, wrk and h2load (Debian: nginx-light wrk nghttp2-client);
# bench/run.py installs them with apt-get when run as root. Pass options with
# BENCH_ARGS, e.g. make bench BENCH_ARGS="--only direct,gossamer --duration 5".
bench: $(BIN)/gossamer
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
