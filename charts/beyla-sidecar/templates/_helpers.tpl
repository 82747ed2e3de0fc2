{{/* Name of every object; 63 characters at most (DNS label). */}}
{{- define "beyla-sidecar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if eq .Release.Name .Chart.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The webhook's Service; its DNS names are in the certificate. */}}
{{- define "beyla-sidecar.serviceName" -}}
{{- printf "%s-webhook" (include "beyla-sidecar.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "beyla-sidecar.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "beyla-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "beyla-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "beyla-sidecar.sidecarImage" -}}
{{- printf "%s:%s" (.Values.sidecar.image.repository | default .Values.image.repository) (.Values.sidecar.image.tag | default .Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Namespaces never injected: kube-system, the release's own, and the configured ones. */}}
{{- define "beyla-sidecar.excludedNamespaces" -}}
- kube-system
- {{ .Release.Namespace }}
{{- range .Values.webhook.excludeNamespaces }}
- {{ . }}
{{- end }}
{{- end -}}

{{- define "beyla-sidecar.excludedNamespacesCSV" -}}
kube-system,{{ .Release.Namespace }}{{ range .Values.webhook.excludeNamespaces }},{{ . }}{{ end }}
{{- end -}}
