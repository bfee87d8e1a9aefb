//! The operator's metrics, registered into the registry its `/metrics` serves.

use confab_runtime::metrics::{self, Histogram, IntCounter, IntCounterVec, IntGaugeVec, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub reconciliations: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub token_rotations: IntCounter,
    pub applications: IntGaugeVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Self {
        let metrics = Self {
            reconciliations: metrics::counter_vec(
                registry,
                "confab_operator_reconciliations_total",
                "Reconciliations of Application resources, by outcome (ok, error).",
                &["outcome"],
            ),
            reconcile_duration: metrics::histogram(
                registry,
                "confab_operator_reconcile_duration_seconds",
                "Time to reconcile one Application resource.",
                metrics::LATENCY_BUCKETS,
            ),
            token_rotations: metrics::counter(
                registry,
                "confab_operator_token_rotations_total",
                "Token rotations the operator applied.",
            ),
            applications: metrics::int_gauge_vec(
                registry,
                "confab_operator_applications",
                "Application resources known to the operator, by readiness (true, false).",
                &["ready"],
            ),
        };
        for outcome in ["ok", "error"] {
            metrics.reconciliations.with_label_values(&[outcome]);
        }
        for ready in ["true", "false"] {
            metrics.applications.with_label_values(&[ready]);
        }
        metrics
    }
}
