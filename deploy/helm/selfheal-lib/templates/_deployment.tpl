{{- define "selfheal-lib.deployment" -}}
{{- $prefix := include "selfheal-lib.envPrefix" . -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "selfheal-lib.fullname" . }}
  labels:
    {{- include "selfheal-lib.labels" . | nindent 4 }}
spec:
  replicas: {{ .Values.replicaCount }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "selfheal-lib.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "selfheal-lib.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/component: {{ .Values.component }}
        app.kubernetes.io/part-of: selfheal
      annotations:
        # Roll the pods when the configuration changes.
        checksum/config: {{ .Values.config | sha256sum }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "selfheal-lib.serviceAccountName" . }}
      automountServiceAccountToken: false
      securityContext:
        {{- toYaml .Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
      containers:
        - name: {{ .Values.component }}
          image: {{ include "selfheal-lib.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ .Values.service.httpPort }}
              protocol: TCP
            - name: grpc
              containerPort: {{ .Values.service.grpcPort }}
              protocol: TCP
          env:
            - name: {{ $prefix }}CONFIG
              value: /etc/selfheal/config/config.toml
            - name: {{ $prefix }}LISTEN
              value: {{ printf "0.0.0.0:%v" .Values.service.httpPort | quote }}
            - name: {{ $prefix }}GRPC_LISTEN
              value: {{ printf "0.0.0.0:%v" .Values.service.grpcPort | quote }}
            - name: {{ $prefix }}NATS_URL
              value: {{ .Values.nats.url | quote }}
            - name: SELFHEAL_LOG_FORMAT
              value: json
            {{- with .Values.otlp.endpoint }}
            - name: OTEL_EXPORTER_OTLP_ENDPOINT
              value: {{ . | quote }}
            - name: OTEL_EXPORTER_OTLP_PROTOCOL
              value: {{ $.Values.otlp.protocol | quote }}
            {{- end }}
            {{- range .Values.secretFiles }}
            {{- if .env }}
            - name: {{ .env }}
              value: {{ printf "/var/run/secrets/selfheal/%s/%s" .secretName .key | quote }}
            {{- end }}
            {{- end }}
            {{- with .Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/selfheal/config
              readOnly: true
            - name: tmp
              mountPath: /tmp
            - name: data
              mountPath: /data
            {{- if include "selfheal-lib.policiesConfigMap" . }}
            - name: policies
              mountPath: /etc/selfheal/policies
              readOnly: true
            {{- end }}
            {{- range $name, $_ := (include "selfheal-lib.secretVolumes" . | fromYaml) }}
            - name: {{ printf "secret-%s" $name | trunc 63 | trimSuffix "-" }}
              mountPath: {{ printf "/var/run/secrets/selfheal/%s" $name }}
              readOnly: true
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "selfheal-lib.fullname" . }}
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- with include "selfheal-lib.policiesConfigMap" . }}
        - name: policies
          configMap:
            name: {{ . }}
        {{- end }}
        - name: data
          {{- if .Values.persistence.existingClaim }}
          persistentVolumeClaim:
            claimName: {{ .Values.persistence.existingClaim }}
          {{- else }}
          emptyDir:
            sizeLimit: {{ .Values.persistence.emptyDirSizeLimit }}
          {{- end }}
        {{- range $name, $items := (include "selfheal-lib.secretVolumes" . | fromYaml) }}
        - name: {{ printf "secret-%s" $name | trunc 63 | trimSuffix "-" }}
          secret:
            secretName: {{ $name }}
            items:
              {{- range $items }}
              - key: {{ . }}
                path: {{ . }}
              {{- end }}
        {{- end }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* secretName -> [keys], from .Values.secretFiles (one volume per Secret). */}}
{{- define "selfheal-lib.secretVolumes" -}}
{{- $volumes := dict -}}
{{- range .Values.secretFiles -}}
{{- $keys := get $volumes .secretName | default list -}}
{{- if not (has .key $keys) -}}
{{- $_ := set $volumes .secretName (append $keys .key) -}}
{{- end -}}
{{- end -}}
{{- toYaml $volumes -}}
{{- end -}}
