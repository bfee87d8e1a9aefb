//! Metric building blocks: a registry per service, and the families that more than one service
//! exports (dependency latency, consumer bookkeeping, search calls).
//!
//! Each service declares its own metrics in its own `metrics` module, registered into the
//! [`Registry`] it is handed at start-up, and serves that registry on `/metrics`; nothing lives in
//! a process-wide registry, so two services in one process (as in the tests) never share a series
//! and a test reads exactly one service's numbers. All names start with `confab_`; labels are
//! bounded (route templates, event types, outcomes), never tokens, ids or numbers.

use prometheus::core::Collector;
use prometheus::{HistogramOpts, Opts};

pub use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry,
};

pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Lag buckets, fine around the persistence-lag target (p99 < 200 ms) and up to minutes.
pub const LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0,
    30.0, 60.0, 300.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// A new registry holding the `process_*` metrics (CPU, resident memory, file descriptors) of
/// this process.
pub fn registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("the process collector registers once per registry");
    registry
}

/// Registers `collector` and returns it. Names are constants of this codebase and every
/// registry is fresh, so a failure is a programming error (a name declared twice).
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("a metric name is declared once per registry");
    collector
}

pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid metric name"),
    )
}

pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name"),
    )
}

pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        registry,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric name"),
    )
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(registry, Gauge::new(name, help).expect("valid metric name"))
}

pub fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).expect("valid metric name"),
    )
}

pub fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name"),
    )
}

pub fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, Histogram::with_opts(opts).expect("valid metric"))
}

pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid metric"),
    )
}

/// The text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|error| format!("# encoding failed: {error}\n"))
}

/// Latency of calls to the backing services.
#[derive(Clone)]
pub struct Dependencies {
    redis: HistogramVec,
    mysql: HistogramVec,
}

impl Dependencies {
    pub fn register(registry: &Registry) -> Self {
        Self {
            redis: histogram_vec(
                registry,
                "confab_redis_command_duration_seconds",
                "Redis call latency, by operation.",
                &["operation"],
                LATENCY_BUCKETS,
            ),
            mysql: histogram_vec(
                registry,
                "confab_mysql_query_duration_seconds",
                "MySQL call latency (a query or a whole transaction), by operation.",
                &["operation"],
                LATENCY_BUCKETS,
            ),
        }
    }

    /// Observes a Redis call that started at `started`.
    pub fn redis(&self, operation: &str, started: std::time::Instant) {
        self.redis
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Observes a MySQL call that started at `started`.
    pub fn mysql(&self, operation: &str, started: std::time::Instant) {
        self.mysql
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The bookkeeping of a JetStream consumer service (the persister, the indexer), labelled with
/// its short name (`service`), which the dashboards select on.
#[derive(Clone)]
pub struct Consumer {
    pub service: &'static str,
    pub consumed: IntCounterVec,
    pub acked: IntCounterVec,
    pub redelivered: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub batch_size: HistogramVec,
    pub batch_duration: HistogramVec,
    pub pending: IntGaugeVec,
    pub ack_pending: IntGaugeVec,
}

impl Consumer {
    /// Registers the consumer families and creates, at zero, the series that only move during
    /// incidents (dead letters by each of `dead_letter_reasons`, failed batches), so `rate()` and
    /// `increase()` see their first increment and dashboards show 0 instead of "no data".
    pub fn register(
        registry: &Registry,
        service: &'static str,
        dead_letter_reasons: &[&str],
    ) -> Self {
        let metrics = Self {
            service,
            consumed: counter_vec(
                registry,
                "confab_events_consumed_total",
                "Events received from JetStream, by service and event type.",
                &["service", "type"],
            ),
            acked: counter_vec(
                registry,
                "confab_events_acked_total",
                "Events acknowledged after they were applied, by service.",
                &["service"],
            ),
            redelivered: counter_vec(
                registry,
                "confab_events_redelivered_total",
                "Events received more than once, by service.",
                &["service"],
            ),
            dead_lettered: counter_vec(
                registry,
                "confab_events_dead_lettered_total",
                "Events sent to the dead-letter stream, by service and reason class.",
                &["service", "reason"],
            ),
            batch_size: histogram_vec(
                registry,
                "confab_batch_size",
                "Events per applied batch, by service.",
                &["service"],
                BATCH_BUCKETS,
            ),
            batch_duration: histogram_vec(
                registry,
                "confab_batch_duration_seconds",
                "Time to apply one batch, by service and outcome (ok, error).",
                &["service", "outcome"],
                LATENCY_BUCKETS,
            ),
            pending: int_gauge_vec(
                registry,
                "confab_jetstream_consumer_pending_messages",
                "Messages in the stream not yet delivered to the consumer, by service and consumer.",
                &["service", "consumer"],
            ),
            ack_pending: int_gauge_vec(
                registry,
                "confab_jetstream_consumer_ack_pending_messages",
                "Messages delivered to the consumer and not yet acknowledged, by service and \
                 consumer.",
                &["service", "consumer"],
            ),
        };
        metrics.acked.with_label_values(&[service]);
        metrics.redelivered.with_label_values(&[service]);
        for reason in dead_letter_reasons {
            metrics.dead_lettered.with_label_values(&[service, reason]);
        }
        for outcome in ["ok", "error"] {
            metrics
                .batch_duration
                .with_label_values(&[service, outcome]);
        }
        metrics
    }

    /// Observes one batch attempt that started at `started`.
    pub fn batch(&self, outcome: &str, started: std::time::Instant) {
        self.batch_duration
            .with_label_values(&[self.service, outcome])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Calls to a search backend, made by the api (queries) and the indexer (index writes, and the
/// queries it serves for the embedded index).
#[derive(Clone)]
pub struct Search {
    pub failures: IntCounterVec,
    pub query_duration: HistogramVec,
}

impl Search {
    /// Registers the families; the failure series of `operations` start at zero.
    pub fn register(registry: &Registry, operations: &[&str]) -> Self {
        let metrics = Self {
            failures: counter_vec(
                registry,
                "confab_search_failures_total",
                "Failed search backend calls, by operation (index, query) and reason \
                 (unavailable, rejected).",
                &["operation", "reason"],
            ),
            query_duration: histogram_vec(
                registry,
                "confab_search_query_duration_seconds",
                "Search query latency at the backend, by backend.",
                &["backend"],
                LATENCY_BUCKETS,
            ),
        };
        for operation in operations {
            for reason in ["unavailable", "rejected"] {
                metrics.failures.with_label_values(&[operation, reason]);
            }
        }
        metrics
    }
}

/// Observes, in a lag histogram, the seconds from `since` to now.
pub fn observe_since(histogram: &HistogramVec, label: &str, since: chrono::DateTime<chrono::Utc>) {
    histogram
        .with_label_values(&[label])
        .observe(seconds_since(since));
}

/// The seconds from `since` to now, never negative (clocks of two hosts can disagree).
pub fn seconds_since(since: chrono::DateTime<chrono::Utc>) -> f64 {
    let lag = (chrono::Utc::now() - since).num_microseconds().unwrap_or(0) as f64 / 1e6;
    lag.max(0.0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_registries_never_share_a_series() {
        let (a, b) = (registry(), registry());
        let (da, db) = (Dependencies::register(&a), Dependencies::register(&b));
        da.redis("get", std::time::Instant::now());
        assert!(
            render(&a).contains("confab_redis_command_duration_seconds_count{operation=\"get\"} 1")
        );
        assert!(!render(&b).contains("operation=\"get\""));
        db.mysql("q", std::time::Instant::now());
        assert!(!render(&a).contains("operation=\"q\""));
    }

    #[test]
    fn incident_series_of_a_consumer_exist_at_zero() {
        let r = registry();
        Consumer::register(&r, "persister", &["rejected"]);
        let text = render(&r);
        assert!(
            text.contains(
                "confab_events_dead_lettered_total{reason=\"rejected\",service=\"persister\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
