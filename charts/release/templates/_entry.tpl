{{/*
The shared object named after the application, through which clients reach it.
Takes the chart context; renders nothing for environments without one.
*/}}
{{- define "release.entry" -}}
{{- $env := include "release.env" . | fromJson -}}
{{- $name := include "release.appName" . -}}
{{- $namespace := include "release.appNamespace" . -}}
{{- if has $env.entry (list "istio-ingressgateway" "knative-local-gateway") }}
{{- /* an ExternalName Service: <app>.<ns> resolves to the Istio gateway that applies the VirtualService */}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $namespace }}
spec:
  type: ExternalName
  externalName: {{ $env.entry }}.istio-system.svc.cluster.local
  sessionAffinity: None
{{- else if eq $env.entry "gamma-parent" }}
{{- /* a Service the HTTPRoute attaches to as its GAMMA (mesh) parent; port 80, as in Iter8 v1.1 */}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $namespace }}
spec:
  selector:
    app: {{ $name }}
  ports:
  - port: 80
{{- else if and (eq $env.entry "service-entry") (ne (include "release.strategy" .) "none") }}
{{- /*
a ServiceEntry giving <app>.<ns> a mesh identity in front of ModelMesh serving; only with a
routing strategy (as in Iter8 v1.1): without the VirtualService it would lead nowhere useful
*/}}
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: {{ $name }}
  namespace: {{ $namespace }}
spec:
  hosts:
  {{- include "release.appHosts" . | nindent 2 }}
  location: MESH_INTERNAL
  ports:
  - number: {{ include "release.modelmesh.port" . }}
    name: http
    protocol: HTTP
  resolution: DNS
  workloadSelector:
    labels:
      modelmesh-service: modelmesh-serving
{{- end }}
{{- end }}
