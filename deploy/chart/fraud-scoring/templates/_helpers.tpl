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

{{/* The service's settings from the values (python_backend/settings.py reads them). */}}
{{- define "fraud-scoring.env" -}}
- name: REDIS_URL
  value: {{ .Values.redis.url | quote }}
- name: KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: SCORED_TOPIC
  value: {{ .Values.consumer.topic | quote }}
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
