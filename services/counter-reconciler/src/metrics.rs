//! The counter reconciler's metrics, registered into the registry its `/metrics` serves.

use confab_runtime::metrics::{
    self, Dependencies, GaugeVec, Histogram, HistogramVec, IntCounterVec, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub dependencies: Dependencies,
    pub lag: GaugeVec,
    pub reconcile_lag: HistogramVec,
    pub rows_recounted: IntCounterVec,
    pub run_duration: Histogram,
    pub rows_purged: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Self {
        let metrics = Self {
            dependencies: Dependencies::register(registry),
            lag: metrics::gauge_vec(
                registry,
                "confab_counter_lag_seconds",
                "Age of the oldest change not yet reflected in a count, by kind (chat, \
                 application).",
                &["kind"],
            ),
            reconcile_lag: metrics::histogram_vec(
                registry,
                "confab_counter_reconcile_lag_seconds",
                "Time from a change being persisted to its count being reconciled, by kind.",
                &["kind"],
                metrics::LAG_BUCKETS,
            ),
            rows_recounted: metrics::counter_vec(
                registry,
                "confab_counter_rows_recounted_total",
                "Parents whose count was recomputed, by kind (chat, application).",
                &["kind"],
            ),
            run_duration: metrics::histogram(
                registry,
                "confab_counter_run_duration_seconds",
                "Duration of one reconcile run (every dirty mark present at its start).",
                metrics::LATENCY_BUCKETS,
            ),
            rows_purged: metrics::counter_vec(
                registry,
                "confab_purged_rows_total",
                "Rows of deleted applications removed from MySQL by the purge task, by table \
                 (chats, messages).",
                &["table"],
            ),
        };
        for kind in ["chat", "application"] {
            metrics.lag.with_label_values(&[kind]);
            metrics.rows_recounted.with_label_values(&[kind]);
        }
        for table in ["chats", "messages"] {
            metrics.rows_purged.with_label_values(&[table]);
        }
        metrics
    }
}
