//! The persister's metrics, registered into the registry its `/metrics` serves.

use confab_runtime::metrics::{
    self, Consumer, Dependencies, HistogramVec, IntCounterVec, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub consumer: Consumer,
    pub dependencies: Dependencies,
    pub number_conflicts: IntCounterVec,
    pub persistence_lag: HistogramVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Self {
        let number_conflicts = metrics::counter_vec(
            registry,
            "confab_number_conflicts_total",
            "Creation events refused by the persister because another creation event already \
             made the row of their number (dead-lettered with reason number_conflict), by kind \
             (chat, message). Any increase means a number was handed out twice.",
            &["kind"],
        );
        for kind in ["chat", "message"] {
            number_conflicts.with_label_values(&[kind]);
        }
        Self {
            consumer: Consumer::register(
                registry,
                crate::worker::SERVICE,
                &[
                    "undecodable",
                    "late",
                    "rejected",
                    "exhausted",
                    "number_conflict",
                ],
            ),
            dependencies: Dependencies::register(registry),
            number_conflicts,
            persistence_lag: metrics::histogram_vec(
                registry,
                "confab_persistence_lag_seconds",
                "Time from an event's creation in the api to its commit in MySQL, by event type.",
                &["type"],
                metrics::LAG_BUCKETS,
            ),
        }
    }
}
