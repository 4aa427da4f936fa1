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

{{/*
The resource types as {short: {Group, Version, Resource, conditions}}, with field names
accepted in any case (group/version/resource) normalized, as JSON. Fails on an incomplete type.
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
  {{- $_ := set $types $short $type -}}
{{- end -}}
{{- toJson $types -}}
{{- end }}

{{/* The controller's configuration file (spec: resourceTypes, defaultResync, clusterScoped). */}}
{{- define "controller.config" -}}
resourceTypes:
  {{- include "controller.resourceTypes" . | fromJson | toYaml | nindent 2 }}
defaultResync: {{ .Values.defaultResync | default "15m" }}
clusterScoped: {{ .Values.clusterScoped | default false }}
{{- end }}

{{/*
RBAC rules for the watched and routing resource types, least privilege:
  - every configured type: get/list/watch, plus patch/update to remove the legacy
    `iter8.tools/finalizer` from objects being deleted;
  - routing types (values routingResources): also create/delete, to apply and clean up routing objects;
  - configmaps get/list/watch (routemaps) even if `cm` is not a configured type;
  - events (core and events.k8s.io) create/patch.
*/}}
{{- define "controller.rules" -}}
{{- $watched := dict -}}
{{- $routing := dict -}}
{{- range $short, $t := include "controller.resourceTypes" . | fromJson -}}
  {{- $list := get $watched $t.Group | default list -}}
  {{- if not (has $t.Resource $list) }}{{ $_ := set $watched $t.Group (append $list $t.Resource) }}{{ end -}}
  {{- if has $t.Resource $.Values.routingResources -}}
    {{- $list = get $routing $t.Group | default list -}}
    {{- if not (has $t.Resource $list) }}{{ $_ := set $routing $t.Group (append $list $t.Resource) }}{{ end -}}
  {{- end -}}
{{- end -}}
{{- range $group, $resources := $watched }}
- apiGroups: {{ list $group | toJson }}
  resources: {{ sortAlpha $resources | toJson }}
  verbs: ["get", "list", "watch", "patch", "update"]
{{- end }}
{{- range $group, $resources := $routing }}
- apiGroups: {{ list $group | toJson }}
  resources: {{ sortAlpha $resources | toJson }}
  verbs: ["create", "delete", "get", "list", "watch", "patch"]
{{- end }}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Read CRDs, to notice a resource type's CRD being installed after start. */}}
{{- define "controller.crdRule" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
