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

.PHONY: help venv up down test lint unit integration molecule sanity clean

help:
	@echo "make up          create .venv, then run site.yml: control plane, registry (see README)"
	@echo "make test        lint, unit, integration and molecule tests"
	@echo "make down        stop everything make up started (PURGE=true also deletes ~/.wasmlet state)"
	@echo "make lint | unit | integration | molecule | sanity"

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

test: lint unit integration molecule

clean:
	rm -rf $(VENV) .collections .mypy_cache .ruff_cache .pytest_cache
