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

{{/* The strategy; absent or empty ("") means "none", as in Iter8 v1.1. */}}
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
  mode        KServe deployment mode the chart asks for with the annotation
              serving.kserve.io/deploymentMode ("" = KServe's default; Standard was RawDeployment)
  note        why an unsupported strategy cannot be done, added to the error (optional)
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
  "kserve-standard" (dict "workload" "isvc" "mode" "Standard" "entry" "istio-ingressgateway" "routing" "kserve-standard" "strategies" (list "none" "blue-green" "canary" "mirror") "predictor" "predictor")
  "kserve-standard-gtw" (dict "workload" "isvc" "mode" "Standard" "entry" "gamma-parent" "routing" "gateway-api" "strategies" $kserveStrategies "predictor" "predictor"
    "note" "KServe names each version's model after its InferenceService, so each version needs its own path rewrite, which a Gateway API rule cannot do per mirrored backend (environment kserve-standard does mirror)")
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
A whole number from the values: an integer, or a string of digits (`"30"`, as --set-string or a
quoted YAML value gives it; Iter8 v1.1 accepted both). Arguments (dict):
  value    the value (absent: default)
  field    the field's path, for the error message
  default  the result when value is absent
  min, max optional bounds
Anything else fails, naming the field.
*/}}
{{- define "release.int" -}}
{{- $v := .value -}}
{{- $n := .default -}}
{{- if kindIs "invalid" $v -}}
{{- else if kindIs "string" $v -}}
  {{- if not (regexMatch "^[0-9]+$" $v) -}}
    {{- fail (printf "%s must be a whole number (like 30 or \"30\"), got %q" .field $v) -}}
  {{- end -}}
  {{- $n = atoi $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
  {{- if ne (float64 $v) (float64 (int $v)) -}}
    {{- fail (printf "%s must be a whole number, got %v" .field $v) -}}
  {{- end -}}
  {{- $n = int $v -}}
{{- else -}}
  {{- fail (printf "%s must be a whole number (like 30 or \"30\"), got %v" .field $v) -}}
{{- end -}}
{{- if and (hasKey . "min") (lt (int $n) (int .min)) -}}
  {{- fail (printf "%s must be at least %d, got %d" .field (int .min) (int $n)) -}}
{{- end -}}
{{- if and (hasKey . "max") (gt (int $n) (int .max)) -}}
  {{- fail (printf "%s must be at most %d, got %d" .field (int .max) (int $n)) -}}
{{- end -}}
{{- int $n -}}
{{- end }}

{{/* A port from the values (see "release.int"): 1 to 65535. */}}
{{- define "release.port" -}}
{{- include "release.int" (merge (dict "min" 1 "max" 65535) .) -}}
{{- end }}

{{/*
The versions, normalized, as a JSON list. Each entry:
  index, name, namespace           version i is <app>-<i> unless versions[i].metadata.name is set
  weight                           versions[i].weight, default 50 (0 is kept)
  deploy, svc, isvc                {name, namespace} of the version's resources
  port                             deployment*: the container's port and the port of the Service
                                   the chart renders: versions[i].port, else application.port,
                                   else 80 (as Iter8 v1.1)
  servicePort                      deployment*: the port routes send to: the first port of
                                   serviceSpecification.spec.ports when given (that is the
                                   Service's real port), else port
Only scalars go through JSON; user-supplied structures (match, specifications) are read from
.Values where they are rendered, so their numbers keep their form.
*/}}
{{- define "release.versions" -}}
{{- $app := .Values.application -}}
{{- $appName := include "release.appName" . -}}
{{- $appNamespace := include "release.appNamespace" . -}}
{{- $appPort := include "release.port" (dict "value" $app.port "field" "application.port" "default" 80) -}}
{{- $versions := list -}}
{{- range $i, $raw := $app.versions -}}
  {{- $field := printf "application.versions[%d]" $i -}}
  {{- $meta := $raw.metadata | default dict -}}
  {{- $name := $meta.name | default (printf "%s-%d" $appName $i) -}}
  {{- $namespace := $meta.namespace | default $appNamespace -}}
  {{- $weight := include "release.int" (dict "value" $raw.weight "field" (printf "%s.weight" $field) "default" 50) -}}
  {{- $port := include "release.port" (dict "value" $raw.port "field" (printf "%s.port" $field) "default" $appPort) -}}
  {{- $servicePort := $port -}}
  {{- $svcPorts := (($raw.serviceSpecification | default dict).spec | default dict).ports | default list -}}
  {{- if and $svcPorts (not (kindIs "invalid" (first $svcPorts).port)) -}}
    {{- $servicePort = include "release.port" (dict "value" (first $svcPorts).port "field" (printf "%s.serviceSpecification.spec.ports[0].port" $field) "default" $port) -}}
  {{- end -}}
  {{- $versions = append $versions (dict
    "index" $i
    "name" $name
    "namespace" $namespace
    "weight" (atoi $weight)
    "port" (atoi $port)
    "servicePort" (atoi $servicePort)
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

{{/*
The port of the predictor Service KServe creates in Standard mode (`<isvc>-predictor`): always 80,
whatever port the model server listens on (8080 for MLServer).
*/}}
{{- define "release.kserve.predictorPort" -}}
80
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
{{- include "release.port" (dict "value" (.Values.service | default dict).port "field" "service.port" "default" 8033) -}}
{{- end }}

{{/* The hosts an application answers to, one per line: <app>.<ns>, .svc, .svc.cluster.local. */}}
{{- define "release.appHosts" -}}
{{- $name := include "release.appName" . -}}
{{- $ns := include "release.appNamespace" . -}}
- {{ $name }}.{{ $ns }}
- {{ $name }}.{{ $ns }}.svc
- {{ $name }}.{{ $ns }}.svc.cluster.local
{{- end }}
