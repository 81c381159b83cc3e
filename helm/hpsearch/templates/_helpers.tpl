{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "hpsearch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart, unless the release already contains it. */}}
{{- define "hpsearch.fullname" -}}
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

{{- define "hpsearch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hpsearch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hpsearch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hpsearch.labels" -}}
helm.sh/chart: {{ include "hpsearch.chart" . }}
{{ include "hpsearch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hpsearch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hpsearch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image for an accelerator kind: repository:tag-<kind> (see the Dockerfile). */}}
{{- define "hpsearch.image" -}}
{{- $root := index . 0 }}{{- $kind := index . 1 }}
{{- printf "%s:%s-%s" $root.Values.image.repository $root.Values.image.tag $kind }}
{{- end }}

{{/* Restricted-profile security context for every container. */}}
{{- define "hpsearch.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment shared by head and workers: storage bucket, quieter TensorFlow. */}}
{{- define "hpsearch.env" -}}
- name: HPSEARCH_STORAGE
  value: {{ .Values.storage.bucket | quote }}
- name: TF_CPP_MIN_LOG_LEVEL
  value: "2"
{{- end }}
