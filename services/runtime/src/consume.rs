//! What every JetStream consumer service shares: the batching loop, delivery bookkeeping, acks
//! after success, and handing failures back with backoff or to the dead-letter stream.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use confab_core::event::headers;
use tokio_stream::StreamExt;
use tracing::Instrument;

use crate::jetstream::JetStream;
use crate::{dead_letter, metrics};

/// How often [`export_pending`] asks the server for the consumer's backlog.
const PENDING_INTERVAL: Duration = Duration::from_secs(5);

/// Exports the consumer's backlog (not yet delivered, and delivered but unacknowledged) as
/// gauges, every `interval`, for as long as it runs: [`run_batches`] polls it while it waits
/// for the next batch, so every consumer service exports its backlog. A failed query keeps the
/// last values.
async fn export_pending(mut consumer: PullConsumer, service: &'static str, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        match tokio::time::timeout(interval, consumer.info()).await {
            Ok(Ok(info)) => {
                let labels = [service, info.name.as_str()];
                metrics::CONSUMER_PENDING
                    .with_label_values(&labels)
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                metrics::CONSUMER_ACK_PENDING
                    .with_label_values(&labels)
                    .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
            }
            Ok(Err(error)) => tracing::debug!(%error, "consumer info failed"),
            Err(_) => tracing::debug!("consumer info timed out"),
        }
    }
}

/// Pulls messages in batches of up to `batch_size`, waiting at most `batch_wait` for a batch to
/// fill, and hands each batch to `handle` — one at a time, so a batch is finished before
/// shutdown is honoured. Returns when `shutdown` resolves, or with an error if the subscription
/// ends by itself.
pub async fn run_batches<F, Fut>(
    consumer: &PullConsumer,
    service: &'static str,
    batch_size: usize,
    batch_wait: Duration,
    shutdown: impl Future<Output = ()>,
    mut handle: F,
) -> Result<(), String>
where
    F: FnMut(Vec<jetstream::Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    let messages = consumer
        .stream()
        .max_messages_per_batch(batch_size)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let batches = messages.chunks_timeout(batch_size, batch_wait);
    tokio::pin!(batches);
    tokio::pin!(shutdown);
    let pending = export_pending(consumer.clone(), service, PENDING_INTERVAL);
    tokio::pin!(pending);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            () = &mut pending => {}
            next = batches.next() => {
                let Some(items) = next else {
                    return Err("message stream ended".into());
                };
                let mut ok = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Ok(message) => ok.push(message),
                        Err(error) => tracing::warn!(%error, "pull consumer error"),
                    }
                }
                if !ok.is_empty() {
                    let span = crate::trace::batch_span(service, &ok);
                    handle(ok).instrument(span).await;
                }
            }
        }
    }
}

/// Records a delivery in the metrics; returns its stream sequence and delivery count.
pub fn observe_delivery(service: &'static str, message: &jetstream::Message) -> (u64, i64) {
    let (sequence, deliveries) = message
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or_default();
    let kind = message
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::EVENT_TYPE))
        .map_or("unknown", |v| known_kind(v.as_str()));
    metrics::EVENTS_CONSUMED
        .with_label_values(&[service, kind])
        .inc();
    if deliveries > 1 {
        metrics::EVENTS_REDELIVERED
            .with_label_values(&[service])
            .inc();
    }
    (sequence, deliveries)
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

/// Acks messages whose effects are committed. A failed ack only means a harmless redelivery.
pub async fn ack_all(service: &'static str, messages: &[jetstream::Message]) {
    let acks = futures::future::join_all(messages.iter().map(|m| m.ack())).await;
    let failed = acks.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        tracing::warn!(
            service,
            failed,
            "some acks failed; those events will be redelivered"
        );
    }
    metrics::EVENTS_ACKED
        .with_label_values(&[service])
        .inc_by((acks.len() - failed) as u64);
}

/// Longest pause before a failed delivery comes back.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A delivery that failed for a reason that may pass (the database or the search backend is
/// down): hand it back with exponential backoff capped at 30 s. With the default
/// `CONFAB_MAX_DELIVER` of 1000 that rides out about eight hours of outage; only then is the event
/// dead-lettered as `exhausted` (still stored in the dead-letter stream, for replay).
pub async fn hand_back(
    js: &JetStream,
    service: &'static str,
    message: &jetstream::Message,
    error: &str,
) {
    let deliveries = message.info().map(|i| i.delivered).unwrap_or_default();
    if deliveries >= js.config.max_deliver {
        dead_letter::send(js, service, message, "exhausted", error).await;
        return;
    }
    let backoff =
        Duration::from_millis(250 * 2u64.pow(deliveries.clamp(0, 8) as u32)).min(MAX_BACKOFF);
    tracing::warn!(
        service,
        error,
        deliveries,
        ?backoff,
        "event handed back for redelivery"
    );
    let _ = message.ack_with(AckKind::Nak(Some(backoff))).await;
}

/// The trace id of an event's `traceparent` header, for logs.
pub fn trace_id(message: &jetstream::Message) -> Option<String> {
    crate::trace::trace_id(message)
}
