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

{{/* The workers' own ServiceAccount: KubeRay binds the autoscaler's Role (patch pods)
to the head's, so trial code on workers must not share it. */}}
{{- define "hpsearch.workerServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- printf "%s-worker" (include "hpsearch.serviceAccountName" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- default "default" .Values.serviceAccount.workerName }}
{{- end }}
{{- end }}

{{/* Pod labels. app.kubernetes.io/name is left to KubeRay, which sets it to "kuberay":
GKE's TPU webhook only mutates pods with that label (it injects TPU_WORKER_ID and
TPU_WORKER_HOSTNAMES on multi-host slices). */}}
{{- define "hpsearch.podLabels" -}}
{{- $root := index . 0 }}{{- $component := index . 1 }}{{- $extra := index . 2 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/part-of: {{ include "hpsearch.name" $root }}
app.kubernetes.io/component: {{ $component }}
{{- with $extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Kubernetes' own scheduling fields a pod takes from its values (head or a group). */}}
{{- define "hpsearch.podScheduling" -}}
{{- $root := index . 0 }}{{- $pod := index . 1 }}
{{- with $pod.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pod.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
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

{{/* Environment shared by head and workers: storage bucket, quieter TensorFlow, and
the RayCluster the pod belongs to (a search reads its worker groups through the
Kubernetes API, as the autoscaler does, to refuse trials no group can hold). */}}
{{- define "hpsearch.env" -}}
- name: HPSEARCH_STORAGE
  value: {{ .Values.storage.bucket | quote }}
- name: HPSEARCH_RAYCLUSTER_NAME
  value: {{ include "hpsearch.fullname" . | quote }}
- name: HPSEARCH_RAYCLUSTER_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: TF_CPP_MIN_LOG_LEVEL
  value: "2"
{{- end }}
