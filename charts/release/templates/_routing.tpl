{{/*
Routing templates: the text stored in the routemap under routingTemplates.<strategy>.template.

They are rendered twice. Helm renders them now, baking in names, hosts, ports and matches.
The Iter8 controller renders the result later, each time the set of ready versions changes,
as a Go template whose only inputs used here are `.Weights`: Weights[i] is 0 while version i
is not ready, else its weight; and, only with application.analysis and strategy canary,
`.Promoted`: true once the analysis has promoted the candidate (docs/analysis.md). The
controller-time actions are produced by the "release.tmpl.*" helpers below and use only
`{{- if gt (index .Weights i) 0 }}`, `{{ index .Weights i }}`, `{{- if .Promoted }}`,
`{{- else }}` and `{{- end }}`, so any Go-template engine with `{{-` trimming, if, else, gt and
index can run them. Without application.analysis the templates never mention `.Promoted`, so
Iter8 v1.1's controller (whose template data has no such field) renders them as before.

Arguments of every helper (dict):
  root      the chart context
  env       the environment traits ("release.env")
  strategy  none | blue-green | canary | mirror
  versions  the normalized versions ("release.versions")
  v         one normalized version (per-version helpers)
*/}}

{{/* Controller-time: keep what follows only while version <int> is ready. */}}
{{- define "release.tmpl.ifReady" -}}
{{ printf "{{- if gt (index .Weights %d) 0 }}" (int .) }}
{{- end }}

{{/* Controller-time: the weight of version <int>. */}}
{{- define "release.tmpl.weight" -}}
{{ printf "{{ index .Weights %d }}" (int .) }}
{{- end }}

{{/* Controller-time: keep what follows only once the analysis has promoted the candidate. */}}
{{- define "release.tmpl.ifPromoted" -}}
{{ print "{{- if .Promoted }}" }}
{{- end }}

{{/* Controller-time: the other branch of "release.tmpl.ifPromoted". */}}
{{- define "release.tmpl.else" -}}
{{ print "{{- else }}" }}
{{- end }}

{{/* Controller-time: closes "release.tmpl.ifReady" and "release.tmpl.ifPromoted". */}}
{{- define "release.tmpl.end" -}}
{{ print "{{- end }}" }}
{{- end }}

{{/*
"true" when the values have an application.analysis block (even an empty one: analysis with
every default), else "". The routemap then carries it, and canary routing templates let the
controller send all unmatched requests to the candidate once it is promoted.
*/}}
{{- define "release.analysis.enabled" -}}
{{- if kindIs "map" .Values.application.analysis }}true{{ end -}}
{{- end }}

{{/* The routing template of the environment, or nothing for strategy none. */}}
{{- define "release.routing" -}}
{{- if eq .env.routing "gateway-api" }}
{{- include "release.routing.httpRoute" . }}
{{- else }}
{{- include "release.routing.virtualService" . }}
{{- end }}
{{- end }}

{{/*
The name a version goes by in routing: route names and the `app-version` response header. As in
Iter8 v1.1 it is the name of the resource requests are sent to: the version's Service
(deployment*) or InferenceService (kserve*), which is the version name unless a
*Specification.metadata.name renames it.
*/}}
{{- define "release.routing.versionName" -}}
{{- if eq .env.workload "deployment" }}{{ .v.svc.name }}{{ else }}{{ .v.isvc.name }}{{ end -}}
{{- end }}

{{/* The resource type (routemap gvrShort) of the routing object. */}}
{{- define "release.routing.gvrShort" -}}
{{- if eq .env.routing "gateway-api" }}httproute{{ else }}vs{{ end -}}
{{- end }}

{{/* ===== Istio: deployment-istio, kserve*, kserve-standard, kserve-modelmesh-istio ===== */}}

{{/*
One weighted destination (an HTTPRouteDestination) of version .v, with the response header
`app-version: <version name>`. With .weighted, it carries the version's controller-time weight;
with .branch (KServe blue-green), it drops the internal `branch` request header.
*/}}
{{- define "release.istio.destination" -}}
{{- $root := .root -}}
{{- $v := .v -}}
{{- if eq .env.routing "kserve" -}}
- destination:
    host: knative-local-gateway.istio-system.svc.cluster.local
  {{- if .weighted }}
  weight: {{ include "release.tmpl.weight" $v.index }}
  {{- end }}
  headers:
    request:
      set:
        Host: {{ include "release.kserve.predictorHost" . }}
      {{- if .branch }}
      remove:
      - branch
      {{- end }}
    response:
      add:
        app-version: {{ include "release.routing.versionName" . }}
{{- else if eq .env.routing "kserve-standard" -}}
{{- /* KServe Standard mode: straight to the predictor Service; it needs no Host header */ -}}
- destination:
    host: {{ include "release.kserve.predictorHost" . }}
    port:
      number: {{ include "release.kserve.predictorPort" . }}
  {{- if .weighted }}
  weight: {{ include "release.tmpl.weight" $v.index }}
  {{- end }}
  headers:
    {{- if .branch }}
    request:
      remove:
      - branch
    {{- end }}
    response:
      add:
        app-version: {{ include "release.routing.versionName" . }}
{{- else if eq .env.routing "modelmesh" -}}
- destination:
    host: {{ include "release.modelmesh.host" $root }}
    port:
      number: {{ include "release.modelmesh.port" $root }}
  {{- if .weighted }}
  weight: {{ include "release.tmpl.weight" $v.index }}
  {{- end }}
  headers:
    request:
      set:
        mm-vmodel-id: {{ $v.isvc.name }}
    response:
      add:
        app-version: {{ include "release.routing.versionName" . }}
{{- else -}}
- destination:
    host: {{ $v.svc.name }}.{{ $v.svc.namespace }}.svc.cluster.local
    port:
      number: {{ $v.servicePort }}
  {{- if .weighted }}
  weight: {{ include "release.tmpl.weight" $v.index }}
  {{- end }}
  headers:
    response:
      add:
        app-version: {{ include "release.routing.versionName" . }}
{{- end }}
{{- end }}

{{/*
The body of an HTTP route that sends everything it matches to version .v alone. KServe
InferenceServices (Serverless and Standard mode) serve the V2 protocol under
/v2/models/<model name>/, and the model name is the InferenceService name, so the path is
rewritten to that version's infer endpoint (see README: known limitation, only the infer endpoint
is reachable through the application host).
*/}}
{{- define "release.istio.routeTo" -}}
{{- if has .env.routing (list "kserve" "kserve-standard") -}}
rewrite:
  uri: /v2/models/{{ .v.isvc.name }}/infer
{{ end -}}
route:
{{ include "release.istio.destination" . }}
{{- end }}

{{/* A candidate's Istio match clauses: versions[i].match, default header `traffic: test`. Each clause stays its own entry. */}}
{{- define "release.istio.match" -}}
{{- $raw := index .root.Values.application.versions (int .v.index) -}}
{{- $default := list (dict "headers" (dict "traffic" (dict "exact" "test"))) -}}
{{- toYaml ($raw.match | default $default) -}}
{{- end }}

{{- define "release.routing.virtualService" -}}
{{- $root := .root -}}
{{- $name := include "release.appName" $root -}}
{{- $namespace := include "release.appNamespace" $root -}}
{{- $primary := first .versions -}}
{{- $candidates := rest .versions -}}
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: {{ $name }}
  namespace: {{ $namespace }}
spec:
  gateways:
  {{- if eq .env.routing "kserve" }}
  - knative-serving/knative-ingress-gateway
  - knative-serving/knative-local-gateway
  {{- end }}
  {{- with $root.Values.gateway }}
  - {{ . }}
  {{- end }}
  - mesh
  hosts:
  {{- include "release.appHosts" $root | nindent 2 }}
  http:
{{- if eq .strategy "canary" }}
  {{- /* candidates first, each behind its match; the primary takes the rest */}}
  {{- range $v := $candidates }}
  {{ include "release.tmpl.ifReady" $v.index }}
  - name: {{ include "release.routing.versionName" (merge (dict "v" $v) $) }}
    match:
    {{- include "release.istio.match" (dict "root" $root "v" $v) | nindent 4 }}
    {{- include "release.istio.routeTo" (merge (dict "v" $v) $) | nindent 4 }}
  {{ include "release.tmpl.end" . }}
  {{- end }}
  {{- if and (include "release.analysis.enabled" $root) $candidates }}
  {{- /* once promoted, the candidate (analysis: exactly one) takes the rest too */}}
  {{- $candidate := first $candidates }}
  {{ include "release.tmpl.ifPromoted" . }}
  - name: {{ include "release.routing.versionName" (merge (dict "v" $candidate) $) }}
    {{- include "release.istio.routeTo" (merge (dict "v" $candidate) $) | nindent 4 }}
  {{ include "release.tmpl.else" . }}
  - name: {{ include "release.routing.versionName" (merge (dict "v" $primary) $) }}
    {{- include "release.istio.routeTo" (merge (dict "v" $primary) $) | nindent 4 }}
  {{ include "release.tmpl.end" . }}
  {{- else }}
  - name: {{ include "release.routing.versionName" (merge (dict "v" $primary) $) }}
    {{- include "release.istio.routeTo" (merge (dict "v" $primary) $) | nindent 4 }}
  {{- end }}
{{- else if and (eq .strategy "mirror") (eq .env.routing "kserve-standard") }}
  {{- /*
  mirror on KServe Standard mode: a copy keeps the primary's rewritten path, which the
  candidate's model server does not serve, and Istio has no per-mirror rewrite. So the copy goes
  back through the Istio ingress gateway (bound through `gateway`) marked with the header
  `branch: <candidate>`, where the candidate's own route rewrites the path. Istio keeps a copy's
  Host (it turns off Envoy's "-shadow" suffix), so the mark is a header the primary route sets:
  the primary receives it too and ignores it. The candidate's route matches the primary's path
  as a prefix, which every copy has, so that the rewrite replaces exactly that prefix.
  */}}
  {{- range $v := $candidates }}
  {{ include "release.tmpl.ifReady" $v.index }}
  - name: {{ $v.isvc.name }}
    match:
    - headers:
        branch:
          exact: {{ $v.isvc.name }}
      uri:
        prefix: /v2/models/{{ $primary.isvc.name }}/infer
    {{- include "release.istio.routeTo" (merge (dict "v" $v "branch" true) $) | nindent 4 }}
  {{ include "release.tmpl.end" . }}
  {{- end }}
  - name: {{ $name }}
    {{- range $v := $candidates }}
    {{ include "release.tmpl.ifReady" $v.index }}
    headers:
      request:
        set:
          branch: {{ $v.isvc.name }}
    {{ include "release.tmpl.end" . }}
    {{- end }}
    {{- include "release.istio.routeTo" (merge (dict "v" $primary) $) | nindent 4 }}
    {{- range $v := $candidates }}
    {{ include "release.tmpl.ifReady" $v.index }}
    mirror:
      host: {{ $.env.entry }}.istio-system.svc.cluster.local
      port:
        number: 80
    mirrorPercentage:
      value: {{ include "release.tmpl.weight" $v.index }}
    {{ include "release.tmpl.end" . }}
    {{- end }}
{{- else if eq .strategy "mirror" }}
  {{- /* everything to the primary; a copy of a share of it to the candidate */}}
  - name: {{ $name }}
    route:
    {{- include "release.istio.destination" (merge (dict "v" $primary) $) | nindent 4 }}
    {{- range $v := $candidates }}
    {{ include "release.tmpl.ifReady" $v.index }}
    mirror:
      host: {{ $v.svc.name }}.{{ $v.svc.namespace }}.svc.cluster.local
      port:
        number: {{ $v.servicePort }}
    mirrorPercentage:
      value: {{ include "release.tmpl.weight" $v.index }}
    {{ include "release.tmpl.end" . }}
    {{- end }}
{{- else if has .env.routing (list "kserve" "kserve-standard") }}
  {{- /*
  blue-green on KServe: the path rewrite differs per version and Istio rewrites per route, not
  per destination. So the weighted route "split" only picks a version, recording it in the
  `branch` header, and sends the request back through the gateway the entry Service names
  (Serverless: the Knative local gateway; Standard: the Istio ingress gateway, which applies
  this VirtualService through `gateway`), where the version's own route (matched on `branch`)
  rewrites the path and sends it to the predictor.
  */}}
  {{- range $v := .versions }}
  {{ include "release.tmpl.ifReady" $v.index }}
  - name: {{ $v.isvc.name }}
    match:
    - headers:
        branch:
          exact: {{ $v.isvc.name }}
    {{- include "release.istio.routeTo" (merge (dict "v" $v "branch" true) $) | nindent 4 }}
  {{ include "release.tmpl.end" . }}
  {{- end }}
  {{- /* "split", as v1.1 names it */}}
  - name: split
    route:
    {{- range $v := .versions }}
    {{ include "release.tmpl.ifReady" $v.index }}
    - destination:
        host: {{ $.env.entry }}.istio-system.svc.cluster.local
        {{- if eq $.env.routing "kserve-standard" }}
        {{- /* the ingress gateway's Service has several ports (15021, 80, 443): its HTTP one */}}
        port:
          number: 80
        {{- end }}
      weight: {{ include "release.tmpl.weight" $v.index }}
      headers:
        request:
          set:
            branch: {{ $v.isvc.name }}
            host: {{ $name }}.{{ $namespace }}
    {{ include "release.tmpl.end" . }}
    {{- end }}
{{- else }}
  {{- /* blue-green: one route, weighted over the ready versions */}}
  - name: {{ $name }}
    route:
    {{- range $v := .versions }}
    {{ include "release.tmpl.ifReady" $v.index }}
    {{- include "release.istio.destination" (merge (dict "v" $v "weighted" true) $) | nindent 4 }}
    {{ include "release.tmpl.end" . }}
    {{- end }}
{{- end }}
{{- end }}

{{/* ===== Gateway API: deployment-gtw, kserve-standard-gtw ===== */}}

{{/*
One backendRef to version .v's Service (deployment-gtw) or KServe predictor Service
(kserve-standard-gtw), with the `app-version` response header.
*/}}
{{- define "release.gatewayApi.backend" -}}
{{- $v := .v -}}
{{- $svc := $v.svc -}}
{{- $port := $v.servicePort -}}
{{- if eq .env.workload "isvc" -}}
  {{- $svc = dict "name" (printf "%s-%s" $v.isvc.name .env.predictor) "namespace" $v.isvc.namespace -}}
  {{- $port = include "release.kserve.predictorPort" . -}}
{{- end -}}
- group: ""
  kind: Service
  name: {{ $svc.name }}
  {{- if ne $svc.namespace (include "release.appNamespace" .root) }}
  namespace: {{ $svc.namespace }}
  {{- end }}
  port: {{ $port }}
  {{- if .weighted }}
  weight: {{ include "release.tmpl.weight" $v.index }}
  {{- end }}
  filters:
  - type: ResponseHeaderModifier
    responseHeaderModifier:
      add:
      - name: app-version
        value: {{ include "release.routing.versionName" . }}
{{- end }}

{{/*
The rule filters of a rule that sends to version .v alone: for KServe (kserve-standard-gtw) the
rewrite of every path to the version's infer endpoint, as on Istio; nothing for Deployments.
*/}}
{{- define "release.gatewayApi.ruleFilters" -}}
{{- if eq .env.workload "isvc" -}}
filters:
- type: URLRewrite
  urlRewrite:
    path:
      type: ReplaceFullPath
      replaceFullPath: /v2/models/{{ .v.isvc.name }}/infer
{{- end }}
{{- end }}

{{/*
The Service of the Gateway `gateway` (kserve-standard-gtw blue-green), as JSON {name, namespace,
port}: gatewayService ("name" or "namespace/name"), default `<gateway>-istio` (the Service of
Istio's automated deployment of a Gateway) in the application namespace; port gatewayServicePort,
default 80. Takes the chart context.
*/}}
{{- define "release.gatewayApi.gatewayService" -}}
{{- $ref := .Values.gatewayService | default (printf "%s-istio" .Values.gateway) -}}
{{- $namespace := include "release.appNamespace" . -}}
{{- $name := $ref -}}
{{- if contains "/" $ref -}}
  {{- $namespace = first (splitList "/" $ref) -}}
  {{- $name = last (splitList "/" $ref) -}}
{{- end -}}
{{- $port := include "release.port" (dict "value" .Values.gatewayServicePort "field" "gatewayServicePort" "default" 80) -}}
{{- toJson (dict "name" $name "namespace" $namespace "port" (atoi $port)) -}}
{{- end }}

{{/* A rule without matches that sends everything to version .v alone. */}}
{{- define "release.gatewayApi.rule" -}}
{{- with include "release.gatewayApi.ruleFilters" . }}
{{ . }}
{{- end }}
backendRefs:
{{ include "release.gatewayApi.backend" . }}
{{- end }}

{{- define "release.routing.httpRoute" -}}
{{- $root := .root -}}
{{- $name := include "release.appName" $root -}}
{{- $primary := first .versions -}}
apiVersion: gateway.networking.k8s.io/{{ $root.Values.gatewayAPIVersion | default "v1" }}
kind: HTTPRoute
metadata:
  name: {{ $name }}
  namespace: {{ include "release.appNamespace" $root }}
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: {{ $name }}
    port: 80
  {{- with $root.Values.gateway }}
  - name: {{ . }}
  {{- end }}
  hostnames:
  - {{ $name }}
  {{- include "release.appHosts" $root | nindent 2 }}
  rules:
{{- if eq .strategy "canary" }}
  {{- /* candidates first, each behind its matches; the primary takes the rest */}}
  {{- range $v := rest .versions }}
  {{- $raw := index $root.Values.application.versions (int $v.index) }}
  {{ include "release.tmpl.ifReady" $v.index }}
  - matches:
    {{- toYaml $raw.matches | nindent 4 }}
    {{- with include "release.gatewayApi.ruleFilters" (merge (dict "v" $v) $) }}
    {{- . | nindent 4 }}
    {{- end }}
    backendRefs:
    {{- include "release.gatewayApi.backend" (merge (dict "v" $v) $) | nindent 4 }}
  {{ include "release.tmpl.end" . }}
  {{- end }}
  {{- if and (include "release.analysis.enabled" $root) (rest .versions) }}
  {{- /* once promoted, the candidate (analysis: exactly one) takes the rest too */}}
  {{- $candidate := first (rest .versions) }}
  {{ include "release.tmpl.ifPromoted" . }}
  - {{ include "release.gatewayApi.rule" (merge (dict "v" $candidate) $) | nindent 4 | trim }}
  {{ include "release.tmpl.else" . }}
  - {{ include "release.gatewayApi.rule" (merge (dict "v" $primary) $) | nindent 4 | trim }}
  {{ include "release.tmpl.end" . }}
  {{- else }}
  - {{ include "release.gatewayApi.rule" (merge (dict "v" $primary) $) | nindent 4 | trim }}
  {{- end }}
{{- else if eq .env.workload "isvc" }}
  {{- /*
  blue-green on KServe (kserve-standard-gtw): the path rewrite differs per version, and a
  weighted backendRef can carry only header modifiers (Istio: any other backendRef filter is
  unsupported). So, as kserve-standard does with its VirtualService, the weighted rule only
  picks a version, recording it in the `branch` request header, and sends the request back
  through the Service of the Gateway `gateway` (gatewayService), where the version's own rule
  (matched on `branch`) rewrites the path, drops the header and sends it to the predictor.
  */}}
  {{- $gw := include "release.gatewayApi.gatewayService" $root | fromJson }}
  {{- range $v := .versions }}
  {{ include "release.tmpl.ifReady" $v.index }}
  - matches:
    - headers:
      - name: branch
        value: {{ $v.isvc.name }}
    {{- include "release.gatewayApi.ruleFilters" (merge (dict "v" $v) $) | nindent 4 }}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        remove:
        - branch
    backendRefs:
    {{- include "release.gatewayApi.backend" (merge (dict "v" $v) $) | nindent 4 }}
  {{ include "release.tmpl.end" . }}
  {{- end }}
  - backendRefs:
    {{- range $v := .versions }}
    {{ include "release.tmpl.ifReady" $v.index }}
    - group: ""
      kind: Service
      name: {{ $gw.name }}
      {{- if ne $gw.namespace (include "release.appNamespace" $root) }}
      namespace: {{ $gw.namespace }}
      {{- end }}
      port: {{ $gw.port }}
      weight: {{ include "release.tmpl.weight" $v.index }}
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set:
          - name: branch
            value: {{ $v.isvc.name }}
    {{ include "release.tmpl.end" . }}
    {{- end }}
{{- else }}
  {{- /* blue-green: one rule, weighted over the ready versions */}}
  - backendRefs:
    {{- range $v := .versions }}
    {{ include "release.tmpl.ifReady" $v.index }}
    {{- include "release.gatewayApi.backend" (merge (dict "v" $v "weighted" true) $) | nindent 4 }}
    {{ include "release.tmpl.end" . }}
    {{- end }}
{{- end }}
{{- end }}
