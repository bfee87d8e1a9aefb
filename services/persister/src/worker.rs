//! What the persister does with a delivered batch: rows committed in MySQL, then the Redis
//! sequences raised past the numbers it created ([`confab_runtime::sequence`]); only then does
//! the shared consumer worker ([`confab_runtime::consume`]) ack. A creation event whose number
//! already belongs to another creation event is dead-lettered with reason `number_conflict` (and
//! counted) while the rest of its batch lands. Rejections and transient failures are settled by
//! the consumer worker (split the batch, dead-letter, hand back).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use confab_core::keys::Keys;
use confab_core::Envelope;
use confab_runtime::backoff::Backoff;
use confab_runtime::cache::Redis;
use confab_runtime::consume::{self, Delivery, Failure, Handler, Refusal};
use confab_runtime::{metrics, sequence};
use sqlx::MySqlPool;

use crate::batch::{self, SequenceOf, Sequenced};
use crate::metrics::Metrics;
use crate::store::{self, StoreError};

pub const SERVICE: &str = "persister";

/// Attempts of one transaction before the batch is handed back (deadlocks, lock waits).
const TX_ATTEMPTS: u32 = 3;
const TX_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));

/// Rounds of "dead-letter the conflicting creations, apply the rest" for one batch.
const CONFLICT_ROUNDS: usize = 3;

#[derive(Clone)]
pub struct Worker {
    pub db: MySqlPool,
    pub redis: Redis,
    /// `CONFAB_REDIS_WAIT_REPLICAS`: replicas that must hold a raise before its events are acked.
    pub wait_replicas: u32,
    /// How long an application stays marked changed after a commit that edited or deleted its
    /// items: the read replica's allowed lag and a margin.
    pub change_mark: Duration,
    pub keys: Keys,
    pub consume: consume::Context,
    pub metrics: Metrics,
}

impl Handler for Worker {
    type Item = Sequenced;

    fn decode(
        &self,
        message: &jetstream::Message,
        stream_sequence: u64,
    ) -> Result<Option<Sequenced>, Refusal> {
        let envelope = Envelope::decode(&message.payload).map_err(|e| e.to_string())?;
        consume::refuse_late_creation(
            message,
            &envelope,
            self.consume.js.config.creation_horizon(),
        )?;
        Ok(Some(Sequenced {
            stream_sequence,
            envelope,
        }))
    }

    async fn apply(&self, batch: &mut Vec<Delivery<Sequenced>>) -> Result<(), Failure> {
        for _ in 0..CONFLICT_ROUNDS {
            if batch.is_empty() {
                return Ok(());
            }
            match self.apply_once(batch).await {
                Err(StoreError::Conflicts(sequences)) => {
                    self.refuse_conflicts(batch, &sequences).await;
                }
                Ok(()) => return Ok(()),
                Err(StoreError::Permanent(error)) => {
                    return Err(Failure::Permanent(error.to_string()))
                }
                Err(error) => return Err(Failure::Transient(error.to_string())),
            }
        }
        // Conflicts that keep appearing round after round: hand back, the next delivery sorts
        // them out.
        Err(Failure::Transient(
            "creation conflicts kept appearing".into(),
        ))
    }

    fn applied(&self, batch: &[Delivery<Sequenced>]) {
        for delivery in batch {
            let envelope = &delivery.item.envelope;
            let kind = envelope.event.kind().as_str();
            metrics::observe_since(&self.metrics.persistence_lag, kind, envelope.occurred_at);
            tracing::debug!(
                trace_id = consume::trace_id(&delivery.message).unwrap_or_default(),
                "event persisted"
            );
        }
    }
}

impl Worker {
    /// Dead-letters the creation events at `sequences` (their numbers belong to other creation
    /// events) and takes them out of the batch.
    async fn refuse_conflicts(&self, batch: &mut Vec<Delivery<Sequenced>>, sequences: &[u64]) {
        let (refused, rest): (Vec<_>, Vec<_>) = std::mem::take(batch)
            .into_iter()
            .partition(|d| sequences.contains(&d.item.stream_sequence));
        *batch = rest;
        for delivery in refused {
            let kind = match delivery.item.envelope.event {
                confab_core::Event::ChatCreated(_) => "chat",
                _ => "message",
            };
            self.metrics
                .number_conflicts
                .with_label_values(&[kind])
                .inc();
            tracing::error!(
                kind,
                stream_sequence = delivery.item.stream_sequence,
                "a creation event claims a number another creation event made; dead-lettered"
            );
            let reason = "number_conflict: another creation event already made this number's row";
            self.consume
                .dead_letter(&delivery.message, "number_conflict", reason)
                .await;
        }
    }

    /// One transaction (retried on deadlocks and lock waits), then the sequence raise.
    async fn apply_once(&self, batch: &[Delivery<Sequenced>]) -> Result<(), StoreError> {
        let plan = batch::plan(batch.iter().map(|d| &d.item));
        if !plan.conflicts.is_empty() {
            return Err(StoreError::Conflicts(plan.conflicts));
        }
        let changed = plan.changed_applications();
        let mut attempt = 1;
        loop {
            // Marked before the commit (a replica must not answer for these applications once
            // the primary may show the change) and again after it (the mark then lasts the
            // replica's allowed lag from the commit on).
            let mut result = self.mark_changed(&changed).await;
            if result.is_ok() {
                let started = Instant::now();
                result = store::apply(&self.db, &plan).await;
                self.metrics.dependencies.mysql("persist_batch", started);
            }
            if result.is_ok() {
                result = self.mark_changed(&changed).await;
            }
            if result.is_ok() {
                result = self.clear_deletion_marks(&plan).await;
            }
            if result.is_ok() {
                result = self.raise_sequences(&plan).await;
            }
            match result {
                Err(
                    error @ (StoreError::Transient(_)
                    | StoreError::Sequence(_)
                    | StoreError::Marking(_)),
                ) if attempt < TX_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "transaction failed, retrying");
                    tokio::time::sleep(TX_RETRY.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Marks `applications` changed for [`Worker::change_mark`] (`confab_core::keys::Keys::recent_change`).
    async fn mark_changed(&self, applications: &[u64]) -> Result<(), StoreError> {
        if applications.is_empty() {
            return Ok(());
        }
        let marks = applications
            .iter()
            .map(|app| {
                let key = self.keys.recent_change(*app);
                let mut set = redis::cmd("SET");
                set.arg(&key)
                    .arg(1u8)
                    .arg("PX")
                    .arg(u64::try_from(self.change_mark.as_millis()).unwrap_or(u64::MAX));
                (key, set)
            })
            .collect();
        let started = Instant::now();
        let result = self.redis.query_grouped::<()>(marks).await;
        self.metrics.dependencies.redis("mark_changed", started);
        result.map(drop).map_err(StoreError::Marking)
    }

    /// Removes the api's deletion marks of the messages this batch deleted: MySQL shows the
    /// deletions now (`confab_core::keys::Keys::message_deleted`).
    async fn clear_deletion_marks(&self, plan: &batch::Plan) -> Result<(), StoreError> {
        let marks: Vec<(String, redis::Cmd)> = plan
            .messages
            .iter()
            .filter(|m| m.deleted)
            .map(|m| {
                let key = self
                    .keys
                    .message_deleted(m.chat.application_id, m.chat.number, m.number);
                let mut del = redis::cmd("DEL");
                del.arg(&key);
                (key, del)
            })
            .collect();
        if marks.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.redis.query_grouped::<u64>(marks).await;
        self.metrics
            .dependencies
            .redis("clear_deletion_marks", started);
        result.map(drop).map_err(StoreError::Marking)
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
        let result = sequence::raise(&self.redis, &raises, self.wait_replicas).await;
        self.metrics.dependencies.redis("raise_sequences", started);
        result.map(drop).map_err(StoreError::Sequence)
    }
}
