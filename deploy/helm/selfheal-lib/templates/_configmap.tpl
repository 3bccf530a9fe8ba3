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
{{- end -}}
