{{- define "selfheal-lib.networkpolicy" -}}
{{- if .Values.networkPolicy.enabled -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "selfheal-lib.fullname" . }}
  labels:
    {{- include "selfheal-lib.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "selfheal-lib.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - ports:
        - port: http
          protocol: TCP
        - port: grpc
          protocol: TCP
      {{- with .Values.networkPolicy.from }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
{{- end -}}
