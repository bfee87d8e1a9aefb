//! One step of the persister: a delivered batch in, rows committed and events acked out.
//!
//! Acks happen only after the transaction committed. A batch the database rejects is split so the
//! one event it cannot apply is dead-lettered and the others still land; a batch that fails for a
//! transient reason is handed back (nak with backoff) whole, until its deliveries run out.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use confab_core::event::headers;
use confab_core::Envelope;
use confab_runtime::jetstream::JetStream;
use confab_runtime::metrics;
use sqlx::MySqlPool;

use crate::batch::{self, Sequenced};
use crate::dead_letter;
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
            let (stream_sequence, deliveries) = message
                .info()
                .map(|i| (i.stream_sequence, i.delivered))
                .unwrap_or_default();
            let kind = message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::EVENT_TYPE))
                .map_or("unknown", |v| known_kind(v.as_str()));
            metrics::EVENTS_CONSUMED
                .with_label_values(&[SERVICE, kind])
                .inc();
            if deliveries > 1 {
                metrics::EVENTS_REDELIVERED
                    .with_label_values(&[SERVICE])
                    .inc();
            }
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
                for message in &delivered {
                    self.failed(message, clone_kind(&error)).await;
                }
            }
        }
    }

    async fn apply(&self, events: &[Sequenced]) -> Result<(), StoreError> {
        let plan = batch::plan(events);
        let mut attempt = 1;
        loop {
            match store::apply(&self.db, &plan).await {
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
        let now = Utc::now();
        for e in events {
            let lag = (now - e.envelope.occurred_at)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e6;
            metrics::PERSISTENCE_LAG
                .with_label_values(&[e.envelope.event.kind().as_str()])
                .observe(lag.max(0.0));
        }
        for m in messages {
            tracing::debug!(
                trace_id = trace_id(m).unwrap_or_default(),
                "event persisted"
            );
        }
        let acks = futures::future::join_all(messages.iter().map(|m| m.ack())).await;
        let failed = acks.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            // Redelivery of a committed event is harmless: the upserts are idempotent.
            tracing::warn!(failed, "some acks failed; those events will be redelivered");
        }
        metrics::EVENTS_ACKED
            .with_label_values(&[SERVICE])
            .inc_by((acks.len() - failed) as u64);
    }

    /// An event that could not be applied: dead-letter it if it never can be (or has used all
    /// its deliveries), otherwise hand it back with a backoff.
    async fn failed(&self, message: &jetstream::Message, error: StoreError) {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or_default();
        match error {
            StoreError::Permanent(error) => {
                self.dead_letter(message, "rejected", &error.to_string())
                    .await;
            }
            StoreError::Transient(error) if deliveries >= self.js.config.max_deliver => {
                self.dead_letter(message, "exhausted", &error.to_string())
                    .await;
            }
            StoreError::Transient(error) => {
                let backoff = Duration::from_millis(250 * 2u64.pow(deliveries.clamp(0, 6) as u32));
                tracing::warn!(%error, deliveries, ?backoff, "event handed back for redelivery");
                let _ = message.ack_with(AckKind::Nak(Some(backoff))).await;
            }
        }
    }

    async fn dead_letter(&self, message: &jetstream::Message, class: &'static str, reason: &str) {
        dead_letter::send(
            &self.js.context,
            &self.js.subjects,
            SERVICE,
            message,
            class,
            reason,
        )
        .await;
    }
}

/// Event type label: only known values, so a hostile header cannot grow the label set.
fn known_kind(value: &str) -> &'static str {
    match value {
        "chat.created" => "chat.created",
        "message.created" => "message.created",
        "message.updated" => "message.updated",
        _ => "unknown",
    }
}

fn trace_id(message: &jetstream::Message) -> Option<String> {
    let value = message.headers.as_ref()?.get(headers::TRACEPARENT)?;
    confab_core::trace::TraceParent::parse(value.as_str()).map(|t| t.trace_id)
}

fn clone_kind(error: &StoreError) -> StoreError {
    // sqlx errors are not Clone; keep the class and the text.
    let text = sqlx::Error::Protocol(error.to_string());
    match error {
        StoreError::Transient(_) => StoreError::Transient(text),
        StoreError::Permanent(_) => StoreError::Permanent(text),
    }
}
