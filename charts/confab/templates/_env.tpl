{{/*
The environment of each component. Only variables the services read are set; a tunable left
null in the values is not set at all, so the service's documented default applies.
*/}}

{{- define "confab.env.api" -}}
{{- $v := .Values.api }}
{{- include "confab.env.common" (dict "root" . "component" "api" "values" $v) }}
- name: CONFAB_HTTP_ADDR
  value: {{ printf "0.0.0.0:%d" (int $v.httpPort) | quote }}
- name: CONFAB_MIGRATE
  value: {{ ternary "false" "true" .Values.migration.enabled | quote }}
{{- include "confab.env.database" . }}
{{- $replica := .Values.database.readReplica }}
{{- include "confab.secretEnv" (dict "root" . "name" "DATABASE_READ_URL" "setting" $replica "value" $replica.url "key" "database-read-url") }}
{{- include "confab.optionalEnv" (list (list "CONFAB_READ_REPLICA_MAX_LAG_MS" $replica.maxLagMs)) }}
{{- include "confab.env.redis" . }}
{{- include "confab.env.nats" . }}
{{- include "confab.env.apiSearch" . }}
{{- include "confab.env.internalToken" . }}
{{- if .Values.adminToken.enabled }}
- name: CONFAB_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "confab.adminTokenSecretName" . | quote }}
      key: {{ include "confab.adminTokenSecretKey" . | quote }}
{{- end }}
{{- $cfg := $v.config }}
{{- $q := $v.quotaDefaults }}
{{- include "confab.optionalEnv" (list
  (list "CONFAB_MAX_BODY_BYTES" $cfg.maxBodyBytes)
  (list "CONFAB_MAX_PER_PAGE" $cfg.maxPerPage)
  (list "CONFAB_REQUEST_TIMEOUT_MS" $cfg.requestTimeoutMs)
  (list "CONFAB_TOKEN_CACHE_TTL_MS" $cfg.tokenCacheTtlMs)
  (list "CONFAB_PUBLISH_TIMEOUT_MS" $cfg.publishTimeoutMs)
  (list "CONFAB_SEARCH_TIMEOUT_MS" $cfg.searchTimeoutMs)
  (list "CONFAB_LIST_TOKENS" $cfg.listTokens)
  (list "CONFAB_OPEN_APPLICATION_CREATION" $cfg.openApplicationCreation)
  (list "CONFAB_LIST_APPLICATIONS" $cfg.listApplications)
  (list "CONFAB_APPLICATION_CREATION_PER_MINUTE" $cfg.applicationCreationPerMinute)
  (list "CONFAB_APPLICATION_CREATION_BURST" $cfg.applicationCreationBurst)
  (list "CONFAB_CLIENT_IP_HEADER" $cfg.clientIpHeader)
  (list "CONFAB_DEFAULT_MAX_CHATS" $q.maxChats)
  (list "CONFAB_DEFAULT_MESSAGES_PER_SECOND" $q.messagesPerSecond)
  (list "CONFAB_DEFAULT_MESSAGE_BURST" $q.messageBurst)
  (list "CONFAB_DEFAULT_MAX_BODY_BYTES" $q.maxBodyBytes)
  (list "CONFAB_DEFAULT_MAX_SUBSCRIPTIONS" $q.maxSubscriptions)
) }}
{{- end }}

{{- define "confab.env.persister" -}}
{{- $v := .Values.persister }}
{{- include "confab.env.common" (dict "root" . "component" "persister" "values" $v) }}
{{- include "confab.env.database" . }}
{{- /* The api's reads of an application stay on the primary for this long after the
persister changed it, so it must be the api's value. */}}
{{- include "confab.optionalEnv" (list (list "CONFAB_READ_REPLICA_MAX_LAG_MS" .Values.database.readReplica.maxLagMs)) }}
{{- /* The persister raises the api's Redis sequences past the numbers it committed. */}}
{{- include "confab.env.redis" . }}
{{- if .Values.redis.cluster.enabled }}
- name: CONFAB_REDIS_WAIT_REPLICAS
  value: {{ include "confab.envValue" .Values.redis.cluster.waitReplicas | quote }}
{{- end }}
{{- include "confab.env.nats" . }}
{{- include "confab.optionalEnv" (list
  (list "CONFAB_BATCH_SIZE" $v.config.batchSize)
  (list "CONFAB_BATCH_WAIT_MS" $v.config.batchWaitMs)
  (list "CONFAB_MAX_ACK_PENDING" $v.config.maxAckPending)
) }}
{{- end }}

{{- /* The indexer also gets DATABASE_URL: `confab-indexer reindex` reads MySQL. */ -}}
{{- define "confab.env.indexer" -}}
{{- $v := .Values.indexer }}
{{- include "confab.env.common" (dict "root" . "component" "indexer" "values" $v) }}
- name: CONFAB_SEARCH_ADDR
  value: {{ printf "0.0.0.0:%d" (int $v.searchPort) | quote }}
{{- if include "confab.elasticsearch" . }}
{{- include "confab.env.elasticsearch" . }}
{{- else }}
- name: CONFAB_INDEX_DIR
  value: "/var/lib/confab/index"
{{- end }}
{{- include "confab.env.internalToken" . }}
{{- include "confab.env.database" . }}
{{- include "confab.env.nats" . }}
{{- include "confab.optionalEnv" (list
  (list "CONFAB_INDEX_BATCH_SIZE" $v.config.batchSize)
  (list "CONFAB_INDEX_BATCH_WAIT_MS" $v.config.batchWaitMs)
  (list "CONFAB_MAX_ACK_PENDING" $v.config.maxAckPending)
  (list "CONFAB_SEARCH_PURGE_INTERVAL_MS" $v.config.purgeIntervalMs)
  (list "CONFAB_SEARCH_PURGE_GRACE_MS" $v.config.purgeGraceMs)
) }}
{{- end }}

{{- define "confab.env.counterReconciler" -}}
{{- $v := .Values.counterReconciler }}
{{- include "confab.env.common" (dict "root" . "component" "counter-reconciler" "values" $v) }}
{{- include "confab.env.database" . }}
{{- include "confab.optionalEnv" (list
  (list "CONFAB_RECONCILE_INTERVAL_MS" $v.config.intervalMs)
  (list "CONFAB_RECONCILE_BATCH" $v.config.batch)
  (list "CONFAB_REPAIR_CHUNK" $v.config.repairChunk)
  (list "CONFAB_MYSQL_PURGE_INTERVAL_MS" $v.config.purgeIntervalMs)
  (list "CONFAB_MYSQL_PURGE_CHUNK" $v.config.purgeChunk)
) }}
{{- end }}
