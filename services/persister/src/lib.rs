//! The persister: a durable JetStream pull consumer that writes chats and messages to MySQL.
//!
//! Events arrive in batches through the shared consumer worker ([`confab_runtime::consume`]),
//! which hands them to [`worker::Worker`]; a batch becomes a plan of rows
//! ([`batch`], pure) that is applied in one transaction ([`store`]); events are acked only after
//! commit and after the Redis sequences were raised past the numbers created (see
//! [`confab_core::sequence`]). Every write is an idempotent upsert versioned by stream sequence, so redelivery,
//! replays and several replicas sharing the consumer all converge to one row per message with the
//! body of its latest event. Events that can never be applied go to the dead-letter stream
//! ([`confab_runtime::dead_letter`]).

pub mod batch;
pub mod config;
pub mod metrics;
pub mod store;
pub mod worker;

use std::future::Future;

use confab_core::Subjects;
use confab_runtime::admin::{self, Readiness};
use confab_runtime::jetstream;
use confab_runtime::shutdown::{self, Shutdown};
use confab_runtime::{consume, db};
use tokio::net::TcpListener;

pub use config::PersisterConfig;
use worker::Worker;

/// What an application's change mark lasts beyond the replica's allowed lag: the commit's own
/// duration and the api's heartbeat look (every 200 ms) fit well within it.
const CHANGE_MARK_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("jetstream: {0}")]
    JetStream(#[from] jetstream::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("admin server: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the persister until `shutdown` resolves; the batch in progress is finished first.
pub async fn run(
    config: PersisterConfig,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown = Shutdown::new(shutdown);
    let registry = confab_runtime::metrics::registry();
    let metrics = metrics::Metrics::register(&registry);
    let db = db::pool(&config.common)?;
    let (js, consumer) = jetstream::connect_consumer(
        &config.common.nats_url,
        "confab-persister",
        &config.common.stream,
        &config.consumer,
        Subjects::all_events,
        config.max_ack_pending,
    )
    .await?;
    let redis = confab_runtime::cache::connect(&config.common).await?;
    let readiness = Readiness::default()
        .mysql(&db)
        .redis(&redis)
        .nats(&js.client);
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        readiness,
        registry,
        shutdown.wait(),
    ));
    let heartbeat = tokio::spawn({
        let (db, stop) = (db.clone(), shutdown.wait());
        async move {
            db::heartbeat(db, stop).await;
            Ok(())
        }
    });
    let context = consume::Context {
        js: js.clone(),
        metrics: metrics.consumer.clone(),
    };
    let worker = Worker {
        db,
        redis,
        wait_replicas: config.common.redis_wait_replicas,
        change_mark: config.common.read_replica_max_lag + CHANGE_MARK_MARGIN,
        keys: confab_core::keys::Keys::new(config.common.redis_prefix.clone()),
        consume: context.clone(),
        metrics,
    };

    tracing::info!(consumer = %config.consumer, "persister consuming");
    // Boxed: the consumer loop's future is large and lives for the whole run.
    Box::pin(context.run(
        &consumer,
        &worker,
        config.batch_size,
        config.batch_wait,
        shutdown.wait(),
    ))
    .await;
    shutdown::drain(&shutdown, Some(&js.client), vec![admin, heartbeat]).await?;
    tracing::info!("persister stopped");
    Ok(())
}
