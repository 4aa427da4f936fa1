{{/* The ready task: one per object named in .Values.ready. */}}
{{- define "task.ready" -}}
{{- $types := omit .Values.ready "timeout" "namespace" -}}
{{- range $type, $name := $types }}
{{- $def := get $.Values.resourceTypes $type }}
{{- if not $def }}{{ fail (printf "ready.%s: no such type in resourceTypes (known: %s)" $type (keys $.Values.resourceTypes | sortAlpha | join ", ")) }}{{ end }}
- task: ready
  with:
    name: {{ $name | quote }}
    group: {{ get $def "Group" | default "" | quote }}
    version: {{ get $def "Version" | quote }}
    resource: {{ get $def "Resource" | quote }}
    {{- with (get $def "conditions") }}
    conditions:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    namespace: {{ coalesce $.Values.ready.namespace $.Release.Namespace }}
    {{- with $.Values.ready.timeout }}
    timeout: {{ . }}
    {{- end }}
{{- end }}
{{- end }}

{{/* A load task (http or grpc), with its warm-up run first if asked for. */}}
{{- define "task.load" -}}
{{- $name := index . 0 -}}
{{- $vals := mustDeepCopy (index . 1) -}}
{{- if eq $name "http" -}}
{{- if and (not $vals.url) (not $vals.endpoints) }}{{ fail "http: set url or endpoints" }}{{ end -}}
{{- range $id, $ep := $vals.endpoints }}{{ if and (not $ep.url) (not $vals.url) }}{{ fail (printf "http.endpoints.%s: no url" $id) }}{{ end }}{{ end -}}
{{- else -}}
{{- if and (not $vals.host) (not $vals.endpoints) }}{{ fail "grpc: set host or endpoints" }}{{ end -}}
{{- if and (not $vals.call) (not $vals.endpoints) }}{{ fail "grpc: set call or endpoints" }}{{ end -}}
{{- end -}}
{{- if or $vals.warmupNumRequests $vals.warmupDuration }}
{{- $warmup := mustDeepCopy $vals }}
{{- $_ := unset $warmup "warmupNumRequests" }}
{{- $_ := unset $warmup "warmupDuration" }}
{{- $_ := unset $warmup "slos" }}
{{- if $vals.warmupNumRequests }}
{{- $_ := unset $warmup "duration" }}
{{- $_ := set $warmup (ternary "numRequests" "total" (eq $name "http")) $vals.warmupNumRequests }}
{{- else }}
{{- $_ := unset $warmup (ternary "numRequests" "total" (eq $name "http")) }}
{{- $_ := set $warmup "duration" $vals.warmupDuration }}
{{- end }}
{{- $_ := set $warmup "warmup" true }}
- task: {{ $name }}
  with:
    {{- toYaml $warmup | nindent 4 }}
{{- end }}
{{- $_ := unset $vals "warmupNumRequests" }}
{{- $_ := unset $vals "warmupDuration" }}
- task: {{ $name }}
  with:
    {{- toYaml $vals | nindent 4 }}
{{- end }}

{{/* The experiment file the Job runs (Iter8 v1.1's shape). */}}
{{- define "experiment" -}}
{{- if not .Values.tasks }}{{ fail "tasks is empty: list some of ready, http, grpc" }}{{ end -}}
metadata:
  name: {{ .Release.Name }}
  namespace: {{ .Release.Namespace }}
spec:
{{- range .Values.tasks }}
{{- if eq . "ready" }}
{{- include "task.ready" $ | indent 0 }}
{{- else if eq . "http" }}
{{- include "task.load" (list "http" $.Values.http) }}
{{- else if eq . "grpc" }}
{{- include "task.load" (list "grpc" $.Values.grpc) }}
{{- else }}
{{- fail (printf "tasks: %q is not a task (use ready, http, grpc)" .) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "iter8.serviceAccount" -}}
{{ .Values.serviceAccountName | default (printf "%s-iter8-sa" .Release.Name) }}
{{- end }}
