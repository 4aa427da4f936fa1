{{/*
Checks the values the JSON schema cannot: combinations of environment, strategy and version
fields. Every message names the field to fix. Included at the top of every manifest template,
so no template runs on values that would make it fail obscurely.
*/}}
{{- define "release.validate" -}}
{{- $environments := include "release.environments" . | fromJson -}}
{{- $known := keys $environments | sortAlpha | join ", " -}}
{{- if not .Values.environment -}}
  {{- fail (printf "environment is required (one of: %s)" $known) -}}
{{- end -}}
{{- if not (hasKey $environments (toString .Values.environment)) -}}
  {{- fail (printf "environment %q is unknown (one of: %s)" (toString .Values.environment) $known) -}}
{{- end -}}
{{- if not .Values.application -}}
  {{- fail "application is required" -}}
{{- end -}}
{{- $env := include "release.env" . | fromJson -}}
{{- $strategy := include "release.strategy" . -}}
{{- if not (has $strategy $env.strategies) -}}
  {{- fail (printf "application.strategy %q is not supported by environment %s (supported: %s)" $strategy .Values.environment (join ", " $env.strategies)) -}}
{{- end -}}
{{- $versions := .Values.application.versions | default list -}}
{{- if not $versions -}}
  {{- fail "application.versions must list at least one version" -}}
{{- end -}}
{{- if and (eq $strategy "mirror") (gt (len $versions) 2) -}}
  {{- fail (printf "application.versions has %d entries but strategy mirror supports one primary and one candidate" (len $versions)) -}}
{{- end -}}
{{- $app := .Values.application -}}
{{- range $i, $v := $versions -}}
  {{- $field := printf "application.versions[%d]" $i -}}
  {{- if eq $env.workload "deployment" -}}
    {{- if and (not $v.image) (not $v.deploymentSpecification) -}}
      {{- fail (printf "%s.image is required for environment %s (or give %s.deploymentSpecification)" $field $.Values.environment $field) -}}
    {{- end -}}
  {{- else -}}
    {{- if not $v.inferenceServiceSpecification -}}
      {{- if not $v.storageUri -}}
        {{- fail (printf "%s.storageUri is required for environment %s (or give %s.inferenceServiceSpecification)" $field $.Values.environment $field) -}}
      {{- end -}}
      {{- if not ($v.modelFormat | default $app.modelFormat) -}}
        {{- fail (printf "%s.modelFormat (or application.modelFormat) is required for environment %s (or give %s.inferenceServiceSpecification)" $field $.Values.environment $field) -}}
      {{- end -}}
    {{- end -}}
  {{- end -}}
  {{- if and (eq $env.routing "gateway-api") (eq $strategy "canary") (gt $i 0) (not $v.matches) -}}
    {{- fail (printf "%s.matches is required for environment %s with strategy canary: list the Gateway API HTTPRouteMatch clauses that send requests to this candidate" $field $.Values.environment) -}}
  {{- end -}}
{{- end -}}
{{- end }}
