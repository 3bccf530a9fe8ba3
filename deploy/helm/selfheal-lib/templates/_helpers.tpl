{{/* Names and labels shared by every selfheal service chart. */}}

{{- define "selfheal-lib.name" -}}
{{- default (printf "selfheal-%s" .Values.component) .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "selfheal-lib.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "selfheal-lib.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "selfheal-lib.selectorLabels" -}}
app.kubernetes.io/name: {{ include "selfheal-lib.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "selfheal-lib.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "selfheal-lib.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Values.component }}
app.kubernetes.io/part-of: selfheal
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "selfheal-lib.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "selfheal-lib.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* SELFHEAL_<COMPONENT>_ : the service's environment prefix. */}}
{{- define "selfheal-lib.envPrefix" -}}
{{- printf "SELFHEAL_%s_" (.Values.component | upper | replace "-" "_") -}}
{{- end -}}

{{- define "selfheal-lib.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
