{{/*
The resources that make one version. Each takes (dict "root" $ "v" <normalized version> "raw" <version values>).
*/}}

{{/*
Deployment of a deployment* version: deploymentSpecification.spec verbatim, else one container
named after the version, its pods labelled `app: <version name>` (as Iter8 v1.1, also when
deploymentSpecification.metadata.name renames the Deployment), listening on the version's port.
*/}}
{{- define "release.deployment" -}}
{{- $spec := .raw.deploymentSpecification | default dict -}}
apiVersion: apps/v1
kind: Deployment
{{ include "release.versionMetadata" (dict "root" .root "raw" .raw "ref" .v.deploy "given" $spec.metadata) }}
spec:
{{- if $spec.spec }}
  {{- toYaml $spec.spec | nindent 2 }}
{{- else }}
  selector:
    matchLabels:
      app: {{ .v.name }}
  template:
    metadata:
      labels:
        app: {{ .v.name }}
    spec:
      containers:
      - name: {{ .v.name }}
        image: {{ .raw.image }}
        ports:
        - containerPort: {{ .v.port }}
{{- end }}
{{- end }}

{{/*
Service of a deployment* version: serviceSpecification.spec verbatim, else the version's port,
selecting `app: <version name>` (as Iter8 v1.1: pods labelled for v1.1 stay selected).
*/}}
{{- define "release.service" -}}
{{- $spec := .raw.serviceSpecification | default dict -}}
apiVersion: v1
kind: Service
{{ include "release.versionMetadata" (dict "root" .root "raw" .raw "ref" .v.svc "given" $spec.metadata) }}
spec:
{{- if $spec.spec }}
  {{- toYaml $spec.spec | nindent 2 }}
{{- else }}
  selector:
    app: {{ .v.name }}
  ports:
  - port: {{ .v.port }}
{{- end }}
{{- end }}

{{/*
InferenceService of a kserve* version: inferenceServiceSpecification.spec verbatim, else a
predictor model from modelFormat, runtime, storageUri, protocolVersion and ports (each defaulting
to the application-level value). ModelMesh versions get the ModelMesh deployment-mode annotation
and no minReplicas (ModelMesh places models itself); Standard-mode versions (kserve-standard*)
get `serving.kserve.io/deploymentMode: Standard`, so KServe makes a Deployment and a Service
`<isvc>-predictor` whatever its configured default mode.
*/}}
{{- define "release.inferenceService" -}}
{{- $spec := .raw.inferenceServiceSpecification | default dict -}}
{{- $app := .root.Values.application -}}
{{- $modelmesh := eq .env.workload "modelmesh" -}}
{{- $annotations := dict -}}
{{- if $modelmesh }}{{ $_ := set $annotations "serving.kserve.io/deploymentMode" "ModelMesh" }}{{ end -}}
{{- with .env.mode }}{{ $_ := set $annotations "serving.kserve.io/deploymentMode" . }}{{ end -}}
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
{{ include "release.versionMetadata" (dict "root" .root "raw" .raw "ref" .v.isvc "given" $spec.metadata "annotations" $annotations) }}
spec:
{{- if $spec.spec }}
  {{- toYaml $spec.spec | nindent 2 }}
{{- else }}
  {{- $runtime := .raw.runtime | default $app.runtime }}
  {{- $protocolVersion := .raw.protocolVersion | default $app.protocolVersion }}
  {{- $ports := .raw.ports | default $app.ports }}
  predictor:
    {{- if not $modelmesh }}
    minReplicas: 1
    {{- end }}
    model:
      modelFormat:
        name: {{ .raw.modelFormat | default $app.modelFormat }}
      {{- with $runtime }}
      runtime: {{ . }}
      {{- end }}
      storageUri: {{ .raw.storageUri }}
      {{- with $protocolVersion }}
      protocolVersion: {{ . }}
      {{- end }}
      {{- with $ports }}
      ports:
        {{- toYaml . | nindent 6 }}
      {{- end }}
{{- end }}
{{- end }}
