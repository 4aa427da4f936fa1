#!/usr/bin/env bash
# The seed tutorial ("Canary release of a KServe ML model"), end to end, on a local control
# plane: real etcd + kube-apiserver + kube-controller-manager (garbage collector), real Helm
# and kubectl, the real charts and the real `iter8` controller binary.
#
# With the data plane (the default), the tutorial's requests are answered for real: a real
# istiod turns the controller's VirtualService into configuration for a real Envoy (the
# ingress gateway), and real MLServer model servers answer. After each step the demo shows
# `iter8 status wisdom` (which version is routed, and why the candidate is not yet), sends the
# tutorial's two requests (without and with `traffic: test`) and checks which version answers.
#
# What is not real: there are no nodes, so no pod ever runs. The controller chart's Deployment
# stays Pending; the demo runs the controller binary on this machine instead, with the chart's
# ServiceAccount token, so the chart's RBAC is what it gets. KServe and Knative are not
# running: `testenv up --dataplane` stands in for them (it starts an MLServer per
# InferenceService, routes the predictor to it, and writes KServe's Ready status once the
# model answers). With DEMO_DATAPLANE=0 nothing is served: the demo writes InferenceService
# status itself, through the status subresource, as KServe would once a model is loaded, and
# sends no requests.
#
# With DEMO_MODE=standard the tutorial runs in KServe Standard mode with the real KServe
# manager instead of the stand-in: `environment: kserve-standard` (the tutorial's values plus
# `serving.kserve.io/autoscalerClass: none` and `gateway:` the ingress Gateway, see
# charts/release/README.md), and KServe makes each version's Deployment and Service; the real
# deployment, replicaset and endpointslice controllers and kube-scheduler run, kwok plays the
# kubelet of a fake Node, and each pod's model is served by an MLServer at the pod's IP, which
# Envoy reaches through the EndpointSlices. Pod IPs must be local, so the demo then runs in a
# network namespace of its own (`unshare --net`, as root), where 10.244.0.0/16 is routed to lo.
#
# Usage: make demo     (or scripts/demo.sh after `make setup build`)
# Env:   DEMO_TIMEOUT  seconds to wait for each expected state (default 60)
#        DEMO_MODEL_TIMEOUT  seconds to wait for the data plane / a model server (default 180)
#        DEMO_DATAPLANE  1 (default): istiod, Envoy and MLServer answer the tutorial's
#                      requests; 0: control plane only, the demo marks models Ready itself
#        DEMO_MODE     serverless (default: the tutorial as written, KServe stood in for)
#                      or standard (KServe Standard mode, the real KServe manager; needs root)
#        IMG           controller image set in the chart (default iter8-rs/iter8:0.1.0)
# Exits non-zero as soon as an expectation fails, printing the controller's last log lines.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=../testenv/versions.env
source testenv/versions.env
cache=${ITER8RS_CACHE:-$HOME/.cache/iter8rs}
KUBECTL=$cache/kubernetes-$KUBERNETES_VERSION/bin/kubectl
HELM=$cache/helm-$HELM_VERSION/bin/helm
ITER8=${ITER8_BIN:-$root/target/debug/iter8}
CHARTS=$root/charts
IMG=${IMG:-iter8-rs/iter8:0.1.0}
TIMEOUT=${DEMO_TIMEOUT:-60}
MODEL_TIMEOUT=${DEMO_MODEL_TIMEOUT:-180}
DATAPLANE=${DEMO_DATAPLANE:-1}
case "$DATAPLANE" in 0 | 1) ;; *) echo "demo: DEMO_DATAPLANE must be 0 or 1" >&2; exit 2 ;; esac
MODE=${DEMO_MODE:-serverless}
case "$MODE" in serverless | standard) ;; *) echo "demo: DEMO_MODE must be serverless or standard" >&2; exit 2 ;; esac
if [ "$MODE" = standard ]; then
  [ "$DATAPLANE" = 1 ] || { echo "demo: DEMO_MODE=standard needs the data plane (DEMO_DATAPLANE=1)" >&2; exit 2; }
  # Pod IPs must be local addresses: run again in a network namespace of our own, where the
  # pod CIDR is routed to lo (the host's namespace is never changed). Everything the demo
  # starts lives there, on that namespace's loopback.
  # DEMO_NETNS: the namespace the demo was started in; routes change only elsewhere.
  here=$(readlink /proc/self/ns/net)
  if [ -z "${DEMO_NETNS:-}" ]; then
    command -v unshare >/dev/null && command -v ip >/dev/null ||
      { echo "demo: DEMO_MODE=standard needs unshare (util-linux) and ip (iproute2)" >&2; exit 1; }
    exec unshare --net -- env DEMO_NETNS="$here" bash "$root/scripts/demo.sh" "$@"
  fi
  [ "$DEMO_NETNS" != "$here" ] ||
    { echo "demo: DEMO_NETNS is set but this is still network namespace $here: refusing to change its routes" >&2; exit 1; }
  ip link set lo up
  ip route replace local 10.244.0.0/16 dev lo
  # Nothing is fetched in here (no network): everything was built by `make setup build`.
  export CARGO_NET_OFFLINE=true
fi

for f in "$KUBECTL" "$HELM"; do
  [ -x "$f" ] || { echo "demo: $f is missing; run 'make setup'" >&2; exit 1; }
done
[ -x "$ITER8" ] || { echo "demo: $ITER8 is missing; run 'make build'" >&2; exit 1; }
kubectl() { "$KUBECTL" "$@"; }
helm() { "$HELM" "$@"; }

# ---------------------------------------------------------------------------------------
# Output helpers and clean-up.

bold=$'\e[1m' green=$'\e[32m' red=$'\e[31m' dim=$'\e[2m' off=$'\e[0m'
if [ ! -t 1 ]; then bold='' green='' red='' dim='' off=''; fi
section() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
say() { printf '%s\n' "$*"; }
ok() { printf '%s  ok%s %s\n' "$green" "$off" "$*"; }
run() { printf '%s$ %s%s\n' "$dim" "$*" "$off"; "$@"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/iter8-demo.XXXXXX")
export KUBECONFIG=$work/kubeconfig
plane_pid='' controller_pid='' started=$SECONDS up_args=()

fail() {
  printf '\n%sFAILED:%s %s\n' "$red" "$off" "$*" >&2
  if [ -s "$work/controller.log" ]; then
    echo "--- last lines of the controller log ---" >&2
    tail -n 30 "$work/controller.log" >&2
  fi
  if [ "$DATAPLANE" = 1 ] && [ -s "$work/control-plane.log" ]; then
    echo "--- last lines of testenv up ${up_args[*]} ---" >&2
    tail -n 30 "$work/control-plane.log" >&2
  fi
  exit 1
}

stop() { # stop PID: SIGTERM, then SIGKILL if it has not gone after 10s
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop "$controller_pid"
  stop "$plane_pid"
  rm -rf "$work"
  if [ "$status" = 0 ]; then
    printf '\n%sDemo passed%s in %ss.\n' "$green" "$off" "$((SECONDS - started))"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for WHAT COMMAND...: polls COMMAND until it succeeds, failing after $TIMEOUT seconds.
wait_for() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ -n "$controller_pid" ] && ! kill -0 "$controller_pid" 2>/dev/null; then
      fail "the controller exited while waiting for $what"
    fi
    ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.2
  done
  ok "$what"
}

# ---------------------------------------------------------------------------------------
# Checks of the cluster's state (each succeeds or fails; no output).

# Route names of VirtualService wisdom, space-separated, in order.
routes() { kubectl get virtualservice wisdom -o jsonpath='{.spec.http[*].name}'; }
routes_are() { [ "$(routes 2>/dev/null)" = "$*" ]; }
gone() { [ -z "$(kubectl get "$@" --ignore-not-found -o name)" ]; }
exists() { kubectl get "$@" -o name >/dev/null; }

# The controller's Prometheus metrics; "settled" = it has listed everything, sees N
# InferenceServices and has no work queued, so it has reacted to all we did.
metric() { curl -fsS "http://$admin/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
settled_with_isvcs() {
  [ "$(metric 'iter8_watched_objects{resource="inferenceservices.serving.kserve.io"}')" = "$1" ] &&
    [ "$(metric iter8_queue_depth)" = 0 ]
}

# Shows what `iter8 status` says about the application: each version's readiness (and what
# blocks it), weight, and the routes of VirtualService wisdom that reach it.
show_status() {
  printf '%s$ iter8 status wisdom -n default%s\n' "$dim" "$off"
  "$ITER8" status wisdom -n default | sed 's/^/  /'
}
# status_json JQ_FILTER: the filter applied to `iter8 status wisdom -o json`.
status_json() { "$ITER8" status wisdom -n default -o json | jq -r "$1"; }

# ---------------------------------------------------------------------------------------
# What KServe would write once it has (or has not yet) served a model: the status of an
# InferenceService in Serverless mode (see shared/spec/kserve-status.md).

isvc_status() { # isvc_status NAME ready|not-ready OBSERVED_GENERATION
  local n=$1 ns=default gen=$3 t
  t=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  if [ "$2" = ready ]; then
    cat <<EOF
{"status": {
  "address": {"url": "http://$n.$ns.svc.cluster.local"},
  "components": {"predictor": {
    "address": {"url": "http://$n-predictor.$ns.svc.cluster.local"},
    "latestCreatedRevision": "$n-predictor-0000$gen", "latestReadyRevision": "$n-predictor-0000$gen",
    "latestRolledoutRevision": "$n-predictor-0000$gen",
    "traffic": [{"latestRevision": true, "percent": 100, "revisionName": "$n-predictor-0000$gen"}],
    "url": "http://$n-predictor.$ns.example.com"}},
  "conditions": [
    {"type": "IngressReady", "status": "True", "lastTransitionTime": "$t"},
    {"type": "LatestDeploymentReady", "status": "True", "severity": "Info", "lastTransitionTime": "$t"},
    {"type": "PredictorConfigurationReady", "status": "True", "severity": "Info", "lastTransitionTime": "$t"},
    {"type": "PredictorReady", "status": "True", "lastTransitionTime": "$t"},
    {"type": "PredictorRouteReady", "status": "True", "severity": "Info", "lastTransitionTime": "$t"},
    {"type": "Ready", "status": "True", "lastTransitionTime": "$t"},
    {"type": "RoutesReady", "status": "True", "severity": "Info", "lastTransitionTime": "$t"},
    {"type": "Stopped", "status": "False", "severity": "Info", "lastTransitionTime": "$t"}],
  "deploymentMode": "Knative",
  "modelStatus": {"copies": {"failedCopies": 0, "totalCopies": 1},
    "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}, "transitionStatus": "UpToDate"},
  "observedGeneration": $gen,
  "url": "http://$n.$ns.example.com"}}
EOF
  else
    cat <<EOF
{"status": {
  "conditions": [
    {"type": "IngressReady", "status": "Unknown", "reason": "Predictor ingress not created", "lastTransitionTime": "$t"},
    {"type": "PredictorReady", "status": "Unknown", "reason": "RevisionMissing",
     "message": "Configuration \"$n-predictor\" is waiting for a Revision to become ready.", "lastTransitionTime": "$t"},
    {"type": "Ready", "status": "Unknown", "reason": "Predictor ingress not created", "lastTransitionTime": "$t"},
    {"type": "Stopped", "status": "False", "severity": "Info", "lastTransitionTime": "$t"}],
  "deploymentMode": "Knative",
  "modelStatus": {"copies": {"failedCopies": 0}, "states": {"activeModelState": "", "targetModelState": "Pending"},
    "transitionStatus": "InProgress"},
  "observedGeneration": $gen}}
EOF
  fi
}

kserve_reports() { # kserve_reports NAME ready|not-ready
  local gen
  gen=$(kubectl get inferenceservice "$1" -o jsonpath='{.metadata.generation}')
  say "[standing in for KServe, since no model server runs here] InferenceService $1 is $2:"
  printf "%s\$ kubectl patch inferenceservice %s --subresource=status --type=merge -p '<KServe's %s status, observedGeneration %s>'%s\n" \
    "$dim" "$1" "$2" "$gen" "$off"
  kubectl patch inferenceservice "$1" --subresource=status --type=merge -p "$(isvc_status "$1" "$2" "$gen")"
  run kubectl get inferenceservice "$1"
}

# With the data plane: the stand-in for KServe writes status once a model answers; the demo
# waits for it.
isvc_ready() { [ "$(kubectl get inferenceservice "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
model_ready() { # model_ready NAME: waits for KServe (or its stand-in) to report NAME Ready
  if [ "$MODE" = standard ]; then
    TIMEOUT=$MODEL_TIMEOUT wait_for "InferenceService $1 is Ready (KServe: its pod is Ready, as its model answers)" isvc_ready "$1"
    run kubectl get inferenceservice "$1"
    run kubectl get deployments,pods -l "serving.kserve.io/inferenceservice=$1" -o wide
  else
    TIMEOUT=$MODEL_TIMEOUT wait_for "InferenceService $1 is Ready: its MLServer answers (KServe stand-in)" isvc_ready "$1"
    run kubectl get inferenceservice "$1"
  fi
}

# ---------------------------------------------------------------------------------------
# The tutorial's requests "from outside the cluster", to the ingress gateway.

# The tutorial's input.json (iter8-tools/docs samples/kserve-serving/input.json): a V2
# inference request with two rows for the iris-like model MLServer serves.
cat >"$work/input.json" <<'JSON'
{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}]}
JSON
# ask [CURL_ARGS...]: the tutorial's request; prints what `grep -e '^HTTP' -e app-version` would.
ask() {
  curl -H 'Content-Type: application/json' -H 'Host: wisdom.default' "$@" \
    "$ingress" -d @"$work/input.json" -s -D - --max-time 10 |
    tr -d '\r' | grep -e '^HTTP' -e app-version || true
}
# send_requests PLAIN TEST: sends both requests until the one without `traffic` is answered
# 200 by version PLAIN and the one with `traffic: test` by version TEST (Envoy gets a new
# VirtualService from istiod a moment after it is written), then prints them as the tutorial
# does. Fails with the last answers after $TIMEOUT seconds.
send_requests() {
  local want_plain want_test plain test tries=0 note='' deadline=$((SECONDS + TIMEOUT))
  want_plain=$(printf 'HTTP/1.1 200 OK\napp-version: %s' "$1")
  want_test=$(printf 'HTTP/1.1 200 OK\napp-version: %s' "$2")
  while :; do
    tries=$((tries + 1))
    plain=$(ask)
    test=$(ask -H 'traffic: test')
    [ "$plain" = "$want_plain" ] && [ "$test" = "$want_test" ] && break
    ((SECONDS < deadline)) ||
      fail "after ${TIMEOUT}s, the requests are not answered as expected: without traffic: '${plain//$'\n'/ | }' (expected '${want_plain//$'\n'/ | }'); with traffic: test: '${test//$'\n'/ | }' (expected '${want_test//$'\n'/ | }')"
    sleep 0.2
  done
  printf "%s\$ curl -H 'Content-Type: application/json' -H 'Host: wisdom.default' %s -d @input.json -s -D - | grep -e '^HTTP' -e app-version%s\n" "$dim" "$ingress" "$off"
  printf '%s\n' "$plain" | sed 's/^/  /'
  printf "%s\$ curl -H 'Content-Type: application/json' -H 'traffic: test' -H 'Host: wisdom.default' %s -d @input.json -s -D - | grep -e '^HTTP' -e app-version%s\n" "$dim" "$ingress" "$off"
  printf '%s\n' "$test" | sed 's/^/  /'
  ((tries == 1)) || note=" (after $tries tries: Envoy gets the new routes from istiod moments after the VirtualService changes)"
  ok "without traffic: $1 answers; with traffic: test: $2 answers$note"
}

# ---------------------------------------------------------------------------------------
if [ "$MODE" = standard ]; then
  section "Start a local control plane, the KServe manager (Standard mode), kwok and the data plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler; istiod, Envoy, MLServer)"
  up_args=(--kserve-standard)
elif [ "$DATAPLANE" = 1 ]; then
  section "Start a local control plane and data plane (etcd, kube-apiserver, kube-controller-manager; istiod, Envoy, MLServer)"
  up_args=(--dataplane)
else
  section "Start a local control plane (etcd, kube-apiserver, kube-controller-manager)"
  up_args=()
fi
cargo run -q -p testenv -- up --kubeconfig "$KUBECONFIG" "${up_args[@]}" >"$work/control-plane.log" 2>&1 &
plane_pid=$!
# `testenv up` writes the kubeconfig once the API server is ready and the CRDs of KServe,
# Istio and the Gateway API are established.
deadline=$((SECONDS + 120))
until [ -s "$KUBECONFIG" ]; do
  kill -0 "$plane_pid" 2>/dev/null || { cat "$work/control-plane.log" >&2; fail "the control plane did not start"; }
  ((SECONDS < deadline)) || fail "the control plane was not ready after 120s"
  sleep 0.2
done
kubectl get --raw /readyz >/dev/null || fail "kube-apiserver is not ready"
ok "control plane up at $(kubectl config view -o jsonpath='{.clusters[0].cluster.server}')"
run kubectl get crd inferenceservices.serving.kserve.io virtualservices.networking.istio.io
ingress=''
if [ "$DATAPLANE" = 1 ]; then
  # `testenv up --dataplane` writes the ingress address next to the kubeconfig once istiod
  # and both Envoys run and the KServe + Knative stand-in watches InferenceServices.
  deadline=$((SECONDS + MODEL_TIMEOUT))
  until [ -s "$KUBECONFIG.ingress" ]; do
    kill -0 "$plane_pid" 2>/dev/null ||
      fail "the data plane did not start (missing components? run 'make setup'; or DEMO_DATAPLANE=0 to run without it)"
    ((SECONDS < deadline)) || fail "the data plane was not ready after ${MODEL_TIMEOUT}s"
    sleep 0.2
  done
  ingress=$(cat "$KUBECONFIG.ingress")
  if [ "$MODE" = standard ]; then
    ok "KServe $KSERVE_VERSION (Standard mode), kwok and the data plane up: istiod; the ingress gateway (Envoy) at $ingress"
    say "The real KServe manager makes each InferenceService's Deployment and Service; kwok runs"
    say "the pods on a fake Node, each served by a real MLServer at its pod IP; kwok marks a pod"
    say "Ready only once its model answers, and KServe then reports the InferenceService Ready."
    run kubectl get nodes
  else
    ok "data plane up: istiod; the ingress gateway (Envoy) at $ingress; knative-local-gateway (Envoy)"
    say "KServe and Knative are not installed: 'testenv up --dataplane' stands in for them. For each"
    say "InferenceService it starts a real MLServer, routes the predictor to it and writes KServe's"
    say "Ready status once the model answers."
  fi
else
  say "DEMO_DATAPLANE=0: no data plane, so no model is served and no request is sent; the demo"
  say "writes InferenceService status itself, standing in for KServe."
fi

# ---------------------------------------------------------------------------------------
section "Install the Iter8 controller"
export IMG
run helm upgrade --install iter8 "$CHARTS/controller" \
  --set image="$IMG" --set logLevel=trace \
  --set clusterScoped=true
if [ "$MODE" = standard ]; then
  say "The chart's pod stays Pending here: its metrics volume's PersistentVolumeClaim is never bound"
  say "(no storage provisioner), and kwok's Node could not run the controller anyway:"
  run kubectl get pods
  say "Run the same binary on this machine instead, as the chart's ServiceAccount, with the"
  say "configuration the chart rendered:"
else
  say "No node runs pods here, so the chart's Deployment stays Pending. Run the same binary on"
  say "this machine instead, as the chart's ServiceAccount, with the configuration the chart rendered:"
fi
kubectl get configmap iter8 -o jsonpath='{.data.config\.yaml}' >"$work/config.yaml"
token=$(kubectl create token iter8 --duration=2h)
kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$work/ca.crt"
server=$(kubectl config view -o jsonpath='{.clusters[0].cluster.server}')
sa_kubeconfig=$work/iter8-sa.kubeconfig
(
  export KUBECONFIG=$sa_kubeconfig
  kubectl config set-cluster local --server="$server" --certificate-authority="$work/ca.crt" --embed-certs >/dev/null
  kubectl config set-credentials iter8 --token="$token" >/dev/null
  kubectl config set-context iter8 --cluster=local --user=iter8 --namespace=default >/dev/null
  kubectl config use-context iter8 >/dev/null
)
say "$ POD_NAME=iter8-0 POD_NAMESPACE=default iter8 controller --config config.yaml --kubeconfig iter8-sa.kubeconfig --admin-address 127.0.0.1:0 &"
NO_COLOR=1 POD_NAME=iter8-0 POD_NAMESPACE=default "$ITER8" controller \
  --config "$work/config.yaml" --kubeconfig "$sa_kubeconfig" \
  --log-level info --admin-address 127.0.0.1:0 --abn-address 127.0.0.1:0 --metrics-dir "$work/metrics" \
  >"$work/controller.log" 2>&1 &
controller_pid=$!
# The log line "admin server listening address=127.0.0.1:PORT" (colours stripped) gives the port.
admin_address() { sed -e 's/\x1b\[[0-9;]*m//g' "$work/controller.log" | sed -n 's/.*admin server listening.*address=\([0-9.:]*\).*/\1/p' | head -n1; }
listening() { [ -n "$(admin_address)" ]; }
wait_for "the controller's admin server to listen" listening
admin=$(admin_address)
readyz() { curl -fsS "http://$admin/readyz"; }
wait_for "the controller to be ready (http://$admin/readyz)" readyz
run kubectl auth can-i create virtualservices.networking.istio.io --as=system:serviceaccount:default:iter8

# ---------------------------------------------------------------------------------------
section "Step 1: deploy the initial version"
run_helm_step() { say "$ cat <<EOF | helm upgrade --install wisdom \$CHARTS/release -f -  (values as in the tutorial$values_note)"; mode_values | helm upgrade --install wisdom "$CHARTS/release" -f - >/dev/null; ok "helm release wisdom: revision $(helm history wisdom -o json | jq length)"; }
# mode_values: the tutorial's values (stdin) for the mode: as written, or in Standard mode with
# the lines values_note names.
values_note=''
if [ "$MODE" = standard ]; then
  values_note="; Standard mode: environment: kserve-standard, application.metadata.annotations:"
  values_note+=" {serving.kserve.io/autoscalerClass: none} (no metrics-server here), gateway: knative-serving/knative-ingress-gateway"
  values_note+=" (the ingress Gateway, for requests from outside the cluster)"
fi
mode_values() {
  if [ "$MODE" = standard ]; then
    sed -e 's/^environment: kserve$/environment: kserve-standard/' \
      -e 's/^      app.kubernetes.io\/name: wisdom$/&\n    annotations:\n      serving.kserve.io\/autoscalerClass: none/'
    echo "gateway: knative-serving/knative-ingress-gateway"
  else
    cat
  fi
}
cat <<EOF | run_helm_step
environment: kserve
application: 
  metadata:
    labels:
      app.kubernetes.io/name: wisdom
  versions:
  - metadata:
      labels:
        app.kubernetes.io/version: v0
    modelFormat: sklearn
    runtime: kserve-mlserver
    storageUri: "gs://seldon-models/sklearn/mms/lr_model"
  strategy: canary
EOF
run kubectl get inferenceservices,services,configmaps
run kubectl get service wisdom -o jsonpath='{.spec.type} -> {.spec.externalName}{"\n"}'
if [ "$DATAPLANE" = 1 ]; then model_ready wisdom-0; else kserve_reports wisdom-0 ready; fi
wait_for "VirtualService wisdom routes every request to wisdom-0" routes_are wisdom-0
show_status
[ "$DATAPLANE" = 0 ] || send_requests wisdom-0 wisdom-0

# ---------------------------------------------------------------------------------------
section "Step 2: deploy the candidate"
cat <<EOF | run_helm_step
environment: kserve
application: 
  metadata:
    labels:
      app.kubernetes.io/name: wisdom
  versions:
  - metadata:
      labels:
        app.kubernetes.io/version: v0
    modelFormat: sklearn
    runtime: kserve-mlserver
    storageUri: "gs://seldon-models/sklearn/mms/lr_model"
  - metadata:
      labels:
        app.kubernetes.io/version: v1
    modelFormat: sklearn
    runtime: kserve-mlserver
    storageUri: "gs://seldon-models/sklearn/mms/lr_model"
  strategy: canary
EOF
wait_for "InferenceService wisdom-1 exists" exists inferenceservice wisdom-1
if [ "$DATAPLANE" = 1 ]; then
  if [ "$MODE" = standard ]; then
    say "KServe makes wisdom-1's Deployment; its pod runs, but until its model answers, it and wisdom-1 are not Ready:"
  else
    say "The KServe stand-in starts an MLServer for wisdom-1; until its model answers, wisdom-1 is not Ready:"
  fi
  run kubectl get inferenceservice wisdom-1
  wait_for "the controller to see both InferenceServices and finish its work" settled_with_isvcs 2
  seen=$(routes)
  if ! isvc_ready wisdom-1; then # still not Ready after the routes were read
    [ "$seen" = wisdom-0 ] || fail "routing changed before wisdom-1 was ready: routes $seen"
    ok "while wisdom-1 is not ready, routing is unchanged"
    show_status
  else
    say "(wisdom-1 became Ready before its routing could be checked while not Ready; check skipped)"
  fi
  model_ready wisdom-1
else
  kserve_reports wisdom-1 not-ready
  wait_for "the controller to see both InferenceServices and finish its work" settled_with_isvcs 2
  routes_are wisdom-0 || fail "routing changed before wisdom-1 was ready: routes $(routes)"
  ok "while wisdom-1 is not ready, routing is unchanged"
  show_status
  why=$(status_json '.applications[0].versions[1] | select(.ready == false and .weight == 0 and (.routes | length) == 0) | .blockedBy[0]')
  [ -n "$why" ] || fail "iter8 status does not say that wisdom-1 is not ready and not routed"
  ok "iter8 status says why wisdom-1 gets no traffic: $why"
  kserve_reports wisdom-1 ready
fi
wait_for "VirtualService wisdom routes 'traffic: test' to wisdom-1, the rest to wisdom-0" routes_are wisdom-1 wisdom-0
header=$(kubectl get virtualservice wisdom -o jsonpath='{.spec.http[0].match[0].headers.traffic.exact}')
[ "$header" = test ] || fail "wisdom-1's route matches traffic=$header, expected test"
show_status
printf "%s\$ iter8 explain wisdom -n default -H 'traffic: test'%s\n" "$dim" "$off"
"$ITER8" explain wisdom -n default -H 'traffic: test' | sed 's/^/  /'
predicted=$("$ITER8" explain wisdom -n default -H 'traffic: test' -o json | jq -r '.versions | keys | join(" ")')
[ "$predicted" = wisdom-1 ] || fail "iter8 explain predicts '$predicted' for 'traffic: test', expected wisdom-1"
ok "iter8 explain: requests with 'traffic: test' are answered by wisdom-1"
[ "$DATAPLANE" = 0 ] || send_requests wisdom-0 wisdom-1

# ---------------------------------------------------------------------------------------
section "Step 3: promote the candidate"
cat <<EOF | run_helm_step
environment: kserve
application: 
  metadata:
    labels:
      app.kubernetes.io/name: wisdom
  versions:
  - metadata:
      labels:
        app.kubernetes.io/version: v1
    modelFormat: sklearn
    runtime: kserve-mlserver
    storageUri: "gs://seldon-models/sklearn/mms/lr_model"
  strategy: canary
EOF
wait_for "InferenceService wisdom-1 is deleted" gone inferenceservice wisdom-1
run kubectl get inferenceservice wisdom-0 -o jsonpath='wisdom-0: generation {.metadata.generation}, version label {.metadata.labels.app\.kubernetes\.io/version}{"\n"}'
if [ "$MODE" = standard ]; then
  say "wisdom-0 now carries the v1 labels; KServe copies them into its Deployment's pod template and"
  say "rolls it: the new pod serves once its model answers, the old one until then, and KServe keeps"
  say "wisdom-0 Ready throughout. KServe deletes wisdom-1's Deployment and Service with it."
else
  say "wisdom-0 now carries the v1 labels; its spec (the model) is the same, so its generation is"
  say "unchanged and KServe (here: its stand-in) keeps it Ready, serving the same revision."
fi
wait_for "the controller to see one InferenceService and finish its work" settled_with_isvcs 1
wait_for "VirtualService wisdom routes every request to wisdom-0 again" routes_are wisdom-0
show_status
[ "$DATAPLANE" = 0 ] || send_requests wisdom-0 wisdom-0

# ---------------------------------------------------------------------------------------
section "Clean up"
run helm delete wisdom
wait_for "VirtualService wisdom is gone" gone virtualservice wisdom
wait_for "InferenceServices are gone" gone inferenceservices -l app.kubernetes.io/name=wisdom
wait_for "Service wisdom is gone" gone service wisdom
wait_for "routemap wisdom-routemap is gone" gone configmap wisdom-routemap
if [ "$MODE" = standard ]; then
  wait_for "KServe's Deployment and Service wisdom-0-predictor are gone" gone deployment,service wisdom-0-predictor
  wait_for "the pods are gone" gone pods -l serving.kserve.io/inferenceservice
elif [ "$DATAPLANE" = 1 ]; then
  wait_for "the KServe stand-in removed wisdom-0's predictor route" gone virtualservice wisdom-0-predictor-ingress
fi
run kubectl get virtualservices,inferenceservices,services,configmaps
errors=$(sed -e 's/\x1b\[[0-9;]*m//g' "$work/controller.log" | grep -c ' ERROR ' || true)
[ "$errors" = 0 ] || fail "the controller logged $errors errors"
ok "the controller logged no errors"
