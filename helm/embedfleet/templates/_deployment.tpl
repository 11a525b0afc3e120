{{/*
One worker Deployment; called with (dict "root" $ "role" "<role>" "cfg" .Values.<role> "env" <list>),
where env is the role's own environment (list of EnvVar).
*/}}
{{- define "embedfleet.deployment" -}}
{{- $root := .root }}
{{- $cfg := .cfg }}
{{- $role := .role }}
{{- $v := $root.Values }}
{{- $gpu := int ($cfg.gpu | default 0) }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "embedfleet.fullname" $root }}-{{ $role }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "embedfleet.roleLabels" . | nindent 4 }}
spec:
  {{- if not (and (eq $role "generator") $cfg.autoscaling.enabled) }}
  replicas: {{ $cfg.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with $cfg.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "embedfleet.roleSelectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "embedfleet.roleSelectorLabels" . | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- if not $v.secrets.existingSecret }}
        checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- end }}
        {{- if $v.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $v.metrics.port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "embedfleet.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $cfg.runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      {{- with $cfg.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $cfg.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $role }}
          image: {{ include "embedfleet.image" . | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          env:
            - name: ROLE
              value: {{ $role }}
            {{- include "embedfleet.secretEnv" (dict "root" $root "role" $role) | trim | nindent 12 }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $cfg.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "embedfleet.fullname" $root }}
          ports:
            - name: metrics
              containerPort: {{ $v.metrics.port }}
              protocol: TCP
          startupProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: {{ $v.probes.startup.periodSeconds }}
            timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
            failureThreshold: {{ $v.probes.startup.failureThreshold }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: {{ $v.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: {{ $v.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.readiness.failureThreshold }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          {{- $res := deepCopy ($cfg.resources | default dict) }}
          {{- if gt $gpu 0 }}
          {{- $limits := merge (dict $cfg.gpuResourceName $gpu) ($res.limits | default dict) }}
          {{- $requests := merge (dict $cfg.gpuResourceName $gpu) ($res.requests | default dict) }}
          {{- $_ := set $res "limits" $limits }}
          {{- $_ := set $res "requests" $requests }}
          {{- end }}
          {{- with $res }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: scratch
              mountPath: /tmp
            {{- if $v.bus.credsSecret }}
            - name: nats-creds
              mountPath: /etc/embedfleet/nats
              readOnly: true
            {{- end }}
            {{- if $v.bus.tlsCA.secret }}
            - name: nats-ca
              mountPath: /etc/embedfleet/nats-ca
              readOnly: true
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: scratch
          emptyDir:
            {{- with $cfg.scratch.medium }}
            medium: {{ . }}
            {{- end }}
            {{- with $cfg.scratch.sizeLimit }}
            sizeLimit: {{ . }}
            {{- end }}
        {{- if $v.bus.credsSecret }}
        - name: nats-creds
          secret:
            secretName: {{ $v.bus.credsSecret }}
            defaultMode: 0440
            items:
              - key: {{ $v.bus.credsSecretKey }}
                path: {{ $v.bus.credsSecretKey }}
        {{- end }}
        {{- if $v.bus.tlsCA.secret }}
        - name: nats-ca
          secret:
            secretName: {{ $v.bus.tlsCA.secret }}
            defaultMode: 0444
            items:
              - key: {{ $v.bus.tlsCA.key }}
                path: {{ $v.bus.tlsCA.key }}
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $cfg.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $cfg.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $cfg.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* Credentials from the Secret; every key optional, so an existing Secret may hold only some. */}}
{{- define "embedfleet.secretEnv" -}}
{{- $name := include "embedfleet.secretName" .root }}
{{- $keys := list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "EMBEDFLEET_NATS_USER" "EMBEDFLEET_NATS_PASSWORD" }}
{{- if eq .role "generator" }}
{{- $keys = append $keys "OPENAI_API_KEY" }}
{{- end }}
{{- $perRole := .root.Values.bus.auth.existingSecret }}
{{- if $perRole }}
{{- $keys = without $keys "EMBEDFLEET_NATS_USER" "EMBEDFLEET_NATS_PASSWORD" }}
{{- end }}
{{- range $keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ . }}
      optional: true
{{- end }}
{{- if $perRole }}
{{- /* Each role its own NATS user, whose permissions allow only its subjects. */}}
- name: EMBEDFLEET_NATS_USER
  value: {{ .role }}
- name: EMBEDFLEET_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $perRole }}
      key: {{ .role }}
{{- end }}
{{- end }}
