//! The indexer's metrics, registered into the registry its `/metrics` serves.

use confab_runtime::metrics::{self, Consumer, HistogramVec, IntCounterVec, Registry, Search};

#[derive(Clone)]
pub struct Metrics {
    pub consumer: Consumer,
    pub search: Search,
    pub docs_indexed: IntCounterVec,
    pub bulk_duration: HistogramVec,
    pub index_lag: HistogramVec,
}

impl Metrics {
    /// Registers the indexer's families; the series of `backend` (its label: `embedded`,
    /// `elasticsearch`) start at zero.
    pub fn register(registry: &Registry, backend: &str) -> Self {
        let metrics = Self {
            consumer: Consumer::register(
                registry,
                crate::worker::SERVICE,
                &["undecodable", "late", "rejected", "exhausted"],
            ),
            search: Search::register(registry, &["index", "query"]),
            docs_indexed: metrics::counter_vec(
                registry,
                "confab_search_documents_indexed_total",
                "Message documents sent to the search backend, by backend (embedded, \
                 elasticsearch).",
                &["backend"],
            ),
            bulk_duration: metrics::histogram_vec(
                registry,
                "confab_search_bulk_duration_seconds",
                "Time to apply one batch to the search backend, by backend and outcome (ok, \
                 error).",
                &["backend", "outcome"],
                metrics::LATENCY_BUCKETS,
            ),
            index_lag: metrics::histogram_vec(
                registry,
                "confab_index_lag_seconds",
                "Time from an event's creation in the api to its body being searchable, by \
                 event type.",
                &["type"],
                metrics::LAG_BUCKETS,
            ),
        };
        metrics.docs_indexed.with_label_values(&[backend]);
        metrics
    }
}
