//! One step of the persister: a delivered batch in, rows committed and events acked out.
//!
//! Acks happen only after the transaction committed. A batch the database rejects is split so the
//! one event it cannot apply is dead-lettered and the others still land; a batch that fails for a
//! transient reason is handed back (nak with backoff) whole, until its deliveries run out.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use confab_core::Envelope;
use confab_runtime::jetstream::JetStream;
use confab_runtime::{consume, dead_letter, metrics};
use sqlx::MySqlPool;

use crate::batch::{self, Sequenced};
use crate::store::{self, StoreError};

pub const SERVICE: &str = "persister";

/// Attempts of one transaction before the batch is handed back (deadlocks, lock waits).
const TX_ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub struct Worker {
    pub db: MySqlPool,
    pub js: JetStream,
}

impl Worker {
    /// Applies and acknowledges one delivered batch.
    #[tracing::instrument(level = "debug", skip_all, fields(size = messages.len()))]
    pub async fn process(&self, messages: Vec<jetstream::Message>) {
        let mut events = Vec::with_capacity(messages.len());
        let mut delivered = Vec::with_capacity(messages.len());
        for message in messages {
            let (stream_sequence, _) = consume::observe_delivery(SERVICE, &message);
            match Envelope::decode(&message.payload) {
                Ok(envelope) => {
                    events.push(Sequenced {
                        stream_sequence,
                        envelope,
                    });
                    delivered.push(message);
                }
                Err(error) => {
                    self.dead_letter(&message, "undecodable", &error.to_string())
                        .await;
                }
            }
        }
        if events.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.apply(&events).await {
            Ok(()) => self.committed(&events, &delivered, started).await,
            Err(StoreError::Permanent(error)) if events.len() > 1 => {
                tracing::warn!(%error, "batch rejected; applying its events one by one");
                for (event, message) in events.into_iter().zip(delivered) {
                    let one = [event];
                    let started = Instant::now();
                    match self.apply(&one).await {
                        Ok(()) => self.committed(&one, &[message], started).await,
                        Err(error) => self.failed(&message, error).await,
                    }
                }
            }
            Err(error) => {
                metrics::BATCH_DURATION
                    .with_label_values(&[SERVICE, "error"])
                    .observe(started.elapsed().as_secs_f64());
                let text = error.to_string();
                for message in &delivered {
                    match &error {
                        StoreError::Permanent(_) => {
                            self.dead_letter(message, "rejected", &text).await;
                        }
                        StoreError::Transient(_) => {
                            consume::hand_back(&self.js, SERVICE, message, &text).await;
                        }
                    }
                }
            }
        }
    }

    async fn apply(&self, events: &[Sequenced]) -> Result<(), StoreError> {
        let plan = batch::plan(events);
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let result = store::apply(&self.db, &plan).await;
            confab_runtime::metrics::observe_mysql("persist_batch", started);
            match result {
                Err(StoreError::Transient(error)) if attempt < TX_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "transaction failed, retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn committed(
        &self,
        events: &[Sequenced],
        messages: &[jetstream::Message],
        started: Instant,
    ) {
        metrics::BATCH_DURATION
            .with_label_values(&[SERVICE, "ok"])
            .observe(started.elapsed().as_secs_f64());
        metrics::BATCH_SIZE
            .with_label_values(&[SERVICE])
            .observe(events.len() as f64);
        for e in events {
            let kind = e.envelope.event.kind().as_str();
            metrics::observe_since(&metrics::PERSISTENCE_LAG, kind, e.envelope.occurred_at);
        }
        for m in messages {
            tracing::debug!(
                trace_id = consume::trace_id(m).unwrap_or_default(),
                "event persisted"
            );
        }
        consume::ack_all(SERVICE, messages).await;
    }

    /// An event that could not be applied: dead-letter it if it never can be, otherwise hand it
    /// back with a backoff (dead-lettered once its deliveries are used up).
    async fn failed(&self, message: &jetstream::Message, error: StoreError) {
        match error {
            StoreError::Permanent(error) => {
                self.dead_letter(message, "rejected", &error.to_string())
                    .await;
            }
            StoreError::Transient(error) => {
                consume::hand_back(&self.js, SERVICE, message, &error.to_string()).await;
            }
        }
    }

    async fn dead_letter(&self, message: &jetstream::Message, class: &'static str, reason: &str) {
        dead_letter::send(&self.js, SERVICE, message, class, reason).await;
    }
}
