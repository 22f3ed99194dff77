{{/* Names: <release>-dilaserve unless the release name already says dilaserve. */}}
{{- define "dilaserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dilaserve.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "gateway"). */}}
{{- define "dilaserve.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dilaserve.image" -}}
{{- $img := merge (dict) (.override | default dict) .root.Values.image -}}
{{- printf "%s:%s" $img.repository (toString $img.tag) -}}
{{- end -}}

{{/* The subcharts' own fullname rule (release name alone when it already contains the chart name). */}}
{{- define "dilaserve.subchartName" -}}
{{- if contains .name .root.Release.Name -}}{{ .root.Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "dilaserve.natsUrl" -}}
{{- if .Values.nats.enabled -}}
nats://{{ include "dilaserve.subchartName" (dict "root" . "name" "nats") }}:4222
{{- else -}}
{{- required "externalNats.url is required when nats.enabled=false" .Values.externalNats.url -}}
{{- end -}}
{{- end -}}

{{/* With Sentinel, <redis>-master is the Service the chart keeps pointed at the current master. */}}
{{- define "dilaserve.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- if not (and .Values.redis.sentinel.enabled .Values.redis.sentinel.masterService.enabled) -}}
{{- fail "redis.sentinel.enabled and redis.sentinel.masterService.enabled must stay true: DiLaServe's Redis client follows the master through that Service" -}}
{{- end -}}
redis://{{ include "dilaserve.subchartName" (dict "root" . "name" "redis") }}-master:6379/0
{{- else -}}
{{- required "externalRedis.url is required when redis.enabled=false" .Values.externalRedis.url -}}
{{- end -}}
{{- end -}}

{{- define "dilaserve.otlpEndpoint" -}}
{{- if .Values.otelCollector.enabled -}}http://{{ include "dilaserve.fullname" . }}-otel-collector:4318{{- end -}}
{{- end -}}

{{/* Extra env from a map (sorted, values quoted). */}}
{{- define "dilaserve.envMap" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{- define "dilaserve.podName" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/* Scheduling knobs of a component: call with its values map. */}}
{{- define "dilaserve.placement" -}}
{{- with .nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "dilaserve.workerName" -}}
{{- printf "%s-worker-%s" (include "dilaserve.fullname" .root) .instance.name -}}
{{- end -}}
