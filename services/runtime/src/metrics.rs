//! Every metric Confab exports, in one place.
//!
//! All names start with `confab_`; labels are bounded (route templates, event types, outcomes,
//! service names), never tokens, ids or numbers. Metrics live in the process-wide default
//! registry (the one global Confab allows), which also carries the `process_*` metrics.

use std::sync::LazyLock;

use prometheus::{
    register_gauge_vec, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge_vec, GaugeVec, Histogram, HistogramVec,
    IntCounter, IntCounterVec, IntGaugeVec,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0, 60.0,
    300.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_http_requests_total",
        "HTTP requests answered, by route template, method and status class.",
        &["route", "method", "status_class"]
    )
    .expect("metric registers once")
});

pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_http_request_duration_seconds",
        "HTTP request latency, by route template and method.",
        &["route", "method"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static EVENTS_PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_events_published_total",
        "Events published to JetStream, by type and outcome (stored, retried, collision, error).",
        &["type", "outcome"]
    )
    .expect("metric registers once")
});

pub static PUBLISH_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_publish_duration_seconds",
        "Time from publish to JetStream acknowledgement, by event type.",
        &["type"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static SEQUENCE_RESEEDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_sequence_reseeds_total",
        "Redis sequences re-seeded because their key was missing, by kind (chat, message).",
        &["kind"]
    )
    .expect("metric registers once")
});

pub static PUBLISH_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_publish_retries_total",
        "Publish attempts repeated after a failure inside the request's deadline (a lost \
         acknowledgement, a JetStream leader election), by event type.",
        &["type"]
    )
    .expect("metric registers once")
});

pub static IDEMPOTENT_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_idempotent_requests_total",
        "Requests whose Idempotency-Key was seen before: replayed (answered as the first), or \
         mismatch (another body, 422).",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static NUMBER_CONFLICTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_number_conflicts_total",
        "Creation events refused by the persister because another creation event already made \
         the row of their number (dead-lettered with reason number_conflict), by kind (chat, \
         message). Any increase means a number was handed out twice.",
        &["kind"]
    )
    .expect("metric registers once")
});

pub static EVENTS_CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_events_consumed_total",
        "Events received from JetStream, by service and event type.",
        &["service", "type"]
    )
    .expect("metric registers once")
});

pub static EVENTS_ACKED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_events_acked_total",
        "Events acknowledged after they were applied, by service.",
        &["service"]
    )
    .expect("metric registers once")
});

pub static EVENTS_REDELIVERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_events_redelivered_total",
        "Events received more than once, by service.",
        &["service"]
    )
    .expect("metric registers once")
});

pub static EVENTS_DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_events_dead_lettered_total",
        "Events sent to the dead-letter stream, by service and reason class.",
        &["service", "reason"]
    )
    .expect("metric registers once")
});

pub static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_batch_size",
        "Events per applied batch, by service.",
        &["service"],
        BATCH_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static BATCH_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_batch_duration_seconds",
        "Time to apply one batch, by service and outcome (ok, error).",
        &["service", "outcome"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static PERSISTENCE_LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_persistence_lag_seconds",
        "Time from an event's creation in the api to its commit in MySQL, by event type.",
        &["type"],
        LAG_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static COUNTER_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "confab_counter_lag_seconds",
        "Age of the oldest change not yet reflected in a count, by kind (chat, application).",
        &["kind"]
    )
    .expect("metric registers once")
});

pub static COUNTER_RECONCILE_LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_counter_reconcile_lag_seconds",
        "Time from a change being persisted to its count being reconciled, by kind.",
        &["kind"],
        LAG_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static COUNTER_ROWS_RECOUNTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_counter_rows_recounted_total",
        "Parents whose count was recomputed, by kind (chat, application).",
        &["kind"]
    )
    .expect("metric registers once")
});

pub static COUNTER_RUN_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "confab_counter_run_duration_seconds",
        "Duration of one reconcile run (every dirty mark present at its start).",
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static SEARCH_DOCS_INDEXED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_search_documents_indexed_total",
        "Message documents sent to the search backend, by backend (embedded, elasticsearch).",
        &["backend"]
    )
    .expect("metric registers once")
});

pub static SEARCH_BULK_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_search_bulk_duration_seconds",
        "Time to apply one batch to the search backend, by backend and outcome (ok, error).",
        &["backend", "outcome"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static SEARCH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_search_failures_total",
        "Failed search backend calls, by operation (index, query) and reason (unavailable, rejected).",
        &["operation", "reason"]
    )
    .expect("metric registers once")
});

pub static INDEX_LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_index_lag_seconds",
        "Time from an event's creation in the api to its body being searchable, by event type.",
        &["type"],
        LAG_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static SEARCH_QUERY_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_search_query_duration_seconds",
        "Search query latency at the backend, by backend.",
        &["backend"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static QUOTA_REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_quota_rejections_total",
        "Requests refused by an application quota, by quota (chats, message_rate, body_size).",
        &["quota"]
    )
    .expect("metric registers once")
});

pub static CONSUMER_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "confab_jetstream_consumer_pending_messages",
        "Messages in the stream not yet delivered to the consumer, by service and consumer.",
        &["service", "consumer"]
    )
    .expect("metric registers once")
});

pub static CONSUMER_ACK_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "confab_jetstream_consumer_ack_pending_messages",
        "Messages delivered to the consumer and not yet acknowledged, by service and consumer.",
        &["service", "consumer"]
    )
    .expect("metric registers once")
});

pub static REDIS_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_redis_command_duration_seconds",
        "Redis call latency, by operation.",
        &["operation"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static MYSQL_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "confab_mysql_query_duration_seconds",
        "MySQL call latency (a query or a whole transaction), by operation.",
        &["operation"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static OPERATOR_RECONCILIATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "confab_operator_reconciliations_total",
        "Reconciliations of Application resources, by outcome (ok, error).",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static OPERATOR_RECONCILE_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "confab_operator_reconcile_duration_seconds",
        "Time to reconcile one Application resource.",
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static OPERATOR_TOKEN_ROTATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "confab_operator_token_rotations_total",
        "Token rotations the operator applied."
    )
    .expect("metric registers once")
});

pub static OPERATOR_APPLICATIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "confab_operator_applications",
        "Application resources known to the operator, by readiness (true, false).",
        &["ready"]
    )
    .expect("metric registers once")
});

/// Creates, at zero, every series of `service` whose labels are known in advance, so counters
/// that only move during incidents (dead letters, failures, quota rejections) exist from the
/// start: `rate()` and `increase()` then see their first increment, and dashboards show 0
/// instead of "no data". Call once at start-up with the binary's name.
pub fn initialize(service: &str) {
    match service {
        "confab-api" => {
            for quota in ["chats", "message_rate", "body_size"] {
                QUOTA_REJECTIONS.with_label_values(&[quota]);
            }
            for kind in ["chat", "message"] {
                SEQUENCE_RESEEDS.with_label_values(&[kind]);
            }
            for kind in ["chat.created", "message.created", "message.updated"] {
                for outcome in ["stored", "retried", "collision", "error"] {
                    EVENTS_PUBLISHED.with_label_values(&[kind, outcome]);
                }
                PUBLISH_RETRIES.with_label_values(&[kind]);
            }
            for outcome in ["replayed", "mismatch"] {
                IDEMPOTENT_REQUESTS.with_label_values(&[outcome]);
            }
        }
        "confab-persister" | "confab-indexer" => {
            let short = service.trim_start_matches("confab-");
            EVENTS_ACKED.with_label_values(&[short]);
            EVENTS_REDELIVERED.with_label_values(&[short]);
            for reason in ["undecodable", "rejected", "exhausted"] {
                EVENTS_DEAD_LETTERED.with_label_values(&[short, reason]);
            }
            if short == "persister" {
                EVENTS_DEAD_LETTERED.with_label_values(&[short, "number_conflict"]);
                for kind in ["chat", "message"] {
                    NUMBER_CONFLICTS.with_label_values(&[kind]);
                }
            }
            for outcome in ["ok", "error"] {
                BATCH_DURATION.with_label_values(&[short, outcome]);
            }
            if short == "indexer" {
                for operation in ["index", "query"] {
                    for reason in ["unavailable", "rejected"] {
                        SEARCH_FAILURES.with_label_values(&[operation, reason]);
                    }
                }
            }
        }
        "confab-counter-reconciler" => {
            for kind in ["chat", "application"] {
                COUNTER_LAG.with_label_values(&[kind]);
                COUNTER_ROWS_RECOUNTED.with_label_values(&[kind]);
            }
            LazyLock::force(&COUNTER_RUN_DURATION);
        }
        "confab-operator" => {
            for outcome in ["ok", "error"] {
                OPERATOR_RECONCILIATIONS.with_label_values(&[outcome]);
            }
            for ready in ["true", "false"] {
                OPERATOR_APPLICATIONS.with_label_values(&[ready]);
            }
            LazyLock::force(&OPERATOR_RECONCILE_DURATION);
            LazyLock::force(&OPERATOR_TOKEN_ROTATIONS);
        }
        _ => {}
    }
}

/// Observes a Redis call that started at `started`.
pub fn observe_redis(operation: &str, started: std::time::Instant) {
    REDIS_DURATION
        .with_label_values(&[operation])
        .observe(started.elapsed().as_secs_f64());
}

/// Observes a MySQL call that started at `started`.
pub fn observe_mysql(operation: &str, started: std::time::Instant) {
    MYSQL_DURATION
        .with_label_values(&[operation])
        .observe(started.elapsed().as_secs_f64());
}

/// Observes, in a lag histogram, the seconds from `since` to now.
pub fn observe_since(histogram: &HistogramVec, label: &str, since: chrono::DateTime<chrono::Utc>) {
    let lag = (chrono::Utc::now() - since).num_microseconds().unwrap_or(0) as f64 / 1e6;
    histogram.with_label_values(&[label]).observe(lag.max(0.0));
}

/// The text exposition of every registered metric.
pub fn render() -> String {
    let families = prometheus::gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|error| format!("# encoding failed: {error}\n"))
}

/// `2xx`, `4xx`, ... for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
