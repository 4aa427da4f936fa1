# The two commands of the README: `make demo` plays the tutorial end to end on a local
# control plane; `make test` runs every test. Both build what they need first.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: setup build lint test demo control-plane clean-cache

## Build or find the pinned kube-apiserver, etcd, helm and CRDs (cached by version).
setup:
	testenv/setup.sh

build:
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Everything CI runs.
test: setup lint
	$(CARGO) test --workspace --no-fail-fast

## The seed tutorial, end to end, on a local control plane.
demo: setup build
	scripts/demo.sh

## A control plane in the foreground; writes ./kubeconfig.
control-plane: setup
	$(CARGO) run -p testenv -- up --kubeconfig ./kubeconfig
