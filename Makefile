# Agent Fleet Manager: every target installs what it needs first (the virtualenv is
# rebuilt when pyproject.toml changes) and stops every process it started.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STACK_DIR ?= .stack
JOB ?=

.PHONY: help setup tools up down status tick retrain demo test terraform-check secrets plan deploy unit integration lint schemas bench eval clean

help:
	@echo "make demo   - start the local stack, run a simulated fleet, print it, stop the stack"
	@echo "make test   - lint, type-check, unit and integration tests (starts and stops its own stack)"
	@echo "make up     - start the local stack in the background (writes $(STACK_DIR)/env); make down stops it"
	@echo "make tick JOB=<job> - publish one scheduler tick of <job> now to the stack of make up"
	@echo "make bench  - end-to-end benchmarks (writes the figures for docs/benchmarks.md)"
	@echo "make eval   - the learned anomaly detector against the static rules on a simulated fleet with labelled faults"
	@echo "make retrain - retrain the learned models now on the stack of make up (GET /v1/models lists them)"
	@echo "make plan / make deploy TFVARS=prod.tfvars - terraform plan / apply in terraform/ (Google Cloud)"

$(STAMP): pyproject.toml sdk/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./sdk -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

tools:
	@emulators/check_tools.sh

up: setup tools
	$(PY) -m emulators.stack up --state-dir $(STACK_DIR)

down: setup
	$(PY) -m emulators.stack down --state-dir $(STACK_DIR)

status: setup
	$(PY) -m emulators.stack status --state-dir $(STACK_DIR)

tick: setup
	@if [ -z "$(JOB)" ]; then \
		echo "usage: make tick JOB=<job>"; \
		$(PY) -m emulators.scheduler list; \
		exit 2; \
	fi
	$(PY) -m emulators.scheduler tick $(JOB) --state-dir $(STACK_DIR)

# Retrain the learned models now, against the stack of make up (the daily run is `make tick JOB=model-retrain`).
retrain: setup
	@test -f $(STACK_DIR)/env || { echo "no stack: run make up first"; exit 2; }
	set -a && . ./$(STACK_DIR)/env && set +a && $(PY) -m jobs.retrain

demo: setup tools
	$(PY) -m emulators.demo

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shared functions emulators sdk/fleet_agent jobs

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup tools
	$(PY) -m pytest -q tests/integration

# The Terraform checks (installing checkov the first time: mostly download) run beside the unit tests.
test: setup tools lint
	@( $(MAKE) --no-print-directory terraform-check > .terraform-check.log 2>&1; echo $$? > .terraform-check.rc ) & \
	checks=$$!; status=0; \
	$(PY) -m pytest -q tests/unit tests/integration || status=$$?; \
	wait $$checks; cat .terraform-check.log; rc=$$(cat .terraform-check.rc); rm -f .terraform-check.log .terraform-check.rc; \
	if [ $$rc -ne 0 ]; then echo "terraform-check failed"; fi; \
	[ $$status -eq 0 ] && [ $$rc -eq 0 ]

# Terraform checked offline (the Google provider cannot be downloaded here): formatting, and checkov in a
# virtualenv of its own (its dependencies clash with the application's). The HCL parse and the contract
# with the manifest and the code are tests/unit/test_terraform.py.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

$(CHECKOV_STAMP):
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet "checkov>=3.2,<4"
	@touch $@

terraform-check: $(CHECKOV_STAMP)
	terraform fmt -check -recursive terraform
	$(CHECKOV_VENV)/bin/checkov --directory terraform --framework terraform --skip-download --quiet --compact

# Deploy to Google Cloud (needs the Google provider, gcloud credentials and TFVARS, e.g. terraform/prod.tfvars).
TFVARS ?= example.tfvars
secrets:
	terraform -chdir=terraform init -input=false
	terraform -chdir=terraform apply -input=false -var-file=$(TFVARS) -target=google_secret_manager_secret.secret

plan:
	terraform -chdir=terraform init -input=false
	terraform -chdir=terraform plan -input=false -var-file=$(TFVARS) -out=fleet.tfplan

deploy:
	terraform -chdir=terraform apply -input=false fleet.tfplan

schemas: setup
	$(PY) -m shared.schemas docs/schemas

bench: setup tools
	$(PY) -m tests.bench.run

# Quality of the learned models on labelled faults (docs/ml.md); no emulator needed.
eval: setup
	$(PY) -m shared.ml.evaluate --rows-1m
	$(PY) -m shared.ml.evaluate --failure

clean: down
	rm -rf $(VENV) $(CHECKOV_VENV) .stack* .pytest_cache .mypy_cache .ruff_cache terraform/.build
