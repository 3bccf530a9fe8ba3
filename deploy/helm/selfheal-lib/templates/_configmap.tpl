{{- define "selfheal-lib.configmap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "selfheal-lib.fullname" . }}
  labels:
    {{- include "selfheal-lib.labels" . | nindent 4 }}
data:
  config.toml: |
    {{- .Values.config | nindent 4 }}
{{- with (.Values.policies).files }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "selfheal-lib.fullname" $ }}-policies
  labels:
    {{- include "selfheal-lib.labels" $ | nindent 4 }}
data:
  {{- range $name, $text := . }}
  {{ $name }}: |
    {{- $text | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The ConfigMap of Rego policies mounted at /etc/selfheal/policies, if any (the policy chart). */}}
{{- define "selfheal-lib.policiesConfigMap" -}}
{{- with .Values.policies -}}
{{- if .existingConfigMap -}}
{{ .existingConfigMap }}
{{- else if .files -}}
{{ include "selfheal-lib.fullname" $ }}-policies
{{- end -}}
{{- end -}}
{{- end -}}
