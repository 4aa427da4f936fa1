{{/* Labels on every object of the chart. */}}
{{- define "controller.labels" -}}
{{ include "controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Labels that select the controller pods. */}}
{{- define "controller.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Where the configuration file is mounted. */}}
{{- define "controller.configDir" -}}/config{{- end }}
{{- define "controller.configFile" -}}{{ include "controller.configDir" . }}/config.yaml{{- end }}
{{- define "controller.metricsConfigFile" -}}{{ include "controller.configDir" . }}/metrics.yaml{{- end }}

{{/* The metrics store's implementation, checked: embedded (or badgerdb) | redis. */}}
{{- define "controller.metricsImplementation" -}}
{{- $impl := .Values.metrics.implementation | default "embedded" -}}
{{- if not (has $impl (list "embedded" "badgerdb" "redis")) }}{{ fail (printf "metrics.implementation %q is not known: use embedded, badgerdb or redis" $impl) }}{{ end -}}
{{- if and (ne $impl "redis") (gt (int .Values.replicas) 1) }}{{ fail (printf "metrics.implementation %s keeps A/B/n data in one pod's volume: with replicas %d use metrics.implementation=redis" $impl (int .Values.replicas)) }}{{ end -}}
{{- if eq $impl "badgerdb" }}embedded{{ else }}{{ $impl }}{{ end -}}
{{- end }}

{{/* The metrics store's settings file (crates/abn/src/config.rs). */}}
{{- define "controller.metricsConfig" -}}
{{- $m := .Values.metrics -}}
implementation: {{ include "controller.metricsImplementation" . }}
ttl: {{ $m.ttl | default "24h" }}
maxUsers: {{ $m.maxUsers | default 1000000 | int64 }}
maxValues: {{ $m.maxValues | default 10000 | int64 }}
embedded:
  dir: {{ $m.badgerdb.dir | default "/metrics" }}
{{- if eq (include "controller.metricsImplementation" .) "redis" }}
redis:
  address: {{ $m.redis.address | quote }}
  {{- with $m.redis.username }}
  username: {{ . | quote }}
  {{- end }}
  {{- with $m.redis.password }}
  password: {{ . | quote }}
  {{- end }}
  db: {{ $m.redis.db | default 0 | int }}
{{- end }}
{{- end }}

{{/*
The resource types as {short: {Group, Version, Resource, conditions, checkGeneration}}, with
field names accepted in any case (group/version/resource) normalized, as JSON. Fails on an
incomplete type. `conditions` and `checkGeneration` are written only when set: without
`checkGeneration` the binary's default for the group applies (off for serving.kserve.io,
whose observedGeneration is a child's, on for every other group).
*/}}
{{- define "controller.resourceTypes" -}}
{{- $types := dict -}}
{{- range $short, $t := .Values.resourceTypes -}}
  {{- $t = $t | default dict -}}
  {{- $group := $t.Group | default $t.group | default "" -}}
  {{- $version := $t.Version | default $t.version -}}
  {{- $resource := $t.Resource | default $t.resource -}}
  {{- if not $version }}{{ fail (printf "resourceTypes.%s.Version is required" $short) }}{{ end -}}
  {{- if not $resource }}{{ fail (printf "resourceTypes.%s.Resource is required" $short) }}{{ end -}}
  {{- $type := dict "Group" $group "Version" $version "Resource" $resource -}}
  {{- with $t.conditions }}{{ $_ := set $type "conditions" . }}{{ end -}}
  {{- if not (kindIs "invalid" $t.checkGeneration) }}{{ $_ := set $type "checkGeneration" $t.checkGeneration }}{{ end -}}
  {{- $_ := set $types $short $type -}}
{{- end -}}
{{- toJson $types -}}
{{- end }}

{{/*
The plural resource names routing objects are written as (value routingResources, lower-cased
as the binary does), as a JSON list. The same list goes into the config file and into the RBAC
rules, so the controller is allowed to write exactly the kinds it will write. Unset (null): the
binary's default; empty names are dropped.
*/}}
{{- define "controller.routingResources" -}}
{{- $list := list -}}
{{- $given := .Values.routingResources -}}
{{- if kindIs "invalid" $given }}{{ $given = list "virtualservices" "httproutes" "serviceentries" }}{{ end -}}
{{- /* `--set routingResources={}` gives [""]: empty names mean none */}}
{{- range $given }}{{ if . }}{{ $list = append $list (lower .) }}{{ end }}{{ end -}}
{{- toJson $list -}}
{{- end }}

{{/*
The controller's configuration file: every key the binary reads (crates/core/src/config.rs)
except `addFinalizer`, which it ignores. Top-level keys are always written, from values.yaml,
whose defaults are the binary's; a null value falls back to that same default, except a null
resourceTypes, which means no types (as the RBAC rules then grant none).
*/}}
{{- define "controller.config" -}}
resourceTypes:
  {{- include "controller.resourceTypes" . | fromJson | toYaml | nindent 2 }}
defaultResync: {{ .Values.defaultResync | default "15m" }}
clusterScoped: {{ .Values.clusterScoped | default false }}
routemapVersions:
  {{- .Values.routemapVersions | default (list "v1.1") | toYaml | nindent 2 }}
routingResources:
  {{- include "controller.routingResources" . | fromJsonArray | toYaml | nindent 2 }}
{{- end }}

{{/*
RBAC rules, least privilege: only what the controller calls (crates/k8s).
  - every configured type: list/watch (its watch), plus patch to remove the legacy
    `iter8.tools/finalizer` from objects being deleted (a JSON merge patch);
  - routing types (configured types whose resource is in routingResources): also
    create/patch/delete, for server-side apply (which creates missing objects) and clean-up,
    and get, to see that an object it is about to create does not exist unlabelled already
    (it never takes over an object it did not write);
  - configmaps get/list/watch (routemaps) even if `cm` is not a configured type; get: before
    deleting a routemap's routing objects, ask whether its ConfigMap is really gone;
  - events.k8s.io events create/patch (the only Event API used).
*/}}
{{- define "controller.rules" -}}
{{- $watched := dict -}}
{{- $routing := dict -}}
{{- $routingResources := include "controller.routingResources" . | fromJsonArray -}}
{{- range $short, $t := include "controller.resourceTypes" . | fromJson -}}
  {{- $list := get $watched $t.Group | default list -}}
  {{- if not (has $t.Resource $list) }}{{ $_ := set $watched $t.Group (append $list $t.Resource) }}{{ end -}}
  {{- if has $t.Resource $routingResources -}}
    {{- $list = get $routing $t.Group | default list -}}
    {{- if not (has $t.Resource $list) }}{{ $_ := set $routing $t.Group (append $list $t.Resource) }}{{ end -}}
  {{- end -}}
{{- end -}}
{{- range $group, $resources := $watched }}
- apiGroups: {{ list $group | toJson }}
  resources: {{ sortAlpha $resources | toJson }}
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- range $group, $resources := $routing }}
- apiGroups: {{ list $group | toJson }}
  resources: {{ sortAlpha $resources | toJson }}
  verbs: ["create", "get", "patch", "delete"]
{{- end }}
{{- /* routemaps: read; analysis status ConfigMaps (<routemap>-analysis): written and deleted */}}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
