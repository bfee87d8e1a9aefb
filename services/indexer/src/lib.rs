//! The indexer: a durable JetStream pull consumer of message events that indexes bodies for
//! search in batches, acking only after the backend accepted them.
//!
//! With `ELASTICSEARCH_URL` set it writes to Elasticsearch (the api queries Elasticsearch
//! directly). Without it, it owns an embedded tantivy index on disk (`CONFAB_INDEX_DIR`) and
//! serves the api's queries on its internal endpoint ([`http`]); the embedded index has one writer,
//! so run one indexer replica in that mode. `confab-indexer reindex` rebuilds the index from MySQL
//! ([`reindex`]).

pub mod config;
pub mod http;
pub mod metrics;
pub mod purge;
pub mod reindex;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

use confab_core::Subjects;
use confab_runtime::admin::{self, Readiness};
use confab_runtime::jetstream;
use confab_runtime::shutdown::{self, Shutdown};
use confab_runtime::{consume, db};
use confab_search::elastic::Elastic;
use confab_search::embedded::{Embedded, Shared};
use confab_search::SearchBackend;
use tokio::net::TcpListener;

pub use config::{BackendConfig, IndexerConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("jetstream: {0}")]
    JetStream(#[from] jetstream::Error),
    #[error("search backend: {0}")]
    Search(#[from] confab_search::Error),
    #[error("reindex: {0}")]
    Reindex(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// The listeners the indexer serves on.
pub struct Listeners {
    pub admin: TcpListener,
    pub search: TcpListener,
}

/// Opens (or creates) the configured backend.
pub async fn backend(config: &BackendConfig) -> Result<Arc<dyn SearchBackend>, Error> {
    Ok(match config {
        BackendConfig::Embedded { dir } => Arc::new(Shared(Arc::new(open_embedded(dir).await?))),
        BackendConfig::Elasticsearch { target, timeout } => {
            let elastic = Elastic::new(&target.url, &target.index, *timeout)?;
            elastic.ensure_index().await?;
            Arc::new(elastic)
        }
    })
}

/// Opens the embedded index, waiting up to 10 s for a previous writer (a process that is still
/// shutting down) to release the index lock.
async fn open_embedded(dir: &std::path::Path) -> Result<Embedded, Error> {
    let mut attempt = 0;
    loop {
        match Embedded::open(dir) {
            Ok(index) => return Ok(index),
            Err(error) if attempt < 40 => {
                attempt += 1;
                tracing::warn!(%error, attempt, "cannot open the index yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Runs the indexer until `shutdown` resolves; the batch in progress is finished first.
pub async fn run(
    config: IndexerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown = Shutdown::new(shutdown);
    let registry = confab_runtime::metrics::registry();
    let metrics = metrics::Metrics::register(&registry, config.backend.label());
    let db = db::pool(&config.common)?;
    let backend = backend(&config.backend).await?;
    let (js, consumer) = jetstream::connect_consumer(
        &config.common.nats_url,
        "confab-indexer",
        &config.common.stream,
        &config.consumer,
        Subjects::all_message_events,
        config.max_ack_pending,
    )
    .await?;
    let label = config.backend.label();
    // Every batch and the purge need MySQL (the deleted-application checks), as much as NATS.
    let readiness = Readiness::default().mysql(&db).nats(&js.client);
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        readiness,
        registry,
        shutdown.wait(),
    ));
    let purge = tokio::spawn(purge::run(
        db.clone(),
        backend.clone(),
        config.purge_interval,
        config.purge_grace,
        shutdown.wait(),
    ));
    let search_state = http::SearchState {
        backend: backend.clone(),
        backend_label: label,
        db: db.clone(),
        progress: Arc::default(),
        internal_token: config.internal_token.clone(),
        metrics: metrics.search.clone(),
    };
    let search = tokio::spawn({
        let stop = shutdown.wait();
        async move {
            axum::serve(listeners.search, http::router(search_state))
                .with_graceful_shutdown(stop)
                .await
        }
    });
    let context = consume::Context {
        js: js.clone(),
        metrics: metrics.consumer.clone(),
    };
    let worker = worker::Worker {
        backend,
        backend_label: label,
        db,
        consume: context.clone(),
        metrics,
    };
    tracing::info!(consumer = %config.consumer, backend = label, "indexer consuming");
    // Boxed: the consumer loop's future is large and lives for the whole run.
    Box::pin(context.run(
        &consumer,
        &worker,
        config.batch_size,
        config.batch_wait,
        shutdown.wait(),
    ))
    .await;
    shutdown::drain(&shutdown, Some(&js.client), vec![admin, search]).await?;
    if let Err(error) = purge.await {
        tracing::warn!(%error, "search purge task failed");
    }
    tracing::info!("indexer stopped");
    Ok(())
}
