{{/* Chart name. */}}
{{- define "embedfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-embedfleet, or the release name when it already contains the chart name. */}}
{{- define "embedfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "embedfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "embedfleet.labels" -}}
helm.sh/chart: {{ include "embedfleet.chart" . }}
{{ include "embedfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: embedfleet
{{- end }}

{{- define "embedfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "embedfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector of one role; called with (dict "root" $ "role" "trainer"). */}}
{{- define "embedfleet.roleLabels" -}}
{{ include "embedfleet.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "embedfleet.roleSelectorLabels" -}}
{{ include "embedfleet.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "embedfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "embedfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "embedfleet.secretName" -}}
{{- default (include "embedfleet.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* The NATS URL: bus.url, else the bundled NATS chart's service, else nats://nats:4222. */}}
{{- define "embedfleet.natsUrl" -}}
{{- if .Values.bus.url }}
{{- .Values.bus.url }}
{{- else if .Values.nats.enabled }}
{{- if contains "nats" .Release.Name }}
{{- printf "nats://%s:4222" (.Release.Name | trunc 63 | trimSuffix "-") }}
{{- else }}
{{- printf "nats://%s-nats:4222" (.Release.Name | trunc 58 | trimSuffix "-") }}
{{- end }}
{{- else }}
{{- "nats://nats:4222" }}
{{- end }}
{{- end }}

{{/* Image of a role: <repository>:<tag or appVersion>-<flavor>. */}}
{{- define "embedfleet.image" -}}
{{- $flavor := .cfg.imageFlavor | default "cpu" }}
{{- if not (has $flavor (list "small" "cpu" "gpu")) }}
{{- fail (printf "%s.imageFlavor must be small, cpu or gpu, not %q" .role $flavor) }}
{{- end }}
{{- if and (eq $flavor "small") (has .role (list "trainer" "evaluator")) }}
{{- fail (printf "%s.imageFlavor small has no %s (it holds the generator and the coordinator only)" .role .role) }}
{{- end }}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- printf "%s:%s-%s" .root.Values.image.repository $tag $flavor }}
{{- end }}
