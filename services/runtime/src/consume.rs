//! The consumer worker every JetStream consumer service runs: pull batches, decode each event
//! (dead-letter what cannot be decoded), apply the batch, and then
//! - ack it after success,
//! - on a rejection of a batch of several events, apply them one by one, so only the event that
//!   can never be applied is dead-lettered,
//! - on a failure that may pass (the database or the search backend is down), hand every event
//!   back with a jittered backoff, dead-lettered as `exhausted` once `CONFAB_MAX_DELIVER`
//!   deliveries are used up.
//!
//! A service supplies only what is its own, as a [`Handler`]: how to decode an event into a work
//! item and how to apply a batch of them.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::jetstream::JetStream;
use crate::{dead_letter, metrics};

/// How often [`export_pending`] asks the server for the consumer's backlog.
const PENDING_INTERVAL: Duration = Duration::from_secs(5);

/// Redelivery delays of handed-back events: from 0.5 s, doubling, capped at 30 s, jittered (a
/// capped delay is 15–30 s, 22.5 s on average). With the default `CONFAB_MAX_DELIVER` of 1000
/// that rides out about six hours of outage before an event is dead-lettered as `exhausted`
/// (still stored in the dead-letter stream, for replay).
pub const REDELIVERY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// Why a batch (or one event) could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No retry can fix it: dead-lettered as `rejected` (after a batch is split to find it).
    Permanent(String),
    /// It may pass: handed back for redelivery.
    Transient(String),
}

/// Why a delivered event is dead-lettered before it is applied: the `reason` label
/// (`undecodable`, or `late` for a creation stored past its horizon) and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub class: &'static str,
    pub reason: String,
}

impl From<String> for Refusal {
    /// An event that cannot be decoded.
    fn from(reason: String) -> Self {
        Self {
            class: "undecodable",
            reason,
        }
    }
}

/// Refuses a creation event stored more than `horizon` after it was made: the api gave up on it
/// (answered 503) and its number may since have gone to another creation, so no consumer may
/// apply it ([`confab_core::sequence::creation_is_late`]). Other events pass.
pub fn refuse_late_creation(
    message: &jetstream::Message,
    envelope: &confab_core::Envelope,
    horizon: Duration,
) -> Result<(), Refusal> {
    if envelope.event.created_number().is_none() {
        return Ok(());
    }
    let Ok(info) = message.info() else {
        return Ok(());
    };
    let stored = confab_core::time::from_unix_nanos(info.published.unix_timestamp_nanos());
    if confab_core::sequence::creation_is_late(envelope.occurred_at, stored, horizon) {
        return Err(Refusal {
            class: "late",
            reason: format!(
                "stored {} ms after it was made, past the {} ms horizon: its request was answered 503",
                (stored - envelope.occurred_at).num_milliseconds(),
                horizon.as_millis()
            ),
        });
    }
    Ok(())
}

/// One delivered event and the work item decoded from it.
pub struct Delivery<T> {
    pub item: T,
    pub message: jetstream::Message,
}

/// What a consumer service does with its events.
pub trait Handler: Send + Sync {
    type Item: Send + Sync;

    /// The work item of a delivered event (`stream_sequence` is its version): `Ok(None)` when
    /// there is nothing to do (it is acked), `Err` when it cannot be applied at all (dead-lettered
    /// with the refusal's class: `undecodable`, `late`).
    fn decode(
        &self,
        message: &jetstream::Message,
        stream_sequence: u64,
    ) -> Result<Option<Self::Item>, Refusal>;

    /// Applies a batch. It may take deliveries out of `batch` that it settled itself (acked or
    /// dead-lettered through the [`Context`]); the rest are acked after `Ok`.
    fn apply(
        &self,
        batch: &mut Vec<Delivery<Self::Item>>,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Called after a successful apply, before the acks (lag metrics, logs).
    fn applied(&self, batch: &[Delivery<Self::Item>]);
}

/// The JetStream context and metrics a consumer settles its deliveries with.
#[derive(Clone)]
pub struct Context {
    pub js: JetStream,
    pub metrics: metrics::Consumer,
}

impl Context {
    /// Records a delivery in the metrics; returns its stream sequence and delivery count.
    pub fn observe(&self, message: &jetstream::Message) -> (u64, i64) {
        let (sequence, deliveries) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or_default();
        let kind = kind_of(&message.subject);
        let service = self.metrics.service;
        self.metrics
            .consumed
            .with_label_values(&[service, kind])
            .inc();
        if deliveries > 1 {
            self.metrics.redelivered.with_label_values(&[service]).inc();
        }
        (sequence, deliveries)
    }

    /// Acks messages whose effects are committed. A failed ack only means a harmless redelivery.
    pub async fn ack_all<'a>(&self, messages: impl IntoIterator<Item = &'a jetstream::Message>) {
        let service = self.metrics.service;
        let acks = futures::future::join_all(messages.into_iter().map(|m| m.ack())).await;
        let failed = acks.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            tracing::warn!(
                service,
                failed,
                "some acks failed; those events will be redelivered"
            );
        }
        self.metrics
            .acked
            .with_label_values(&[service])
            .inc_by((acks.len() - failed) as u64);
    }

    /// Hands a delivery that failed for a reason that may pass back for redelivery after the
    /// [`REDELIVERY`] backoff of its delivery count; dead-letters it as `exhausted` once its
    /// deliveries are used up.
    pub async fn hand_back(&self, message: &jetstream::Message, error: &str) {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or_default();
        if deliveries >= self.js.config.max_deliver {
            self.dead_letter(message, "exhausted", error).await;
            return;
        }
        let backoff = REDELIVERY.delay(u32::try_from(deliveries).unwrap_or(1));
        tracing::warn!(
            service = self.metrics.service,
            error,
            deliveries,
            ?backoff,
            "event handed back for redelivery"
        );
        let _ = message.ack_with(AckKind::Nak(Some(backoff))).await;
    }

    /// Copies `message` to the dead-letter stream with `reason` and terminates it.
    pub async fn dead_letter(
        &self,
        message: &jetstream::Message,
        reason_class: &'static str,
        reason: &str,
    ) {
        dead_letter::send(&self.js, &self.metrics, message, reason_class, reason).await;
    }

    async fn settle_failure<T>(&self, batch: &[Delivery<T>], failure: &Failure) {
        for delivery in batch {
            match failure {
                Failure::Permanent(reason) => {
                    self.dead_letter(&delivery.message, "rejected", reason)
                        .await;
                }
                Failure::Transient(reason) => self.hand_back(&delivery.message, reason).await,
            }
        }
    }

    async fn settle_success<H: Handler>(
        &self,
        handler: &H,
        batch: &[Delivery<H::Item>],
        started: Instant,
    ) {
        if batch.is_empty() {
            return;
        }
        self.metrics.batch("ok", started);
        self.metrics
            .batch_size
            .with_label_values(&[self.metrics.service])
            .observe(batch.len() as f64);
        handler.applied(batch);
        self.ack_all(batch.iter().map(|d| &d.message)).await;
    }

    /// Decodes, applies and settles one delivered batch.
    pub async fn process<H: Handler>(&self, handler: &H, messages: Vec<jetstream::Message>) {
        let mut batch = Vec::with_capacity(messages.len());
        for message in messages {
            let (stream_sequence, _) = self.observe(&message);
            match handler.decode(&message, stream_sequence) {
                Ok(Some(item)) => batch.push(Delivery { item, message }),
                Ok(None) => self.ack_all(&[message]).await,
                Err(refusal) => {
                    self.dead_letter(&message, refusal.class, &refusal.reason)
                        .await;
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        match handler.apply(&mut batch).await {
            Ok(()) => self.settle_success(handler, &batch, started).await,
            Err(Failure::Permanent(reason)) if batch.len() > 1 => {
                self.metrics.batch("error", started);
                tracing::warn!(
                    service = self.metrics.service,
                    %reason,
                    "batch rejected; applying its events one by one"
                );
                for delivery in batch {
                    let mut one = vec![delivery];
                    let started = Instant::now();
                    match handler.apply(&mut one).await {
                        Ok(()) => self.settle_success(handler, &one, started).await,
                        Err(failure) => {
                            self.metrics.batch("error", started);
                            self.settle_failure(&one, &failure).await;
                        }
                    }
                }
            }
            Err(failure) => {
                self.metrics.batch("error", started);
                self.settle_failure(&batch, &failure).await;
            }
        }
    }

    /// Exports the consumer's backlog (not yet delivered, and delivered but unacknowledged) as
    /// gauges, every `interval`, for as long as it runs. A failed query keeps the last values.
    async fn export_pending(&self, mut consumer: PullConsumer, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            match tokio::time::timeout(interval, consumer.info()).await {
                Ok(Ok(info)) => {
                    let labels = [self.metrics.service, info.name.as_str()];
                    self.metrics
                        .pending
                        .with_label_values(&labels)
                        .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                    self.metrics
                        .ack_pending
                        .with_label_values(&labels)
                        .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
                }
                Ok(Err(error)) => tracing::debug!(%error, "consumer info failed"),
                Err(_) => tracing::debug!("consumer info timed out"),
            }
        }
    }

    /// Pulls batches of up to `batch_size` events and [`process`](Self::process)es each — one
    /// at a time — while exporting the consumer's backlog; returns when `shutdown` resolves.
    /// After a pull that did not fill a batch, the next one waits `batch_wait`, so events
    /// gather into batches (one transaction each) under a steady load and an idle consumer asks
    /// the server only every `batch_wait`. A failed pull (NATS away, the consumer being
    /// recreated) is retried after a backoff for as long as it takes: the work waits in the
    /// stream.
    ///
    /// Each pull is one request the server answers at once with what it has (`no_wait`), and
    /// every event it sends is processed before the next pull or before shutdown is honoured.
    /// Not a prefetching subscription: one holds events the process never sees on its way out,
    /// which the server redelivers to another replica only after the ack wait (30 s by
    /// default), a stall in persistence on every restart. Not a request that waits on the
    /// server either: nats-server 2.9 sometimes drops a waiting request of a filtered
    /// consumer without answering it (measured here: a pull then stalls until the client's own
    /// backstop, 5 s later).
    pub async fn run<H: Handler>(
        &self,
        consumer: &PullConsumer,
        handler: &H,
        batch_size: usize,
        batch_wait: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let pending = self.export_pending(consumer.clone(), PENDING_INTERVAL);
        tokio::pin!(pending);
        let mut failures = 0u32;
        loop {
            // Not while a pull is in flight: what the server sends is processed first.
            if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                return;
            }
            let pulled = tokio::select! {
                biased;
                pulled = pull(consumer, batch_size) => pulled,
                () = &mut pending => continue,
            };
            let pause = match pulled {
                Ok(messages) => {
                    failures = 0;
                    let full = messages.len() >= batch_size;
                    if !messages.is_empty() {
                        let span = crate::trace::batch_span(self.metrics.service, &messages);
                        // Boxed: the batch's future (decode, apply, settle) is large, and the
                        // loop around it lives for the whole run.
                        Box::pin(self.process(handler, messages))
                            .instrument(span)
                            .await;
                    }
                    if full {
                        continue;
                    }
                    batch_wait
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, failures, "pull request failed, retrying");
                    PULL_RETRY.delay(failures)
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The pause after a failed pull request, growing with consecutive failures.
const PULL_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// How long a pull may take before it is abandoned. The server answers a `no_wait` request at
/// once; this only bounds an answer that never comes (events it may still send then wait for
/// the ack wait). The request itself carries no expiry: with one (2 s), a persister's stop once
/// waited those 2 s, nats-server 2.9 holding the `no_wait` request until it expired.
const PULL_DEADLINE: Duration = Duration::from_secs(5);

/// One pull request: the events the server has for this consumer now, up to `batch_size`. Every
/// event the server sent is in the answer (an error item ends it early, after what came before).
async fn pull(
    consumer: &PullConsumer,
    batch_size: usize,
) -> Result<Vec<jetstream::Message>, String> {
    let mut messages = Vec::new();
    let answer = tokio::time::timeout(PULL_DEADLINE, async {
        let mut batch = consumer
            .fetch()
            .max_messages(batch_size)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        while let Some(item) = batch.next().await {
            match item {
                Ok(message) => messages.push(message),
                Err(error) if messages.is_empty() => return Err(error.to_string()),
                Err(error) => {
                    tracing::warn!(%error, "pull request ended early");
                    break;
                }
            }
        }
        Ok(())
    })
    .await;
    match answer {
        Ok(Ok(())) => Ok(messages),
        Ok(Err(error)) => Err(error),
        Err(_) if messages.is_empty() => Err("no answer to a pull request".into()),
        Err(_) => {
            tracing::warn!("pull request unanswered after its events");
            Ok(messages)
        }
    }
}

/// Event type label, read from the subject (`{prefix}.v1.{entity}.{action}.…`, which every
/// event has, so no header repeats it): only known values, so a stray subject cannot grow the
/// label set.
fn kind_of(subject: &str) -> &'static str {
    let Some((_, rest)) = subject.split_once(".v1.") else {
        return "unknown";
    };
    let mut parts = rest.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some("chat"), Some("created")) => "chat.created",
        (Some("chat"), Some("deleted")) => "chat.deleted",
        (Some("message"), Some("created")) => "message.created",
        (Some("message"), Some("updated")) => "message.updated",
        (Some("message"), Some("deleted")) => "message.deleted",
        _ => "unknown",
    }
}

/// The trace id of an event's `traceparent` header, for logs.
pub fn trace_id(message: &jetstream::Message) -> Option<String> {
    crate::trace::trace_id(message)
}

#[cfg(test)]
mod tests {
    use confab_core::event::Subjects;

    use super::kind_of;

    #[test]
    fn the_kind_label_comes_from_the_subject_and_stays_within_the_known_set() {
        let s = Subjects::new("confab.eu");
        assert_eq!(kind_of(&s.chat_created(1, 2)), "chat.created");
        assert_eq!(kind_of(&s.chat_deleted(1, 2)), "chat.deleted");
        assert_eq!(kind_of(&s.message_created(1, 2, 3)), "message.created");
        assert_eq!(kind_of(&s.message_updated(1, 2, 3)), "message.updated");
        assert_eq!(kind_of(&s.message_deleted(1, 2, 3)), "message.deleted");
        assert_eq!(kind_of("confab.v1.message.exploded.1.2.3"), "unknown");
        assert_eq!(kind_of("elsewhere.message.created"), "unknown");
    }
}
