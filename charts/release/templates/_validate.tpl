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
  {{- $why := "" -}}
  {{- with $env.note }}{{ $why = printf ": %s" . }}{{ end -}}
  {{- fail (printf "application.strategy %q is not supported by environment %s (supported: %s)%s" $strategy .Values.environment (join ", " $env.strategies) $why) -}}
{{- end -}}
{{- if and (eq $env.routing "kserve-standard") (has $strategy (list "blue-green" "mirror")) (not .Values.gateway) -}}
  {{- $through := "the weighted route passes through it so that each version's route can rewrite the path to its own model" -}}
  {{- if eq $strategy "mirror" }}{{ $through = "mirrored copies pass through it so that the candidate's route can rewrite the path to its own model" }}{{ end -}}
  {{- fail (printf "gateway is required for environment %s with strategy %s: the Istio Gateway (namespace/name) of istio-ingressgateway, which must accept the host %s.%s; %s" .Values.environment $strategy (include "release.appName" .) (include "release.appNamespace" .) $through) -}}
{{- end -}}
{{- if and (eq $env.routing "gateway-api") (eq $env.workload "isvc") (eq $strategy "blue-green") (not .Values.gateway) -}}
  {{- fail (printf "gateway is required for environment %s with strategy blue-green: the Gateway (in namespace %s) the HTTPRoute attaches to, which must accept the host %s.%s; the weighted rule sends each request back through its Service (gatewayService, default <gateway>-istio) so that each version's rule can rewrite the path to its own model" .Values.environment (include "release.appNamespace" .) (include "release.appName" .) (include "release.appNamespace" .)) -}}
{{- end -}}
{{- with .Values.gatewayService -}}
  {{- if not (regexMatch "^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .)) -}}
    {{- fail (printf "gatewayService %q must be the name of a Service (name, or namespace/name): the Service of the Gateway `gateway`" (toString .)) -}}
  {{- end -}}
{{- end -}}
{{- $versions := .Values.application.versions | default list -}}
{{- if not $versions -}}
  {{- fail "application.versions must list at least one version" -}}
{{- end -}}
{{- if and (eq $strategy "mirror") (gt (len $versions) 2) -}}
  {{- fail (printf "application.versions has %d entries but strategy mirror supports one primary and one candidate" (len $versions)) -}}
{{- end -}}
{{- $app := .Values.application -}}
{{- $modeKey := "serving.kserve.io/deploymentMode" -}}
{{- if $env.mode -}}
  {{- $given := get (($app.metadata | default dict).annotations | default dict) $modeKey -}}
  {{- if and $given (not (has $given (list $env.mode "RawDeployment"))) -}}
    {{- fail (printf "application.metadata.annotations sets %s: %s, but environment %s deploys in %s mode (remove the annotation, or choose a Serverless environment such as kserve)" $modeKey $given .Values.environment $env.mode) -}}
  {{- end -}}
{{- end -}}
{{- range $i, $v := $versions -}}
  {{- $field := printf "application.versions[%d]" $i -}}
  {{- if $env.mode -}}
    {{- range $where := list "metadata" "inferenceServiceSpecification.metadata" -}}
      {{- $meta := $v.metadata | default dict -}}
      {{- if ne $where "metadata" }}{{ $meta = ($v.inferenceServiceSpecification | default dict).metadata | default dict }}{{ end -}}
      {{- $given := get ($meta.annotations | default dict) $modeKey -}}
      {{- if and $given (not (has $given (list $env.mode "RawDeployment"))) -}}
        {{- fail (printf "%s.%s.annotations sets %s: %s, but environment %s deploys in %s mode (remove the annotation, or choose a Serverless environment such as kserve)" $field $where $modeKey $given $.Values.environment $env.mode) -}}
      {{- end -}}
    {{- end -}}
  {{- end -}}
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
{{- if include "release.analysis.enabled" . -}}
  {{- include "release.validate.analysis" (dict "analysis" $app.analysis "strategy" $strategy "versions" $versions) -}}
{{- end -}}
{{- end }}

{{/*
Checks of application.analysis (docs/analysis.md) that values.schema.json cannot express: the
strategy and versions it needs, the order of steps, unique metric names, the metric source
and what each source needs, min <= max. Arguments (dict): analysis, strategy, versions.
*/}}
{{- define "release.validate.analysis" -}}
{{- $a := .analysis -}}
{{- if not (has .strategy (list "blue-green" "canary")) -}}
  {{- fail (printf "application.analysis needs application.strategy blue-green or canary (strategy is %s)" .strategy) -}}
{{- end -}}
{{- if ne (len .versions) 2 -}}
  {{- fail (printf "application.analysis needs exactly two versions, the primary and one candidate (application.versions has %d)" (len .versions)) -}}
{{- end -}}
{{- if hasKey $a "steps" -}}
  {{- if ne .strategy "blue-green" -}}
    {{- fail (printf "application.analysis.steps is for strategy blue-green only (strategy is %s)" .strategy) -}}
  {{- end -}}
  {{- $prev := "" -}}
  {{- range $s := $a.steps -}}
    {{- if and (ne (toString $prev) "") (le (float64 $s) (float64 $prev)) -}}
      {{- fail (printf "application.analysis.steps must be strictly increasing: %v follows %v" $s $prev) -}}
    {{- end -}}
    {{- $prev = $s -}}
  {{- end -}}
{{- end -}}
{{- $prometheusUser := "" -}}
{{- $names := dict -}}
{{- range $i, $m := $a.metrics | default list -}}
  {{- $field := printf "application.analysis.metrics[%d]" $i -}}
  {{- if hasKey $names $m.name -}}
    {{- fail (printf "%s.name %q is already the name of application.analysis.metrics[%d]" $field $m.name (get $names $m.name)) -}}
  {{- end -}}
  {{- $_ := set $names $m.name $i -}}
  {{- $source := "prometheus" -}}
  {{- if hasKey $m "source" -}}
    {{- $source = toString $m.source -}}
  {{- end -}}
  {{- if not (has $source (list "prometheus" "abn")) -}}
    {{- fail (printf "%s.source %q is unknown (one of: prometheus, abn)" $field $source) -}}
  {{- end -}}
  {{- if eq $source "prometheus" -}}
    {{- if not (trim (toString ($m.query | default ""))) -}}
      {{- fail (printf "%s.query is required for source prometheus: a PromQL query (metric %q)" $field $m.name) -}}
    {{- end -}}
    {{- range $k := list "statistic" "minSamples" -}}
      {{- if hasKey $m $k -}}
        {{- fail (printf "%s.%s is for source abn only (metric %q has source prometheus)" $field $k $m.name) -}}
      {{- end -}}
    {{- end -}}
    {{- if not $prometheusUser -}}
      {{- $prometheusUser = printf "%s has source prometheus" $field -}}
    {{- end -}}
  {{- else if hasKey $m "query" -}}
    {{- fail (printf "%s.query is for source prometheus only (metric %q has source %s)" $field $m.name $source) -}}
  {{- end -}}
  {{- range $k := list "thresholdRange" "relativeRange" -}}
    {{- $r := get $m $k | default dict -}}
    {{- if and (hasKey $r "min") (hasKey $r "max") -}}
      {{- if gt (float64 $r.min) (float64 $r.max) -}}
        {{- fail (printf "%s.%s.min (%v) must not exceed max (%v)" $field $k $r.min $r.max) -}}
      {{- end -}}
    {{- end -}}
  {{- end -}}
{{- end -}}
{{- if and $a.sampleSize (not $prometheusUser) -}}
  {{- $prometheusUser = "application.analysis.sampleSize is a prometheus query" -}}
{{- end -}}
{{- if $prometheusUser -}}
  {{- $prometheus := ($a.provider | default dict).prometheus | default dict -}}
  {{- if not $prometheus.address -}}
    {{- fail (printf "application.analysis.provider.prometheus.address is required: %s" $prometheusUser) -}}
  {{- end -}}
{{- end -}}
{{- end }}
