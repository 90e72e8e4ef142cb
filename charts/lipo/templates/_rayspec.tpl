{{/*
The RayClusterSpec shared by the RayJob (spec.rayClusterSpec), the RayService (spec.rayClusterConfig) and the
RayCluster (spec), so the three clusters cannot drift apart. Call with (dict "root" . "kind" "job|serve|cluster").
*/}}
{{- define "lipo.rayClusterSpec" -}}
{{- $root := .root -}}
{{- $kind := .kind -}}
{{- $ray := $root.Values.ray -}}
{{- $serveEnv := ternary "serve" "" (eq $kind "serve") -}}
{{- /* JSON schema cannot compare two fields, so the autoscaling bounds are checked here. */ -}}
{{- range $g, $w := $ray.workerGroups -}}
{{- if and $w.enabled (not (and (le (int $w.minReplicas) (int $w.replicas)) (le (int $w.replicas) (int $w.maxReplicas)))) -}}
{{- fail (printf "ray.workerGroups.%s: need minReplicas <= replicas <= maxReplicas, got %d <= %d <= %d" $g (int $w.minReplicas) (int $w.replicas) (int $w.maxReplicas)) -}}
{{- end -}}
{{- end -}}
rayVersion: {{ $root.Values.rayVersion | quote }}
enableInTreeAutoscaling: {{ $ray.enableInTreeAutoscaling }}
{{- if $ray.enableInTreeAutoscaling }}
autoscalerOptions:
  idleTimeoutSeconds: {{ $ray.autoscaler.idleTimeoutSeconds }}
  upscalingMode: {{ $ray.autoscaler.upscalingMode }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  resources:
    {{- toYaml $ray.autoscaler.resources | nindent 4 }}
  # The autoscaler sidecar runs in the head pod; it gets the same hardening and the same writable /tmp.
  securityContext:
    {{- include "lipo.containerSecurityContext" $root | nindent 4 }}
  env:
    {{- include "lipo.writableEnv" $root | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
# Ray token authentication: KubeRay reads key auth_token of this Secret for its own dashboard calls and
# injects it into every Ray container (and does not generate a Secret of its own when secretName is set).
authOptions:
  mode: token
  secretName: {{ include "lipo.secretName" $root }}
headGroupSpec:
  # Dashboard, Jobs API and GCS stay inside the cluster; reach them with kubectl port-forward.
  serviceType: ClusterIP
  enableIngress: false
  rayStartParams:
    dashboard-host: "0.0.0.0"
    {{- with $ray.head.rayStartParams }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "lipo.podLabels" (list $root "ray-head") | nindent 8 }}
    spec:
      {{- include "lipo.rayPodSpec" (dict "root" $root "group" $ray.head "image" (include "lipo.image" $root) "resources" $ray.head.resources "env" $serveEnv "name" "ray-head" "head" true) | nindent 6 }}
workerGroupSpecs:
{{- with $ray.workerGroups.cpu }}
{{- if .enabled }}
  - groupName: cpu
    replicas: {{ .replicas }}
    minReplicas: {{ .minReplicas }}
    maxReplicas: {{ .maxReplicas }}
    rayStartParams:
      {{- toYaml .rayStartParams | nindent 6 }}
    template:
      metadata:
        labels:
          {{- include "lipo.podLabels" (list $root "ray-worker") | nindent 10 }}
      spec:
        {{- include "lipo.rayPodSpec" (dict "root" $root "group" . "image" (include "lipo.image" $root) "resources" .resources "env" $serveEnv "name" "ray-worker" "head" false) | nindent 8 }}
{{- end }}
{{- end }}
{{- with $ray.workerGroups.gpu }}
{{- if .enabled }}
{{- $res := deepCopy .resources }}
{{- $gpus := dict "nvidia.com/gpu" (int .gpusPerWorker) }}
{{- $_ := set $res "limits" (merge (deepCopy $gpus) ($res.limits | default dict)) }}
{{- $_ := set $res "requests" (merge (deepCopy $gpus) ($res.requests | default dict)) }}
  - groupName: gpu
    replicas: {{ .replicas }}
    minReplicas: {{ .minReplicas }}
    maxReplicas: {{ .maxReplicas }}
    rayStartParams:
      {{- toYaml .rayStartParams | nindent 6 }}
    template:
      metadata:
        labels:
          {{- include "lipo.podLabels" (list $root "ray-worker") | nindent 10 }}
      spec:
        {{- include "lipo.rayPodSpec" (dict "root" $root "group" . "image" (include "lipo.gpuImage" $root) "resources" $res "env" $serveEnv "name" "ray-worker" "head" false) | nindent 8 }}
{{- end }}
{{- end }}
{{- if not (or $ray.workerGroups.cpu.enabled $ray.workerGroups.gpu.enabled) }} []{{ end }}
{{- end -}}

{{/* The spec of one Ray pod (head or worker). */}}
{{- define "lipo.rayPodSpec" -}}
{{- $root := .root -}}
securityContext:
  {{- include "lipo.podSecurityContext" $root | nindent 2 }}
{{- include "lipo.serviceAccount" $root }}
{{- if not (and .head $root.Values.ray.enableInTreeAutoscaling) }}
# Only the head's autoscaler sidecar calls the Kubernetes API.
automountServiceAccountToken: false
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .name }}
    image: {{ .image }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    # The root is read-only, so relative paths a stage writes (runs/, mlruns) must resolve somewhere writable: the
    # shared volume (sharedStorage), else /tmp. The job's driver and tasks inherit this directory from `ray start`.
    workingDir: {{ include "lipo.workingDir" $root }}
    {{- if or .head (eq .env "serve") }}
    ports:
      {{- if .head }}
      - {containerPort: 6379, name: gcs-server}
      - {containerPort: 8265, name: dashboard}
      - {containerPort: 10001, name: client}
      {{- end }}
      {{- if eq .env "serve" }}
      - {containerPort: 8000, name: serve}
      {{- end }}
    {{- end }}
    env:
      {{- include "lipo.rayEnv" (list $root .env) | nindent 6 }}
    resources:
      {{- toYaml .resources | nindent 6 }}
    securityContext:
      {{- include "lipo.containerSecurityContext" $root | nindent 6 }}
    volumeMounts:
      {{- include "lipo.writableMounts" $root | nindent 6 }}
      {{- include "lipo.configMount" $root | nindent 6 }}
      {{- include "lipo.extraMounts" $root | nindent 6 }}
volumes:
  {{- include "lipo.writableVolumes" (list .group.tmpSize .group.shmSize) | nindent 2 }}
  {{- include "lipo.configVolume" $root | nindent 2 }}
  {{- include "lipo.extraVolumes" $root | nindent 2 }}
{{- include "lipo.podScheduling" .group }}
{{- end -}}
