{{/* The release's name for its objects, at most 63 characters. */}}
{{- define "fraud-scoring.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fraud-scoring.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "fraud-scoring.selector" (list . "triton") */}}
{{- define "fraud-scoring.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ default $root.Chart.Name $root.Values.nameOverride }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "fraud-scoring.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{- define "fraud-scoring.operatorSecret" -}}
{{- default (printf "%s-operator" (include "fraud-scoring.fullname" .)) .Values.operatorKey.existingSecret -}}
{{- end -}}

{{/* Triton's administrative APIs, behind the operator's key (client/local/operator.py:RESTRICTED). */}}
{{- define "fraud-scoring.restricted" -}}
model-repository,model-config,shared-memory,statistics,trace,logging
{{- end -}}

{{/* The pod-level security context every workload runs with. */}}
{{- define "fraud-scoring.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "fraud-scoring.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The init container that copies the model repository (what `make engines` builds) from
its image into the pod's `models` volume (an emptyDir mounted at /models): every pod that
reads the models, Triton's and the analysis consumer's, has the same, versioned artefacts. */}}
{{- define "fraud-scoring.modelsInit" -}}
- name: models
  image: {{ include "fraud-scoring.image" .Values.images.models }}
  imagePullPolicy: {{ .Values.images.pullPolicy }}
  command: ["sh", "-c", "cp -R /model_repository/. /models/"]
  securityContext:
    {{- include "fraud-scoring.containerSecurity" . | nindent 4 }}
  resources:
    requests: {cpu: 100m, memory: 64Mi}
    limits: {cpu: 500m, memory: 256Mi}
  volumeMounts:
    - {name: models, mountPath: /models}
{{- end -}}

{{/* A StatefulSet's claim template: ReadWriteOnce, the storage values' size and class (the
cluster's default when empty), the component's selector labels only (the template is fixed
at install, so not the chart's version):
include "fraud-scoring.claimTemplate" (list . "triton" "decisions" .Values.triton.decisionLog.storage) */}}
{{- define "fraud-scoring.claimTemplate" -}}
{{- $storage := index . 3 -}}
- metadata:
    name: {{ index . 2 }}
    labels:
      {{- include "fraud-scoring.selector" (list (index . 0) (index . 1)) | nindent 6 }}
  spec:
    accessModes: [ReadWriteOnce]
    {{- with $storage.storageClassName }}
    storageClassName: {{ . | quote }}
    {{- end }}
    resources:
      requests:
        storage: {{ $storage.size }}
{{- end -}}

{{/* The rules file (its text) less what reads the analysis consumer's series: the groups
named fraud_analysis*, and in the others each rule whose expression reads a fraud_analysis
metric or recording (fraud_analysis_*, fraud_analysis:*) or the fraud-analysis job (up of
FraudAnalysisDown; job!="fraud-analysis" leaves it out and stays). A group left empty goes. */}}
{{- define "fraud-scoring.rulesWithoutAnalysis" -}}
{{- $reads := `fraud_analysis[_:]|job\s*=~?\s*"fraud-analysis"` -}}
{{- $parsed := fromYaml . -}}
{{- if hasKey $parsed "Error" -}}
{{- fail (printf "files/fraud.rules.yml: %s" $parsed.Error) -}}
{{- end -}}
{{- $groups := list -}}
{{- range $parsed.groups -}}
{{- if not (hasPrefix "fraud_analysis" .name) -}}
{{- $rules := list -}}
{{- range .rules -}}
{{- if not (regexMatch $reads .expr) -}}
{{- $rules = append $rules . -}}
{{- end -}}
{{- end -}}
{{- if $rules -}}
{{- $groups = append $groups (set (deepCopy .) "rules" $rules) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- dict "groups" $groups | toYaml -}}
{{- end -}}

{{/* The service's settings from the values (python_backend/settings.py reads them). */}}
{{- define "fraud-scoring.env" -}}
- name: REDIS_URL
  value: {{ .Values.redis.url | quote }}
- name: KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: SCORED_TOPIC
  value: {{ .Values.consumer.topic | quote }}
# In a pod the consumers' metrics are scraped from outside it (loopback is the default).
- name: METRICS_BIND_ADDRESS
  value: "0.0.0.0"
{{- if .Values.redis.cluster }}
- name: FEATURE_STORE
  value: redis_cluster
{{- end }}
{{- range $name, $value := .Values.triton.env }}
{{- if not (and $.Values.redis.cluster (eq $name "FEATURE_STORE")) }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Triton's shutdown, in order: the preStop sleep (out of the headless service), then
SIGTERM and Triton's exit timeout, in which it finishes the requests it holds and unloads the
models (the BLS's finalize hands the decision log's spool to the broker for DECISION_DRAIN_S).
Both numbers are computed from the values so that neither can fall short of what it holds;
as JSON: {"exitTimeoutSeconds": ..., "gracePeriodSeconds": ...}. */}}
{{- define "fraud-scoring.tritonShutdown" -}}
{{- $triton := .Values.triton -}}
{{- range $computed := list "exitTimeoutSeconds" "terminationGracePeriodSeconds" -}}
{{- if hasKey $triton $computed -}}
{{- fail (printf "triton.%s is computed (triton.preStopSleepSeconds, triton.inFlightSeconds, triton.decisionLog.drainSeconds, triton.terminationMarginSeconds) so that it covers the decision log's drain: set those instead" $computed) -}}
{{- end -}}
{{- end -}}
{{- $seconds := dict
  "triton.preStopSleepSeconds" $triton.preStopSleepSeconds
  "triton.inFlightSeconds" $triton.inFlightSeconds
  "triton.decisionLog.drainSeconds" $triton.decisionLog.drainSeconds
  "triton.terminationMarginSeconds" $triton.terminationMarginSeconds -}}
{{- range $name, $value := $seconds -}}
{{- $number := or (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) -}}
{{- if or (not $number) (lt (float64 $value) 0.0) (ne (float64 $value) (floor $value)) -}}
{{- fail (printf "%s: whole seconds, 0 or more, got %v" $name $value) -}}
{{- end -}}
{{- end -}}
{{- $drain := int $triton.decisionLog.drainSeconds -}}
{{- /* The drain runs inside Triton's exit timeout: after the requests in flight, before the
process exits. */ -}}
{{- $exit := add (int $triton.inFlightSeconds) $drain -}}
{{- /* The kubelet waits for the preStop sleep, then Triton's exit timeout (which holds the
drain), then the margin; a pod that stops sooner is not held. */ -}}
{{- $grace := add (int $triton.preStopSleepSeconds) $exit (int $triton.terminationMarginSeconds) -}}
{{- dict "exitTimeoutSeconds" $exit "gracePeriodSeconds" $grace | toJson -}}
{{- end -}}
