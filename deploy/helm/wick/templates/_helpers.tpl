{{- define "wick.name" -}}{{ .Chart.Name }}{{- end -}}

{{- define "wick.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "wick.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wick.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wick.labels" -}}
{{ include "wick.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "wick.secretName" -}}
{{- if .Values.apiKey.existingSecret -}}{{ .Values.apiKey.existingSecret }}{{- else -}}{{ include "wick.fullname" . }}-api-key{{- end -}}
{{- end -}}

{{- define "wick.gatewayNamespace" -}}
{{- default .Release.Namespace .Values.gie.gateway.namespace -}}
{{- end -}}
