#!/usr/bin/env bash
# Builds (or finds in the cache) the real components the tests need: kube-apiserver,
# kube-controller-manager, kubectl, etcd, helm and the CRD files of KServe, Istio and the
# Gateway API. Everything lands in $ITER8RS_CACHE (default ~/.cache/iter8rs), one folder per
# component and version; a folder counts only once its build finished (a `.complete` stamp),
# so an interrupted build is redone, never half-used.
#
# Usage: testenv/setup.sh            build what is missing, print what is where
#        testenv/setup.sh --check    only report; exit 1 naming what is missing
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${ITER8RS_CACHE:-$HOME/.cache/iter8rs}
mode=${1:-build}

die() { echo "testenv/setup.sh: $*" >&2; exit 1; }

command -v go >/dev/null || die "Go is required to build the control plane (install Go 1.25 or later)"

# A component is ready when its folder has the stamp and every file it must hold.
ready() { local dir=$1; shift; [ -f "$dir/.complete" ] || return 1; local f; for f in "$@"; do [ -s "$dir/$f" ] || return 1; done; }

missing=()
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
  echo "build   $name -> $dir" >&2
  local started=$SECONDS out="$dir.tmp.$$"
  rm -rf "$out" && mkdir -p "$out"
  if ! (out=$out; $builder) >"$out.log" 2>&1; then
    tail -n 30 "$out.log" >&2
    rm -rf "$out"
    die "building $name failed (full log: $out.log)"
  fi
  rm -rf "$dir" && touch "$out/.complete" && mv "$out" "$dir" && rm -f "$out.log"
  echo "built   $name in $((SECONDS - started))s: $dir"
}

gobuild() { # gobuild MODULE_DIR LDFLAGS PACKAGES...
  local mod=$1 ldflags=$2; shift 2
  (cd "$here/tools/$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/bin/" "$@")
}

build_kube() {
  local v=$KUBERNETES_VERSION minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  gobuild kube "-s -w -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.buildDate=1970-01-01T00:00:00Z" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
}
build_etcd() { gobuild etcd "-s -w" go.etcd.io/etcd/server/v3 && mv "$out/bin/server" "$out/bin/etcd"; }
build_helm() { gobuild helm "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" helm.sh/helm/v4/cmd/helm; }

# moddir MODULE@VERSION: where the Go module cache holds that module's files.
moddir() { (cd "$here/tools/crds" && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'); }
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

crds_key="kserve-$KSERVE_VERSION-istio-$ISTIO_API_VERSION-gwapi-$GATEWAY_API_VERSION"
component kubernetes "$cache/kubernetes-$KUBERNETES_VERSION" "bin/kube-apiserver bin/kube-controller-manager bin/kubectl" build_kube
component etcd "$cache/etcd-$ETCD_VERSION" "bin/etcd" build_etcd
component helm "$cache/helm-$HELM_VERSION" "bin/helm" build_helm
component crds "$cache/crds-$crds_key" "serving.kserve.io_inferenceservices.yaml istio.io_crds.yaml gateway.networking.k8s.io_httproutes.yaml" build_crds

if [ ${#missing[@]} -gt 0 ]; then
  printf 'missing %s\n' "${missing[@]}" >&2
  die "run testenv/setup.sh to build what is missing"
fi
