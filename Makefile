# wasmlet — the two commands a new machine needs: `make up` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COLLECTION_LINK := .collections/ansible_collections/wasmlet/kube
INVENTORY ?= inventories/local
PURGE ?= false
ARGS ?=

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH):/usr/local/go/bin

.PHONY: help venv up down test lint unit integration molecule sanity collection clean

help:
	@echo "make up          create .venv, then run site.yml: control plane, registry (see README)"
	@echo "make test        lint, ansible-test sanity, unit, integration and molecule tests"
	@echo "make down        stop everything make up started (PURGE=true also deletes ~/.wasmlet state)"
	@echo "make lint | unit | integration | molecule | sanity | collection"
	@echo "make bench       benchmarks against a tuned control plane of their own: bench/results, docs/performance.md"
	@echo "make bench-smoke every benchmark with tiny counts (checks the scripts; ARGS=--only NAME,...)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../.. $@

venv: $(STAMP) $(COLLECTION_LINK)

up: venv
	$(BIN)/ansible-playbook -i $(INVENTORY) site.yml $(ARGS)

down: venv
	$(BIN)/ansible-playbook -i $(INVENTORY) teardown.yml -e wasmlet_purge=$(PURGE) $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/ansible-lint

unit: venv
	$(BIN)/pytest tests/unit

integration: venv
	$(BIN)/pytest tests/integration

molecule: venv
	cd $(COLLECTION_LINK) && $(CURDIR)/$(BIN)/molecule test --all

# ansible-test wants the collection under ansible_collections/<ns>/<name> as a real tree,
# outside any git work tree (it lists files with git), and downloads a pip bootstrap script from a host CI cannot reach: give it the offline one.
SANITY_DIR := $(HOME)/.cache/wasmlet/sanity/ansible_collections/wasmlet/kube
ANSIBLE_TEST_PIP := $(shell $(BIN)/python -c "import re,ansible_test,pathlib;print(re.search(r\"pip='([0-9.]+)'\",(pathlib.Path(ansible_test.__file__).parent/'_internal/python_requirements.py').read_text()).group(1))" 2>/dev/null)

sanity: venv
	rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR)
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t $(SANITY_DIR)
	mkdir -p ~/.ansible/test/cache
	cp tests/sanity/get_pip.py ~/.ansible/test/cache/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py
	cd $(SANITY_DIR) && $(CURDIR)/$(BIN)/ansible-test sanity --python 3.11 --requirements

# The collection as users get it: build the artifact, install it into a clean path, render every
# module's docs and run `ansible-playbook wasmlet.kube.site` from the installed copy.
COLLECTION_OUT := $(HOME)/.cache/wasmlet/collection

collection: venv
	rm -rf $(COLLECTION_OUT) && mkdir -p $(COLLECTION_OUT)
	$(BIN)/ansible-galaxy collection build --force --output-path $(COLLECTION_OUT) .
	$(BIN)/ansible-galaxy collection install --force -p $(COLLECTION_OUT)/installed $(COLLECTION_OUT)/wasmlet-kube-*.tar.gz
	cd $(COLLECTION_OUT) && for m in $$(ls $(CURDIR)/plugins/modules | sed -n 's/\.py$$//p'); do \
	  ANSIBLE_COLLECTIONS_PATH=$(COLLECTION_OUT)/installed $(CURDIR)/$(BIN)/ansible-doc -t module wasmlet.kube.$$m >/dev/null || exit 1; done
	cd $(COLLECTION_OUT) && ANSIBLE_CONFIG= ANSIBLE_COLLECTIONS_PATH=$(COLLECTION_OUT)/installed \
	  $(CURDIR)/$(BIN)/ansible-playbook -i $(COLLECTION_OUT)/installed/ansible_collections/wasmlet/kube/inventories/local \
	  wasmlet.kube.site

test: lint sanity unit integration bench-smoke collection molecule

# Benchmarks (bench/run.py): numbers, not pass/fail. bench-smoke fails only when a script fails.
.PHONY: bench bench-smoke
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $@

bench: venv $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(ARGS)

bench-smoke: venv $(BENCH_STAMP)
	$(BIN)/python -m bench.run --smoke $(ARGS)

clean:
	rm -rf $(VENV) .collections .mypy_cache .ruff_cache .pytest_cache
