//! The persister: a durable JetStream pull consumer that writes chats and messages to MySQL.
//!
//! Events arrive in batches ([`worker::Worker::process`]); a batch becomes a plan of rows
//! ([`batch`], pure) that is applied in one transaction ([`store`]); events are acked only after
//! commit. Every write is an idempotent upsert versioned by stream sequence, so redelivery,
//! replays and several replicas sharing the consumer all converge to one row per message with the
//! body of its latest event. Events that can never be applied go to the dead-letter stream
//! ([`dead_letter`]).

pub mod batch;
pub mod config;
pub mod dead_letter;
pub mod store;
pub mod worker;

use std::future::Future;

use confab_runtime::admin::{self, Readiness};
use confab_runtime::db;
use confab_runtime::jetstream::{self, durable_consumer_config};
use confab_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

pub use config::PersisterConfig;
use worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("jetstream: {0}")]
    JetStream(#[from] jetstream::Error),
    #[error("cannot consume: {0}")]
    Consume(String),
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
    let db = db::pool(&config.common)?;
    let js = jetstream::connect(
        &config.common.nats_url,
        "confab-persister",
        &config.common.stream,
    )
    .await?;
    let consumer = jetstream::durable_consumer(
        &js,
        durable_consumer_config(
            &config.consumer,
            js.subjects.all_events(),
            &config.common.stream,
            config.max_ack_pending,
        ),
    )
    .await?;
    let readiness = {
        let (db, nats) = (db.clone(), js.client.clone());
        Readiness::default()
            .with("mysql", move || {
                let db = db.clone();
                async move { db::ping(&db).await }
            })
            .with("nats", move || {
                let ok = jetstream::connected(&nats);
                async move { ok }
            })
    };
    let admin = tokio::spawn(admin::serve(admin_listener, readiness, shutdown.wait()));
    let worker = Worker { db, js: js.clone() };

    let messages = consumer
        .stream()
        .max_messages_per_batch(config.batch_size)
        .messages()
        .await
        .map_err(|e| Error::Consume(e.to_string()))?;
    let batches = messages.chunks_timeout(config.batch_size, config.batch_wait);
    tokio::pin!(batches);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    tracing::info!(consumer = %config.consumer, "persister consuming");
    let outcome = loop {
        tokio::select! {
            biased;
            () = &mut stop => break Ok(()),
            next = batches.next() => {
                let Some(items) = next else {
                    break Err(Error::Consume("message stream ended".into()));
                };
                let mut ok = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Ok(message) => ok.push(message),
                        Err(error) => tracing::warn!(%error, "pull consumer error"),
                    }
                }
                if !ok.is_empty() {
                    worker.process(ok).await;
                }
            }
        }
    };
    if let Err(error) = js.client.flush().await {
        tracing::warn!(%error, "nats flush on shutdown failed");
    }
    match admin.await {
        Ok(result) => result?,
        Err(error) => tracing::error!(%error, "admin server task failed"),
    }
    tracing::info!("persister stopped");
    outcome
}
