# capa: the one interface. CI calls the same targets.
SHELL := /bin/bash
BEAM := .venvs/beam/bin
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: setup demo test test-unit test-integration test-onprem lint bench chaos chaos-poison up up-onprem down status clean

setup:            ## install everything (envs, PostgreSQL, Maven jars)
	bash scripts/setup.sh all

demo: setup       ## the main job on the embedded default
	$(BEAM)/capa demo

test: setup       ## the default test run: unit + integration
	$(BEAM)/python -m pytest -m "not bench and not onprem" -p no:cacheprovider

test-unit: setup
	$(BEAM)/python -m pytest -m "unit" -p no:cacheprovider

test-integration: setup
	$(BEAM)/python -m pytest -m "integration and not onprem" -p no:cacheprovider

test-onprem: setup  ## the onprem profile: Spark standalone cluster + running Airflow (minutes)
	$(BEAM)/python -m pytest -m "onprem" -p no:cacheprovider tests/integration/test_onprem_cluster.py

up-onprem: setup  ## the onprem process profile (Kafka, PostgreSQL, Spark cluster, Airflow)
	$(BEAM)/capa up --profile onprem

lint: setup
	$(BEAM)/ruff check capa capa_app connectors beam_jobs spark_jobs dags tests bench
	$(BEAM)/ruff format --check capa capa_app connectors beam_jobs spark_jobs dags tests bench
	$(BEAM)/mypy
	$(BEAM)/lint-imports

bench: setup      ## benchmarks; writes docs/benchmarks.md
	$(BEAM)/python -m bench.run_all

chaos: setup      ## long fault-injection run
	$(BEAM)/python -m capa_app.chaos

chaos-poison: setup  ## long fault-injection run with poison records mixed in
	$(BEAM)/python -m capa_app.chaos --poison

up: setup
	$(BEAM)/capa up
status:
	$(BEAM)/capa status
down:
	$(BEAM)/capa down

clean:            ## stop the stack, delete .state (and a cluster kept outside it)
	-$(BEAM)/capa clean
	rm -rf .state
