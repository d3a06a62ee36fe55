# Agent Fleet Manager: every target installs what it needs first, exactly the versions of the locks
# (uv.lock for the server and the developers' tools, tools/*/uv.lock for the tool virtualenvs), and stops
# every process it started. `make lock` is the one way to change a version.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STACK_DIR ?= .stack
JOB ?=

# The Python the functions run on (terraform/functions.tf python311, jobs/Dockerfile python:3.11-slim;
# tests/unit/test_lock.py holds the three together): .venv is built with it, so that the versions the tests
# run are the ones uv.lock resolves for the deployed runtime. Any CPython of that version on the machine.
RUNTIME_PYTHON := 3.11

# uv installs from the locks and writes them; uv itself comes from PyPI by pip, checked by hash.
UV_VENV := .venv-uv
UV := $(UV_VENV)/bin/uv
# A CPython of the machine's, never one uv would download.
export UV_PYTHON_DOWNLOADS := never

# The tool virtualenvs, each from its own lock (defined before the rules that name them).
CHECKOV_VENV ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
TFSCHEMA_VENV ?= .venv-tfschema
TFSCHEMA_STAMP := $(TFSCHEMA_VENV)/.installed
SDK_LATEST_VENV ?= .venv-sdk-latest

.PHONY: help setup tools browser up down status tick retrain demo test terraform-check secrets plan deploy unit integration lint schemas bench eval clean lock test-sdk-latest

help:
	@echo "make demo   - start the local stack, run a simulated fleet, print it, stop the stack"
	@echo "make test   - lint, type-check, unit and integration tests (starts and stops its own stack)"
	@echo "make up     - start the local stack in the background (writes $(STACK_DIR)/env); make down stops it"
	@echo "make tick JOB=<job> - publish one scheduler tick of <job> now to the stack of make up"
	@echo "make bench  - end-to-end benchmarks (writes the figures for docs/benchmarks.md)"
	@echo "make eval   - the learned anomaly detector against the static rules on both simulated fleets with labelled faults"
	@echo "make retrain - retrain the learned models now on the stack of make up (GET /v1/models lists them)"
	@echo "make lock [PACKAGE=name] - re-resolve the locks to the newest the ranges allow (then make test, then commit)"
	@echo "make test-sdk-latest - the agent SDK's tests against the newest releases its ranges allow"
	@echo "make plan / make deploy TFVARS=prod.tfvars - terraform plan / apply in terraform/ (Google Cloud)"

$(UV): tools/uv/requirements.txt
	@test -x $(UV_VENV)/bin/python || $(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r tools/uv/requirements.txt
	@touch $@

# --locked: a pyproject.toml changed without `make lock` stops here instead of installing something untested.
$(STAMP): uv.lock pyproject.toml sdk/pyproject.toml $(UV)
	$(UV) sync --locked --python $(RUNTIME_PYTHON)
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
	$(PY) -m mypy shared functions emulators sdk/fleet_agent jobs tools

unit: setup
	$(PY) -m pytest -q tests/unit

# Debian's Chromium for the console's browser tests (tests/integration/browser.py); installs it where missing.
browser:
	bash emulators/ensure_chromium.sh

integration: browser setup tools
	$(PY) -m pytest -q tests/integration

# The Terraform checks run beside the unit tests; FLEET_TF_ASSEMBLY lets tests/unit/test_terraform_schema.py
# prove the schema check on the provider's real schema.
# The unit tests (CPU-bound, about 2.5 min) run beside the integration tests (mostly waiting on the stack) and the
# Terraform checks: on 2 cores that keeps CI near 15 minutes. Each one's output is printed whole, in turn.
test: browser setup tools lint $(TFSCHEMA_STAMP)
	@( $(MAKE) --no-print-directory terraform-check > .terraform-check.log 2>&1; echo $$? > .terraform-check.rc ) & \
	checks=$$!; \
	( FLEET_TF_ASSEMBLY=$(TFSCHEMA_VENV) $(PY) -m pytest -q -p no:cacheprovider tests/unit > .unit-tests.log 2>&1; \
	  echo $$? > .unit-tests.rc ) & \
	unit=$$!; status=0; \
	$(PY) -m pytest -q tests/integration || status=$$?; \
	wait $$unit; echo "--- unit tests"; cat .unit-tests.log; urc=$$(cat .unit-tests.rc); rm -f .unit-tests.log .unit-tests.rc; \
	if [ $$urc -ne 0 ]; then echo "unit tests failed"; fi; \
	wait $$checks; cat .terraform-check.log; rc=$$(cat .terraform-check.rc); rm -f .terraform-check.log .terraform-check.rc; \
	if [ $$rc -ne 0 ]; then echo "terraform-check failed"; fi; \
	[ $$status -eq 0 ] && [ $$urc -eq 0 ] && [ $$rc -eq 0 ]

# Terraform checked offline (the Google provider cannot be downloaded here): formatting, checkov in a
# virtualenv of its own (its dependencies clash with the application's), and every resource's attribute and
# block names, required attributes and literal types against the provider's real schema
# (tools/terraform_schema.py). The HCL parse and the contract with the manifest and the code are
# tests/unit/test_terraform.py.

# A tool virtualenv from its own lock: $(call tool-venv,<tools/ folder>,<virtualenv>).
define tool-venv
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/$(2) $(UV) sync --locked --quiet --python $(PYTHON) --project tools/$(1)
	@touch $(2)/.installed
endef

$(CHECKOV_STAMP): tools/checkov/uv.lock tools/checkov/pyproject.toml $(UV)
	$(call tool-venv,checkov,$(CHECKOV_VENV))

# The provider's schema (a jsii assembly inside a PyPI wheel) for the offline schema check.
$(TFSCHEMA_STAMP): tools/terraform-provider/uv.lock tools/terraform-provider/pyproject.toml $(UV)
	$(call tool-venv,terraform-provider,$(TFSCHEMA_VENV))

terraform-check: setup $(CHECKOV_STAMP) $(TFSCHEMA_STAMP)
	terraform fmt -check -recursive terraform
	$(PY) -m tools.terraform_schema --assembly $(TFSCHEMA_VENV) terraform
	$(CHECKOV_VENV)/bin/checkov --directory terraform --framework terraform --skip-download --quiet --compact

# Every lock re-resolved to the newest versions the ranges allow (PACKAGE=<name>: that package alone), and
# requirements.txt exported from uv.lock. Then `make test`, and commit the locks in a commit that says so
# (docs/dependencies.md).
PACKAGE ?=
LOCK_UPGRADE = $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade)
lock: $(UV)
	$(UV) lock $(LOCK_UPGRADE)
	$(UV) lock $(LOCK_UPGRADE) --project tools/checkov
	$(UV) lock $(LOCK_UPGRADE) --project tools/terraform-provider
	$(UV) pip compile --quiet --universal --generate-hashes --python-version $(RUNTIME_PYTHON) \
		--custom-compile-command 'make lock' tools/uv/requirements.in -o tools/uv/requirements.txt
	@{ printf '%s\n' \
	  "# What Cloud Functions installs for the functions (its Python buildpack reads requirements.txt, ahead of" \
	  "# pyproject.toml): exactly the versions of uv.lock, exported by \`make lock\`; never edit it by hand" \
	  "# (tests/unit/test_lock.py fails when the two disagree). The agent SDK comes from this source (./sdk);" \
	  "# the project itself is imported from the source root (functions/main.py)."; \
	  $(UV) export --frozen --no-dev --no-hashes --no-emit-project --no-editable --no-header --format requirements-txt; \
	} > requirements.txt.new && mv requirements.txt.new requirements.txt
	@git --no-pager diff --stat -- uv.lock tools requirements.txt || true

# The SDK is a library: agents install it beside their own dependencies, within its ranges. Its tests, against
# the newest releases those ranges allow, in a fresh virtualenv holding the SDK alone (and the locked pytest).
# The SDK is built from a copy, so that no build/ or egg-info is left in sdk/ (the deployed source).
test-sdk-latest: $(UV)
	rm -rf $(SDK_LATEST_VENV)
	$(UV) venv --quiet --python $(PYTHON) $(SDK_LATEST_VENV)
	cp -r sdk $(SDK_LATEST_VENV)/sdk-source
	$(UV) pip install --quiet --python $(SDK_LATEST_VENV)/bin/python --refresh --resolution highest $(SDK_LATEST_VENV)/sdk-source \
		"pytest==$$($(PYTHON) -c 'import tomllib; print(next(p["version"] for p in tomllib.load(open("uv.lock", "rb"))["package"] if p["name"] == "pytest"))')"
	$(UV) pip list --python $(SDK_LATEST_VENV)/bin/python | grep -iE '^(fleet-agent|google-cloud-pubsub|pydantic|pydantic-core|protobuf|grpcio|google-api-core) '
	$(SDK_LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_sdk_*.py

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
	$(PY) -m shared.platform.schemas docs/schemas

bench: setup tools
	$(PY) -m tests.bench.run

# Quality of the learned models on labelled faults (docs/ml.md); no emulator needed.
eval: setup
	$(PY) -m shared.ml.evaluate --rows 3780 --train-rows 2880 --rows-1m
	$(PY) -m shared.ml.evaluate --failure
	$(PY) -m shared.ml.evaluate_mixed

clean: down
	rm -rf $(VENV) $(UV_VENV) $(CHECKOV_VENV) $(TFSCHEMA_VENV) $(SDK_LATEST_VENV) .stack* .pytest_cache .mypy_cache .ruff_cache terraform/.build
