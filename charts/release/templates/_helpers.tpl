{{/*
Names, environment traits and the normalized list of versions.
Every other template reads versions through "release.versions" so naming rules live here only.
*/}}

{{/* The application name: application.metadata.name, else the Helm release name. */}}
{{- define "release.appName" -}}
{{- $meta := .Values.application.metadata | default dict -}}
{{- $meta.name | default .Release.Name -}}
{{- end }}

{{/* The application namespace: application.metadata.namespace, else the release namespace. */}}
{{- define "release.appNamespace" -}}
{{- $meta := .Values.application.metadata | default dict -}}
{{- $meta.namespace | default .Release.Namespace -}}
{{- end }}

{{/* The strategy; absent or empty means "none". */}}
{{- define "release.strategy" -}}
{{- .Values.application.strategy | default "none" -}}
{{- end }}

{{/*
What each environment is made of, as JSON:
  workload    deployment (Deployment + Service) | isvc (InferenceService) | modelmesh (ModelMesh InferenceService)
  entry       the shared object named after the application
  routing     which routing-template family renders the routing object ("" = none)
  strategies  the strategies the environment supports
  predictor   KServe predictor Service suffix (it changed in KServe 0.11)
*/}}
{{- define "release.environments" -}}
{{- $kserveStrategies := list "none" "blue-green" "canary" -}}
{{- $kserve := dict "workload" "isvc" "entry" "knative-local-gateway" "routing" "kserve" "strategies" $kserveStrategies "predictor" "predictor" -}}
{{- toJson (dict
  "deployment" (dict "workload" "deployment" "entry" "" "routing" "" "strategies" (list "none"))
  "deployment-istio" (dict "workload" "deployment" "entry" "istio-ingressgateway" "routing" "istio" "strategies" (list "none" "blue-green" "canary" "mirror"))
  "deployment-gtw" (dict "workload" "deployment" "entry" "gamma-parent" "routing" "gateway-api" "strategies" $kserveStrategies)
  "kserve" $kserve
  "kserve-0.11" $kserve
  "kserve-0.10" (merge (dict "predictor" "predictor-default") $kserve)
  "kserve-modelmesh-istio" (dict "workload" "modelmesh" "entry" "service-entry" "routing" "modelmesh" "strategies" $kserveStrategies)
) -}}
{{- end }}

{{/* The traits of .Values.environment as JSON ("{}" when unknown). */}}
{{- define "release.env" -}}
{{- $all := include "release.environments" . | fromJson -}}
{{- toJson (get $all (toString .Values.environment) | default dict) -}}
{{- end }}

{{/* The name and namespace of a resource: the given *Specification.metadata wins over the version's. */}}
{{- define "release.resourceRef" -}}
{{- $given := (.spec | default dict).metadata | default dict -}}
{{- toJson (dict "name" ($given.name | default .name) "namespace" ($given.namespace | default .namespace)) -}}
{{- end }}

{{/*
The versions, normalized, as a JSON list. Each entry:
  index, name, namespace           version i is <app>-<i> unless versions[i].metadata.name is set
  weight                           versions[i].weight, default 50 (0 is kept)
  deploy, svc, isvc                {name, namespace} of the version's resources
  port                             deployment*: versions[i].port, else serviceSpecification's first
                                   port, else application.port, else 80
Only scalars go through JSON; user-supplied structures (match, specifications) are read from
.Values where they are rendered, so their numbers keep their form.
*/}}
{{- define "release.versions" -}}
{{- $app := .Values.application -}}
{{- $appName := include "release.appName" . -}}
{{- $appNamespace := include "release.appNamespace" . -}}
{{- $versions := list -}}
{{- range $i, $raw := $app.versions -}}
  {{- $meta := $raw.metadata | default dict -}}
  {{- $name := $meta.name | default (printf "%s-%d" $appName $i) -}}
  {{- $namespace := $meta.namespace | default $appNamespace -}}
  {{- $weight := 50 -}}
  {{- if not (kindIs "invalid" $raw.weight) }}{{ $weight = int $raw.weight }}{{ end -}}
  {{- $port := 80 -}}
  {{- $svcPorts := (($raw.serviceSpecification | default dict).spec | default dict).ports | default list -}}
  {{- if not (kindIs "invalid" $raw.port) -}}
    {{- $port = $raw.port -}}
  {{- else if and $svcPorts (first $svcPorts).port -}}
    {{- $port = (first $svcPorts).port -}}
  {{- else if not (kindIs "invalid" $app.port) -}}
    {{- $port = $app.port -}}
  {{- end -}}
  {{- $versions = append $versions (dict
    "index" $i
    "name" $name
    "namespace" $namespace
    "weight" $weight
    "port" (int $port)
    "deploy" (include "release.resourceRef" (dict "spec" $raw.deploymentSpecification "name" $name "namespace" $namespace) | fromJson)
    "svc" (include "release.resourceRef" (dict "spec" $raw.serviceSpecification "name" $name "namespace" $namespace) | fromJson)
    "isvc" (include "release.resourceRef" (dict "spec" $raw.inferenceServiceSpecification "name" $name "namespace" $namespace) | fromJson)
  ) -}}
{{- end -}}
{{- toJson $versions -}}
{{- end }}

{{/*
The metadata block of a version resource. Arguments (dict):
  root     the chart context
  v        the normalized version
  raw      the version's values
  ref      {name, namespace} of the resource
  given    the *Specification.metadata, which wins over everything else
  annotations  extra annotations the environment needs (optional)
Labels: versions[i].metadata.labels over application.metadata.labels; `iter8.tools/watch: "true"`
is always set, since without it the controller does not see the resource.
*/}}
{{- define "release.versionMetadata" -}}
{{- $vmeta := .raw.metadata | default dict -}}
{{- $ameta := .root.Values.application.metadata | default dict -}}
{{- $given := deepCopy (.given | default dict) -}}
{{- $labels := merge (deepCopy ($given.labels | default dict)) ($vmeta.labels | default dict) ($ameta.labels | default dict) -}}
{{- $_ := set $labels "iter8.tools/watch" "true" -}}
{{- $annotations := merge (deepCopy ($given.annotations | default dict)) (.annotations | default dict) ($vmeta.annotations | default dict) ($ameta.annotations | default dict) -}}
{{- $rest := omit $given "name" "namespace" "labels" "annotations" -}}
metadata:
  name: {{ .ref.name }}
  namespace: {{ .ref.namespace }}
  labels:
    {{- toYaml $labels | nindent 4 }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $rest }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Predictor host of a KServe InferenceService (its namespace's cluster-local name). */}}
{{- define "release.kserve.predictorHost" -}}
{{ .v.isvc.name }}-{{ .env.predictor }}.{{ .v.isvc.namespace }}.svc.cluster.local
{{- end }}

{{/* ModelMesh serving host and port: service.host / service.port, else ModelMesh's defaults. */}}
{{- define "release.modelmesh.host" -}}
{{- (.Values.service | default dict).host | default "modelmesh-serving.modelmesh-serving.svc.cluster.local" -}}
{{- end }}
{{- define "release.modelmesh.port" -}}
{{- (.Values.service | default dict).port | default 8033 | int -}}
{{- end }}

{{/* The application port (deployment-gtw parent Service): application.port, else 80. */}}
{{- define "release.appPort" -}}
{{- .Values.application.port | default 80 | int -}}
{{- end }}

{{/* The hosts an application answers to, one per line: <app>.<ns>, .svc, .svc.cluster.local. */}}
{{- define "release.appHosts" -}}
{{- $name := include "release.appName" . -}}
{{- $ns := include "release.appNamespace" . -}}
- {{ $name }}.{{ $ns }}
- {{ $name }}.{{ $ns }}.svc
- {{ $name }}.{{ $ns }}.svc.cluster.local
{{- end }}
