{{/*
Names, labels, images and the environment of the Confab components.

Component helpers take a dict:
  root       the top-level context ($)
  component  api | persister | indexer | counter-reconciler
  values     the component's values (.Values.api, .Values.counterReconciler, ...)
*/}}

{{- define "confab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "confab.fullname" -}}
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

{{- define "confab.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Objects of one component: <fullname>-<component>. */}}
{{- define "confab.componentFullname" -}}
{{- printf "%s-%s" (include "confab.fullname" .root) .component | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/* The binary, also the Prometheus job and OTEL_SERVICE_NAME: confab-<component>. */}}
{{- define "confab.binary" -}}
{{- printf "confab-%s" .component }}
{{- end }}

{{/* Labels of the objects that belong to no single component. */}}
{{- define "confab.baseLabels" -}}
helm.sh/chart: {{ include "confab.chart" . }}
app.kubernetes.io/name: {{ include "confab.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: confab
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of a component. app.kubernetes.io/name is the binary name: the ServiceMonitors
use it as the Prometheus job label.
*/}}
{{- define "confab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "confab.binary" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "confab.labels" -}}
helm.sh/chart: {{ include "confab.chart" .root }}
{{ include "confab.selectorLabels" . }}
app.kubernetes.io/part-of: confab
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "confab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "confab.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image tag: the component's, else global.imageTag, else the chart's appVersion. (dict root image) */}}
{{- define "confab.imageTag" -}}
{{- .image.tag | default .root.Values.global.imageTag | default .root.Chart.AppVersion | toString }}
{{- end }}

{{/* Full image reference. (dict root image) */}}
{{- define "confab.image" -}}
{{- $repository := .image.repository }}
{{- with .root.Values.global.imageRegistry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (include "confab.imageTag" .) }}
{{- end }}
{{- end }}

{{/* Secret names. */}}
{{- define "confab.connectionsSecretName" -}}
{{- printf "%s-connections" (include "confab.fullname" .) }}
{{- end }}

{{- define "confab.adminTokenSecretName" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin-token" (include "confab.fullname" .)) }}
{{- end }}

{{- define "confab.adminTokenSecretKey" -}}
{{- if .Values.adminToken.existingSecret }}
{{- .Values.adminToken.existingSecretKey }}
{{- else -}}
admin-token
{{- end }}
{{- end }}

{{- define "confab.internalTokenSecretName" -}}
{{- .Values.internalToken.existingSecret | default (printf "%s-internal-token" (include "confab.fullname" .)) }}
{{- end }}

{{- define "confab.internalTokenSecretKey" -}}
{{- if .Values.internalToken.existingSecret }}
{{- .Values.internalToken.existingSecretKey }}
{{- else -}}
internal-token
{{- end }}
{{- end }}

{{/* CONFAB_INTERNAL_TOKEN, when enabled: the api and the indexer share it. */}}
{{- define "confab.env.internalToken" -}}
{{- if .Values.internalToken.enabled }}
- name: CONFAB_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "confab.internalTokenSecretName" . | quote }}
      key: {{ include "confab.internalTokenSecretKey" . | quote }}
{{- end }}
{{- end }}

{{/* "true" when the search backend is Elasticsearch, else empty. */}}
{{- define "confab.elasticsearch" -}}
{{- if or .Values.search.elasticsearch.url .Values.search.elasticsearch.existingSecret }}true{{ end }}
{{- end }}

{{/* A number, boolean or string as an environment variable value (integers without exponent). */}}
{{- define "confab.envValue" -}}
{{- if or (kindIs "float64" .) (kindIs "float32" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* Integers and percentages (PodDisruptionBudget fields). */}}
{{- define "confab.intOrString" -}}
{{- if kindIs "string" . }}{{ quote . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{/*
Environment variables whose value may be unset: a list of [NAME, value]; a null or empty value
is left out, so the service's default applies.
*/}}
{{- define "confab.optionalEnv" -}}
{{- range $pair := . }}
{{- $value := index $pair 1 }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value ""))) }}
- name: {{ index $pair 0 }}
  value: {{ include "confab.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A connection setting: from its existing Secret when set, else from the chart's connections
Secret when a value was given, else not set. (dict root name setting value key)
*/}}
{{- define "confab.secretEnv" -}}
{{- if .setting.existingSecret }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .setting.existingSecret | quote }}
      key: {{ .setting.existingSecretKey | quote }}
{{- else if .value }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "confab.connectionsSecretName" .root }}
      key: {{ .key }}
{{- end }}
{{- end }}

{{- define "confab.env.database" -}}
{{- $v := .Values }}
{{- include "confab.secretEnv" (dict "root" . "name" "DATABASE_URL" "setting" $v.database "value" $v.database.url "key" "database-url") }}
{{- include "confab.optionalEnv" (list (list "CONFAB_DB_MAX_CONNECTIONS" $v.database.maxConnections)) }}
{{- end }}

{{/* REDIS_URL (one URL, or a Redis Cluster's nodes), the key prefix and the cluster switch: the
api and the persister. */}}
{{- define "confab.env.redis" -}}
{{- $r := .Values.redis }}
{{- include "confab.secretEnv" (dict "root" . "name" "REDIS_URL" "setting" $r "value" $r.url "key" "redis-url") }}
{{- include "confab.optionalEnv" (list (list "CONFAB_REDIS_PREFIX" $r.keyPrefix)) }}
{{- if $r.cluster.enabled }}
- name: CONFAB_REDIS_CLUSTER
  value: "true"
{{- end }}
{{- end }}

{{- define "confab.env.nats" -}}
{{- $v := .Values }}
{{- include "confab.secretEnv" (dict "root" . "name" "NATS_URL" "setting" $v.nats "value" $v.nats.url "key" "nats-url") }}
{{- $s := $v.nats.stream }}
{{- include "confab.optionalEnv" (list
  (list "CONFAB_STREAM" $s.name)
  (list "CONFAB_DLQ_STREAM" $s.deadLetterName)
  (list "CONFAB_SUBJECT_PREFIX" $s.subjectPrefix)
  (list "CONFAB_STREAM_REPLICAS" $s.replicas)
  (list "CONFAB_STREAM_MAX_AGE_SECS" $s.maxAgeSeconds)
  (list "CONFAB_DUPLICATE_WINDOW_SECS" $s.duplicateWindowSeconds)
  (list "CONFAB_MAX_DELIVER" $s.maxDeliver)
  (list "CONFAB_ACK_WAIT_SECS" $s.ackWaitSeconds)
  (list "CONFAB_LIVE_STREAM" $s.liveName)
  (list "CONFAB_LIVE_WINDOW_SECS" $s.liveWindowSeconds)
  (list "CONFAB_CLOCK_SKEW_MS" $s.clockSkewMs)
  (list "CONFAB_PERSISTER_CONSUMER" $v.persister.config.consumer)
) }}
{{- /* Every service makes sure the consumers exist before it publishes (the events stream keeps
an event only while a consumer still has to ack it): without an indexer, none is named. */}}
{{- if $v.indexer.enabled }}
{{- include "confab.optionalEnv" (list (list "CONFAB_INDEXER_CONSUMER" $v.indexer.config.consumer)) }}
{{- else }}
- name: CONFAB_INDEXER_CONSUMER
  value: ""
{{- end }}
{{- end }}

{{- define "confab.env.elasticsearch" -}}
{{- $es := .Values.search.elasticsearch }}
{{- include "confab.secretEnv" (dict "root" . "name" "ELASTICSEARCH_URL" "setting" $es "value" $es.url "key" "elasticsearch-url") }}
{{- include "confab.optionalEnv" (list (list "CONFAB_ELASTICSEARCH_INDEX" $es.index)) }}
{{- end }}

{{/* Logging, telemetry and the admin listener: every component. (component dict) */}}
{{- define "confab.env.common" -}}
{{- $root := .root }}
{{- $t := $root.Values.telemetry }}
- name: CONFAB_ADMIN_ADDR
  value: {{ printf "0.0.0.0:%d" (int .values.adminPort) | quote }}
- name: RUST_LOG
  value: {{ .values.logLevel | default $t.logLevel | quote }}
- name: CONFAB_LOG_FORMAT
  value: {{ $t.logFormat | quote }}
{{- include "confab.secretEnv" (dict "root" $root "name" "OTEL_EXPORTER_OTLP_ENDPOINT" "setting" $t.otlp "value" $t.otlp.endpoint "key" "otlp-endpoint") }}
- name: OTEL_SERVICE_NAME
  value: {{ include "confab.binary" . | quote }}
{{- $attributes := dict "service.namespace" "confab" "service.version" (include "confab.imageTag" (dict "root" $root "image" .values.image)) "k8s.namespace.name" $root.Release.Namespace }}
{{- range $key, $value := $t.resourceAttributes }}
{{- $_ := set $attributes $key (include "confab.envValue" $value) }}
{{- end }}
{{- $pairs := list }}
{{- range $key := keys $attributes | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $key (get $attributes $key)) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $pairs | quote }}
{{- end }}

{{/* The api's search settings. */}}
{{- define "confab.env.apiSearch" -}}
{{- if include "confab.elasticsearch" . }}
{{- include "confab.env.elasticsearch" . }}
{{- else }}
- name: CONFAB_SEARCH_URL
  value: {{ .Values.search.indexerUrl | default (printf "http://%s:%d" (include "confab.componentFullname" (dict "root" . "component" "indexer")) (int .Values.indexer.searchPort)) | quote }}
{{- end }}
{{- end }}

{{/*
The pod template of a component. Besides the component dict:
  env           the component's environment (YAML list, string)
  ports         extra container ports (YAML list, string; the admin port is always there)
  volumeMounts  extra mounts (YAML list, string)
  volumes       extra volumes (YAML list, string)
  annotations   extra pod annotations (map)
*/}}
{{- define "confab.podTemplate" -}}
{{- $root := .root }}
{{- $v := .values }}
metadata:
  labels:
    {{- include "confab.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/part-of: confab
    app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/connections: {{ include (print $root.Template.BasePath "/secret-connections.yaml") $root | sha256sum }}
    {{- with .annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "confab.serviceAccountName" $root }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with $root.Values.global.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . | quote }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ int $v.terminationGracePeriodSeconds }}
  containers:
    - name: {{ .component }}
      image: {{ include "confab.image" (dict "root" $root "image" $v.image) | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      ports:
        {{- with .ports }}
        {{- . | trim | nindent 8 }}
        {{- end }}
        - name: admin
          containerPort: {{ int $v.adminPort }}
          protocol: TCP
      env:
        {{- .env | trim | nindent 8 }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: admin
        {{- toYaml $root.Values.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        {{- toYaml $root.Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        {{- toYaml $root.Values.probes.readiness | nindent 8 }}
      {{- with $v.lifecycle }}
      lifecycle:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- with .volumeMounts }}
        {{- . | trim | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- with .volumes }}
    {{- . | trim | nindent 4 }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
