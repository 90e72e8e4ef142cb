{{/* Names: <release>-lipo, or just <release> when the release is already called lipo. */}}
{{- define "lipo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lipo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 35 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 35 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 35 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{/* 35, not 63: KubeRay caps RayJob and RayService names at 47 characters (it appends suffixes to them) and
     we add up to 12 ("-build-lists"); they must also be DNS-1035 labels, i.e. start with a letter. */}}

{{- define "lipo.rayName" -}}
{{- $name := printf "%s-%s" (include "lipo.fullname" (index . 0)) (index . 1) -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "%s is not a DNS-1035 label, which KubeRay requires: use a release name (or fullnameOverride) that starts with a letter" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "lipo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lipo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lipo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "lipo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Pod labels: selector labels plus a component; the NetworkPolicies select on these. Call with (list . "c"). */}}
{{- define "lipo.podLabels" -}}
{{ include "lipo.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "lipo.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "lipo.gpuImage" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.gpuTag | default (printf "%s-gpu" $tag)) -}}
{{- end -}}

{{- define "lipo.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "lipo.fullname" .)) -}}
{{- end -}}

{{- define "lipo.configMapName" -}}
{{- printf "%s-config" (include "lipo.fullname" .) -}}
{{- end -}}

{{- define "lipo.mlflowName" -}}
{{- printf "%s-mlflow" (include "lipo.fullname" .) -}}
{{- end -}}

{{- define "lipo.rayEnabled" -}}
{{- if or .Values.job.enabled .Values.service.enabled .Values.cluster.enabled -}}true{{- end -}}
{{- end -}}

{{- define "lipo.configPath" -}}
{{- printf "%s/%s" (.Values.lipoConfig.mountPath | trimSuffix "/") .Values.lipoConfig.fileName -}}
{{- end -}}

{{/* In-cluster tracking URI: the chart's MLflow Service, else mlflow.externalTrackingUri (may be empty). */}}
{{- define "lipo.mlflowTrackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s.%s.svc.cluster.local:%d" (include "lipo.mlflowName" .) .Release.Namespace (int .Values.mlflow.port) -}}
{{- else -}}
{{- .Values.mlflow.externalTrackingUri -}}
{{- end -}}
{{- end -}}

{{/* The URI Ray pods track to: the server above, else a SQLite file on the shared volume (one store that every job
     and the Serve cluster see), else empty (lipo's default: OUTPUT_DIR/mlflow.db). */}}
{{- define "lipo.rayTrackingUri" -}}
{{- $server := include "lipo.mlflowTrackingUri" . -}}
{{- if $server -}}
{{- $server -}}
{{- else if .Values.sharedStorage.enabled -}}
{{- printf "sqlite:///%s/mlflow.db" .Values.sharedStorage.mountPath -}}
{{- end -}}
{{- end -}}

{{/*
A secret value: the one given, else (secrets.generate) the live Secret's value via lookup so that upgrades keep it,
else a fresh randAlphaNum 32, else fail with the flags that fix it. Call with (list . "KEY" "valueName").
*/}}
{{- define "lipo.secretValue" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $valueName := index . 2 -}}
{{- $given := index $root.Values.secrets $valueName -}}
{{- if $given -}}
{{- $given -}}
{{- else if $root.Values.secrets.generate -}}
{{- $live := lookup "v1" "Secret" $root.Release.Namespace (include "lipo.secretName" $root) -}}
{{- $data := dig "data" dict $live -}}
{{- if hasKey $data $key -}}
{{- index $data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- else -}}
{{- fail (printf "secrets.%s is empty and the chart ships no default. Set it (--set secrets.%s=...), or name a Secret holding key %s with secrets.existingSecret, or let the chart create one with secrets.generate=true." $valueName $valueName $key) -}}
{{- end -}}
{{- end -}}

{{/* A value that can never be generated (database URIs, S3 keys): given, or fail. Call with (list . "valueName" "why"). */}}
{{- define "lipo.requiredSecret" -}}
{{- $root := index . 0 -}}
{{- $valueName := index . 1 -}}
{{- required (printf "secrets.%s is empty: %s. Set it, or name a Secret you manage with secrets.existingSecret." $valueName (index . 2)) (index $root.Values.secrets $valueName) -}}
{{- end -}}

{{- define "lipo.secretEnv" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "lipo.secretName" (index . 0) }}
      key: {{ index . 2 }}
{{- end -}}

{{/* Every container: non-root uid 1000 (the ray user of the Ray image), nothing to escalate, read-only root. */}}
{{- define "lipo.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "lipo.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
fsGroup: 100
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* With a read-only root, everything that writes (Ray, HF, matplotlib, torch, pip caches) is sent to /tmp. */}}
{{- define "lipo.writableEnv" -}}
- name: HOME
  value: /tmp
- name: RAY_TMPDIR
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: HF_HOME
  value: /tmp/hf
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: TRITON_CACHE_DIR
  value: /tmp/triton
- name: TORCHINDUCTOR_CACHE_DIR
  value: /tmp/torchinductor
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- end -}}

{{/* Call with (list tmpSize shmSize). */}}
{{- define "lipo.writableVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ index . 0 }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ index . 1 }}
{{- end -}}

{{- define "lipo.writableMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- end -}}

{{- define "lipo.configVolume" -}}
- name: lipo-config
  configMap:
    name: {{ include "lipo.configMapName" . }}
{{- end -}}

{{- define "lipo.configMount" -}}
- name: lipo-config
  mountPath: {{ .Values.lipoConfig.mountPath }}
  readOnly: true
{{- end -}}

{{/*
Env of every Ray container. RAY_AUTH_* duplicate what KubeRay injects for authOptions on purpose: the operator
skips names already set, and the token then reaches `ray job submit` and the init container whatever the
operator version. Call with (list . "serve"|"").
*/}}
{{- define "lipo.rayEnv" -}}
{{- $root := index . 0 -}}
{{ include "lipo.writableEnv" $root }}
- name: RAY_AUTH_MODE
  value: token
{{ include "lipo.secretEnv" (list $root "RAY_AUTH_TOKEN" "auth_token") }}
{{- with (include "lipo.rayTrackingUri" $root) }}
- name: MLFLOW_TRACKING_URI
  value: {{ . | quote }}
{{- end }}
{{- if $root.Values.sharedStorage.enabled }}
# Declares the volume shared by every node, so lipo.runtime.check_shared_storage accepts an output_dir under it.
- name: LIPO_SHARED_PATHS
  value: {{ $root.Values.sharedStorage.mountPath | quote }}
{{- end }}
{{- if $root.Values.mlflow.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  value: {{ $root.Values.mlflow.auth.adminUsername | quote }}
{{ include "lipo.secretEnv" (list $root "MLFLOW_TRACKING_PASSWORD" "MLFLOW_AUTH_ADMIN_PASSWORD") }}
{{- end }}
{{- if eq (index . 1) "serve" }}
{{ include "lipo.secretEnv" (list $root "LIPO_API_KEY" "LIPO_API_KEY") }}
{{- end }}
{{- with $root.Values.ray.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "lipo.podScheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The ServiceAccount of every pod; empty (no serviceAccountName: KubeRay's and Kubernetes' defaults) when the
     chart makes none and none is named. */}}
{{- define "lipo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "lipo.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "lipo.serviceAccount" -}}
{{- with include "lipo.serviceAccountName" . }}
serviceAccountName: {{ . }}
{{- end }}
{{- end -}}

{{- define "lipo.sharedClaimName" -}}
{{- .Values.sharedStorage.existingClaim | default (printf "%s-shared" (include "lipo.fullname" .)) -}}
{{- end -}}

{{/* Where lipo's relative paths (output_dir: runs/quickstart, mlruns) resolve: the shared volume when there is one. */}}
{{- define "lipo.workingDir" -}}
{{- ternary .Values.sharedStorage.mountPath "/tmp" .Values.sharedStorage.enabled -}}
{{- end -}}

{{/* The shared volume and extraVolumes, for the Ray pods and the submitter. */}}
{{- define "lipo.extraVolumes" -}}
{{- if .Values.sharedStorage.enabled }}
- name: shared
  persistentVolumeClaim:
    claimName: {{ include "lipo.sharedClaimName" . }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "lipo.extraMounts" -}}
{{- if .Values.sharedStorage.enabled }}
- name: shared
  mountPath: {{ .Values.sharedStorage.mountPath }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}
