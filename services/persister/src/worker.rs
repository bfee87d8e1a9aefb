//! One step of the persister: a delivered batch in, rows committed and events acked out.
//!
//! Acks happen only after the transaction committed and the Redis sequences were raised past the
//! numbers it created ([`confab_runtime::sequence`]). A batch the database rejects is split so the
//! one event it cannot apply is dead-lettered and the others still land; a creation event whose
//! number already belongs to another creation event is dead-lettered with reason
//! `number_conflict` (and counted) while the rest of its batch lands; a batch that fails for a
//! transient reason is handed back (nak with backoff) whole, until its deliveries run out.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use confab_core::keys::Keys;
use confab_core::Envelope;
use confab_runtime::jetstream::JetStream;
use confab_runtime::{consume, dead_letter, metrics, sequence};
use redis::aio::ConnectionManager;
use sqlx::MySqlPool;

use crate::batch::{self, SequenceOf, Sequenced};
use crate::store::{self, StoreError};

pub const SERVICE: &str = "persister";

/// Attempts of one transaction before the batch is handed back (deadlocks, lock waits).
const TX_ATTEMPTS: u32 = 3;

/// Rounds of "dead-letter the conflicting creations, apply the rest" for one batch.
const CONFLICT_ROUNDS: usize = 3;

#[derive(Clone)]
pub struct Worker {
    pub db: MySqlPool,
    pub js: JetStream,
    pub redis: ConnectionManager,
    pub keys: Keys,
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
        let started = Instant::now();
        let mut result = Ok(());
        for _ in 0..CONFLICT_ROUNDS {
            if events.is_empty() {
                return;
            }
            result = self.apply(&events).await;
            let Err(StoreError::Conflicts(sequences)) = &result else {
                break;
            };
            (events, delivered) = self.refuse_conflicts(events, delivered, sequences).await;
        }
        match result {
            Ok(()) => self.committed(&events, &delivered, started).await,
            Err(StoreError::Permanent(error)) if events.len() > 1 => {
                tracing::warn!(%error, "batch rejected; applying its events one by one");
                for (event, message) in events.into_iter().zip(delivered) {
                    let one = [event];
                    let started = Instant::now();
                    match self.apply(&one).await {
                        Ok(()) => self.committed(&one, &[message], started).await,
                        Err(StoreError::Conflicts(sequences)) => {
                            self.refuse_conflicts(Vec::from(one), vec![message], &sequences)
                                .await;
                        }
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
                        // Conflicts that keep appearing round after round: hand back, the next
                        // delivery sorts them out.
                        StoreError::Transient(_)
                        | StoreError::Sequence(_)
                        | StoreError::Conflicts(_) => {
                            consume::hand_back(&self.js, SERVICE, message, &text).await;
                        }
                    }
                }
            }
        }
    }

    /// Dead-letters the creation events at `sequences` (their numbers belong to other creation
    /// events) and returns the rest of the batch.
    async fn refuse_conflicts(
        &self,
        events: Vec<Sequenced>,
        delivered: Vec<jetstream::Message>,
        sequences: &[u64],
    ) -> (Vec<Sequenced>, Vec<jetstream::Message>) {
        let mut rest = (Vec::new(), Vec::new());
        for (event, message) in events.into_iter().zip(delivered) {
            if !sequences.contains(&event.stream_sequence) {
                rest.0.push(event);
                rest.1.push(message);
                continue;
            }
            let kind = match event.envelope.event {
                confab_core::Event::ChatCreated(_) => "chat",
                _ => "message",
            };
            metrics::NUMBER_CONFLICTS.with_label_values(&[kind]).inc();
            tracing::error!(
                kind,
                stream_sequence = event.stream_sequence,
                "a creation event claims a number another creation event made; dead-lettered"
            );
            let reason = "number_conflict: another creation event already made this number's row";
            self.dead_letter(&message, "number_conflict", reason).await;
        }
        rest
    }

    async fn apply(&self, events: &[Sequenced]) -> Result<(), StoreError> {
        let plan = batch::plan(events);
        if !plan.conflicts.is_empty() {
            return Err(StoreError::Conflicts(plan.conflicts));
        }
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let mut result = store::apply(&self.db, &plan).await;
            confab_runtime::metrics::observe_mysql("persist_batch", started);
            if result.is_ok() {
                result = self.raise_sequences(&plan).await;
            }
            match result {
                Err(error @ (StoreError::Transient(_) | StoreError::Sequence(_)))
                    if attempt < TX_ATTEMPTS =>
                {
                    tracing::warn!(%error, attempt, "transaction failed, retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Raises the Redis sequences past the numbers this batch created. Failing here fails the
    /// batch (it is applied again, idempotently, and raised again): an event must not be acked
    /// before its number is safe from being handed out again.
    async fn raise_sequences(&self, plan: &batch::Plan) -> Result<(), StoreError> {
        let raises: Vec<(String, u64)> = plan
            .created_maxima()
            .into_iter()
            .map(|(sequence, number)| {
                let key = match sequence {
                    SequenceOf::Chats(app) => self.keys.chat_sequence(app),
                    SequenceOf::Messages(app, chat) => self.keys.message_sequence(app, chat),
                };
                (key, number)
            })
            .collect();
        let started = Instant::now();
        let result = sequence::raise(&self.redis, &raises).await;
        metrics::observe_redis("raise_sequences", started);
        result.map(drop).map_err(StoreError::Sequence)
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
            other => {
                consume::hand_back(&self.js, SERVICE, message, &other.to_string()).await;
            }
        }
    }

    async fn dead_letter(&self, message: &jetstream::Message, class: &'static str, reason: &str) {
        dead_letter::send(&self.js, SERVICE, message, class, reason).await;
    }
}
