# The two commands of the README: `make demo` plays the tutorial end to end on a local
# control plane; `make test` runs every test. Both build what they need first.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: setup setup-original build lint test bench bench-abn bench-load demo control-plane clean-cache image-local plugin

## Build or find the pinned kube-apiserver, etcd, helm, CRDs, istiod, Envoy and MLServer (cached by version).
setup:
	testenv/setup.sh

build:
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## The original Iter8 controller too (cached by version): crates/bench's test compares against it.
setup-original:
	testenv/setup.sh --with-original

## Everything CI runs.
test: setup-original lint
	$(CARGO) test --workspace --no-fail-fast

## The floor, our controller and the original, side by side (see BENCHMARKS.md). APPS=100 CANDIDATES=50.
APPS ?= 100
CANDIDATES ?= 50
bench: setup-original
	$(CARGO) build --release -p iter8 -p bench
	target/release/bench --apps $(APPS) --candidates $(CANDIDATES)

## The A/B/n service against the original's (see BENCHMARKS.md).
bench-abn: setup-original
	$(CARGO) build --release -p iter8 -p bench
	target/release/bench --abn

## The load generators against Fortio and ghz (see BENCHMARKS.md).
bench-load:
	testenv/setup.sh --with-load-bench
	$(CARGO) build --release -p iter8 -p bench
	target/release/bench --load

## The seed tutorial, end to end, on a local control plane.
demo: setup build
	scripts/demo.sh

## The controller's image, built with podman from the release binary with nothing pulled
## (testenv/containers/Containerfile: FROM scratch). The Dockerfile is for machines with a registry.
IMAGE ?= localhost/iter8-rs/iter8:local
image-local:
	$(CARGO) build --release -p iter8
	testenv/containers/build-image.sh target/release/iter8 $(IMAGE)

## `kubectl iter8 status|explain ...`: the release binary linked as the kubectl plugin
## kubectl-iter8 into PLUGIN_DIR (default ~/.local/bin; it must be on PATH).
PLUGIN_DIR ?= $(HOME)/.local/bin
plugin:
	$(CARGO) build --release -p iter8
	mkdir -p $(PLUGIN_DIR)
	ln -sf $(CURDIR)/target/release/iter8 $(PLUGIN_DIR)/kubectl-iter8
	@echo "kubectl iter8 runs $(CURDIR)/target/release/iter8 (from $(PLUGIN_DIR)/kubectl-iter8)"

## A control plane in the foreground; writes ./kubeconfig.
control-plane: setup
	$(CARGO) run -p testenv -- up --kubeconfig ./kubeconfig
