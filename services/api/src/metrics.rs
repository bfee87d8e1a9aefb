//! The api's metrics, registered into the registry its `/metrics` serves. Handed to the parts
//! that record them (one clone each; every family is reference-counted inside).

use confab_runtime::metrics::{
    self, Dependencies, HistogramVec, IntCounter, IntCounterVec, Registry, Search,
};

/// Event types the api publishes, for the series that exist from the start.
const PUBLISHED_TYPES: [&str; 3] = ["chat.created", "message.created", "message.updated"];

#[derive(Clone)]
pub struct Metrics {
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_panics: IntCounter,
    pub events_published: IntCounterVec,
    pub publish_duration: HistogramVec,
    pub publish_retries: IntCounterVec,
    pub sequence_reseeds: IntCounterVec,
    pub idempotent_requests: IntCounterVec,
    pub quota_rejections: IntCounterVec,
    pub reads: IntCounterVec,
    pub read_replica_lag: confab_runtime::metrics::Gauge,
    pub search: Search,
    pub dependencies: Dependencies,
    pub live: crate::live::LiveMetrics,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Self {
        let m = Self {
            http_requests: metrics::counter_vec(
                registry,
                "confab_http_requests_total",
                "HTTP requests answered, by route template, method and status class.",
                &["route", "method", "status_class"],
            ),
            http_duration: metrics::histogram_vec(
                registry,
                "confab_http_request_duration_seconds",
                "HTTP request latency, by route template and method.",
                &["route", "method"],
                metrics::LATENCY_BUCKETS,
            ),
            http_panics: metrics::counter(
                registry,
                "confab_http_panics_total",
                "HTTP requests whose handler panicked (answered 500 internal).",
            ),
            events_published: metrics::counter_vec(
                registry,
                "confab_events_published_total",
                "Events published to JetStream, by type and outcome (stored, retried, collision, \
                 error).",
                &["type", "outcome"],
            ),
            publish_duration: metrics::histogram_vec(
                registry,
                "confab_publish_duration_seconds",
                "Time from publish to JetStream acknowledgement, by event type.",
                &["type"],
                metrics::LATENCY_BUCKETS,
            ),
            publish_retries: metrics::counter_vec(
                registry,
                "confab_publish_retries_total",
                "Publish attempts repeated after a failure inside the request's deadline (a lost \
                 acknowledgement, a JetStream leader election), by event type.",
                &["type"],
            ),
            sequence_reseeds: metrics::counter_vec(
                registry,
                "confab_sequence_reseeds_total",
                "Redis sequences re-seeded because their key was missing, by kind (chat, \
                 message).",
                &["kind"],
            ),
            idempotent_requests: metrics::counter_vec(
                registry,
                "confab_idempotent_requests_total",
                "Requests whose Idempotency-Key was seen before: replayed (answered as the \
                 first), mismatch (another body, 422), in_progress (the first still running: \
                 this one waits), or released (the first took no number).",
                &["outcome"],
            ),
            quota_rejections: metrics::counter_vec(
                registry,
                "confab_quota_rejections_total",
                "Requests refused by a quota, by quota (chats, message_rate, body_size, \
                 application_creation, subscriptions).",
                &["quota"],
            ),
            reads: metrics::counter_vec(
                registry,
                "confab_db_reads_total",
                "Reads of chats and messages by where they were answered: replica \
                 (DATABASE_READ_URL) or primary.",
                &["source"],
            ),
            read_replica_lag: metrics::gauge(
                registry,
                "confab_read_replica_lag_seconds",
                "The read replica's lag, the age of the heartbeat it shows (-1: unknown or \
                 unreachable; 0 without a replica).",
            ),
            search: Search::register(registry, &["query"]),
            dependencies: Dependencies::register(registry),
            live: crate::live::LiveMetrics::register(registry),
        };
        // Series that only move during incidents exist at zero from the start, so `rate()` and
        // `increase()` see their first increment and dashboards show 0 instead of "no data".
        for quota in [
            "chats",
            "message_rate",
            "body_size",
            "application_creation",
            "subscriptions",
        ] {
            m.quota_rejections.with_label_values(&[quota]);
        }
        for kind in ["chat", "message"] {
            m.sequence_reseeds.with_label_values(&[kind]);
        }
        for kind in PUBLISHED_TYPES {
            for outcome in ["stored", "retried", "collision", "error"] {
                m.events_published.with_label_values(&[kind, outcome]);
            }
            m.publish_retries.with_label_values(&[kind]);
        }
        for source in ["replica", "primary"] {
            m.reads.with_label_values(&[source]);
        }
        for outcome in ["replayed", "mismatch", "in_progress", "released"] {
            m.idempotent_requests.with_label_values(&[outcome]);
        }
        m
    }
}
