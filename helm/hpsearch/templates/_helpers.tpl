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
{{- with $pod.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $pod.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pod.initContainers }}
initContainers:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml (mergeOverwrite (dict "runAsNonRoot" true "fsGroup" 100) (deepCopy ($pod.podSecurityContext | default dict))) | nindent 2 }}
{{- end }}

{{/* A pod's nodeSelector: the user's, the Workload Identity selector when asked for,
and the accelerator's own keys (given last: they win, so a user key can never
contradict the group's accelerator or topology). */}}
{{- define "hpsearch.nodeSelector" -}}
{{- $root := index . 0 }}{{- $pod := index . 1 }}{{- $accelerator := index . 2 }}
{{- $selector := deepCopy ($pod.nodeSelector | default dict) }}
{{- if $root.Values.workloadIdentityNodeSelector }}
{{- $_ := set $selector "iam.gke.io/gke-metadata-server-enabled" "true" }}
{{- end }}
{{- $selector = mergeOverwrite $selector $accelerator }}
{{- with $selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The Ray container's securityContext: restricted by default, a group's overrides merged over it. */}}
{{- define "hpsearch.rayContainerSecurityContext" -}}
{{- $root := index . 0 }}{{- $pod := index . 1 }}
{{- toYaml (mergeOverwrite (include "hpsearch.containerSecurityContext" $root | fromYaml) (deepCopy ($pod.securityContext | default dict))) }}
{{- end }}

{{/* ray start's object store: 90% of the pod's /dev/shm (whole Mi or Gi, per the schema).
Ray otherwise takes 30% of the memory limit and, when /dev/shm is smaller, falls back
to disk. */}}
{{- define "hpsearch.objectStoreBytes" -}}
{{- $shm := . }}
{{- $unit := ternary 1073741824 1048576 (hasSuffix "Gi" $shm) }}
{{- $count := trimSuffix "Mi" (trimSuffix "Gi" $shm) | int64 }}
{{- div (mul $count $unit 9) 10 }}
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
# Ray Train asks Ray for draining nodes this often (default 5 s): a Spot notice is ~15 s.
- name: RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S
  value: "1"
# Distributed trials' functions ask for this resource, which only the groups that host
# them have (hpsearch.hostsTrialFunctions).
- name: HPSEARCH_TRIAL_FUNCTION_RESOURCE
  value: {{ .Values.trialFunctions.resource | quote }}
{{- end }}

{{/* "true" when some worker group is Spot, else empty. */}}
{{- define "hpsearch.anySpot" -}}
{{- range $name, $group := .Values.workerGroups }}{{- if $group.spot }}true{{- end }}{{- end }}
{{- end }}

{{/* "true" when a worker group (the group's values) hosts trial functions: a cpu group
that is not Spot. A distributed trial's function only waits for its workers, and Ray
Train's controller runs beside it: on an accelerator node it would keep that node (and
its bill) for the whole trial and take CPUs its workers need; on a Spot node it would
die with the node. */}}
{{- define "hpsearch.hostsTrialFunctions" -}}
{{- if and (eq .type "cpu") (not .spot) }}true{{- end }}
{{- end }}

{{/* "true" when some worker group hosts trial functions, else empty. */}}
{{- define "hpsearch.anyTrialFunctionHost" -}}
{{- range $name, $group := .Values.workerGroups }}{{- include "hpsearch.hostsTrialFunctions" $group }}{{- end }}
{{- end }}
