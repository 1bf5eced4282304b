# `make demo` and `make test` each set everything up on a fresh machine with Python 3.11
# and Java 17: a .venv, the pinned dependencies, and the cached Delta jars.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: demo test bench lint java warm clean setup

setup: $(STAMP) warm

java:
	@if ! command -v java >/dev/null 2>&1 && [ -z "$$JAVA_HOME" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "Java not found: installing openjdk-17-jre-headless"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; \
	  else \
	    echo "Java 17 is required: apt-get install -y openjdk-17-jre-headless (Debian/Ubuntu)," \
	         "brew install openjdk@17 (macOS), or set JAVA_HOME"; exit 2; \
	  fi; \
	fi

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Resolves the Delta jars from Maven Central once (Ivy cache) and round-trips a Delta table.
warm: java $(STAMP)
	$(BIN)/python -m jobs.lakehouse.session

demo: setup
	$(BIN)/fulcrum demo --out $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest

# Each benchmark prints a table (figures beside their peer, same run) and writes bench-results/*.json.
bench: setup
	@set -e; for b in tests/bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

lint: $(STAMP)
	$(BIN)/ruff check jobs training tests
	$(BIN)/lint-imports

clean:
	rm -rf $(DEMO_DIR) lake spark-warehouse metastore_db .pytest_cache
