//! Publishing events to JetStream and confirming they are stored.
//!
//! A `201` is only sent after the stream acknowledged the event. Publishes carry a dedup id
//! ([`confab_core::Envelope::dedup_id`]); a duplicate acknowledgement is resolved by reading the
//! stored event: our own earlier attempt is success, anyone else's means the number was handed out
//! twice and the caller takes another ([`PublishOutcome::Collision`]).

use std::time::Instant;

use async_nats::HeaderMap;
use confab_core::event::headers;
use confab_core::sequence::{classify_publish, PublishOutcome};
use confab_core::trace::TraceParent;
use confab_core::Envelope;
use confab_runtime::jetstream::JetStream;
use confab_runtime::metrics;

use crate::error::{ApiError, Result};

/// Attempts per publish: one retry covers a lost acknowledgement, and is safe thanks to dedup.
const ATTEMPTS: usize = 2;

#[derive(Clone)]
pub struct Publisher {
    js: JetStream,
}

impl Publisher {
    pub fn new(js: JetStream) -> Self {
        Self { js }
    }

    pub fn jetstream(&self) -> &JetStream {
        &self.js
    }

    #[tracing::instrument(level = "debug", skip_all, fields(event_type = envelope.event.kind().as_str()))]
    pub async fn publish(
        &self,
        envelope: &Envelope,
        trace: &TraceParent,
    ) -> Result<PublishOutcome> {
        let kind = envelope.event.kind().as_str();
        let subject = self.js.subjects.for_event(&envelope.event);
        let mut map = HeaderMap::new();
        map.insert(headers::MSG_ID, envelope.dedup_id().as_str());
        map.insert(headers::EVENT_TYPE, kind);
        map.insert(
            headers::EVENT_VERSION,
            envelope.version.to_string().as_str(),
        );
        map.insert(headers::TRACEPARENT, trace.header_value().as_str());
        let payload = bytes::Bytes::from(envelope.encode());
        let started = Instant::now();
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            let ack = match self
                .js
                .context
                .publish_with_headers(subject.clone(), map.clone(), payload.clone())
                .await
            {
                Ok(future) => future.await,
                Err(error) => Err(error),
            };
            match ack {
                Ok(ack) => {
                    let outcome = if ack.duplicate {
                        let stored = self.stored_event_id(ack.sequence).await?;
                        classify_publish(true, &stored, &envelope.id.to_string())
                    } else {
                        PublishOutcome::Stored
                    };
                    let label = match outcome {
                        PublishOutcome::Stored => "stored",
                        PublishOutcome::RetriedOwn => "retried",
                        PublishOutcome::Collision => "collision",
                    };
                    metrics::EVENTS_PUBLISHED
                        .with_label_values(&[kind, label])
                        .inc();
                    metrics::PUBLISH_DURATION
                        .with_label_values(&[kind])
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(outcome);
                }
                Err(error) => {
                    tracing::warn!(attempt, %error, "publish failed");
                    last_error = error.to_string();
                }
            }
        }
        metrics::EVENTS_PUBLISHED
            .with_label_values(&[kind, "error"])
            .inc();
        Err(ApiError::Unavailable(format!(
            "jetstream publish: {last_error}"
        )))
    }

    /// The envelope id of the event stored at `sequence`. When it cannot be read the outcome of
    /// the publish is unknown, so the request fails (503) rather than guess.
    async fn stored_event_id(&self, sequence: u64) -> Result<String> {
        let message = self.js.events.direct_get(sequence).await.map_err(|error| {
            ApiError::Unavailable(format!("cannot read stored duplicate {sequence}: {error}"))
        })?;
        Envelope::decode(&message.payload)
            .map(|e| e.id.to_string())
            .map_err(|error| ApiError::Unavailable(format!("stored duplicate unreadable: {error}")))
    }

    /// The highest number in flight on a creation subject: the last event stored on it.
    /// Concurrent publishes may be stored slightly out of order; the duplicate window catches
    /// what this misses.
    pub async fn last_number_on(&self, subject: &str) -> Result<Option<u64>> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .js
            .events
            .get_last_raw_message_by_subject(subject)
            .await
        {
            Ok(message) => {
                Ok(Envelope::decode(&message.payload)
                    .ok()
                    .and_then(|e| match e.event {
                        confab_core::Event::ChatCreated(c) => Some(c.number),
                        confab_core::Event::MessageCreated(m) => Some(m.number),
                        confab_core::Event::MessageUpdated(_) => None,
                    }))
            }
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(ApiError::Unavailable(format!(
                "jetstream last message lookup: {error}"
            ))),
        }
    }
}
