//! Publishing events to JetStream and confirming they are stored.
//!
//! A `201` is only sent after the stream acknowledged the event. Creation events go to a subject
//! of their own (parent, number) with `Nats-Expected-Last-Subject-Sequence: 0`, so the stream
//! stores at most one creation per number. Updates and deletions carry a dedup id instead
//! ([`confab_core::Envelope::dedup_id`]). When the stream answers "that subject already has a
//! message" (or "duplicate"), the stored event is read: our own earlier attempt is success,
//! anyone else's means the number was handed out twice and the caller takes another
//! ([`PublishOutcome::Collision`]).
//!
//! A publish that fails for any other reason (a lost acknowledgement, a reconnect, a stream
//! without a leader during an election) is repeated with jittered backoff until
//! `CONFAB_PUBLISH_DEADLINE_MS`, so a leader election shows as latency rather than as 503s.
//! Repeating is safe: the stream refuses or deduplicates a second copy of the event.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use confab_core::event::headers;
use confab_core::sequence::{classify_publish, PublishOutcome};
use confab_core::Envelope;
use confab_runtime::backoff::Backoff;
use confab_runtime::jetstream::{JetStream, PublishFailure};
use confab_runtime::trace::{HeaderInjector, TraceContext};
use tracing::Instrument;

use crate::error::{ApiError, Result};
use crate::metrics::Metrics;

/// Pauses between publish attempts: from 20 ms, doubling, at most 500 ms, jittered.
const RETRY: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));

#[derive(Clone)]
pub struct Publisher {
    js: JetStream,
    metrics: Metrics,
}

/// One attempt's result, before classification.
enum Attempt {
    /// With the stream sequence of the stored event, when the acknowledgement named it.
    Outcome(PublishOutcome, Option<u64>),
    /// Worth repeating; the text says why.
    Retry(String),
}

impl Publisher {
    pub fn new(js: JetStream, metrics: Metrics) -> Self {
        Self { js, metrics }
    }

    pub fn jetstream(&self) -> &JetStream {
        &self.js
    }

    pub async fn publish(
        &self,
        envelope: &Envelope,
        trace: &TraceContext,
    ) -> Result<PublishOutcome> {
        let event_kind = envelope.event.kind();
        let kind = event_kind.as_str();
        let subject = self.js.subjects.for_event(&envelope.event);
        let mut map = HeaderMap::new();
        if let Some(dedup_id) = envelope.dedup_id() {
            map.insert(headers::MSG_ID, dedup_id.as_str());
        }
        // No type or version header: the subject names the type and the payload carries both.
        // The PRODUCER span of this publish; the event carries its context.
        let span = confab_runtime::trace::publish_span(event_kind, &subject);
        let parent = confab_runtime::trace::continue_trace(&span, Some(trace));
        confab_runtime::trace::inject(&parent, &mut HeaderInjector(&mut map));
        if envelope.event.created_number().is_some() {
            map.insert(headers::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        }
        let payload = bytes::Bytes::from(envelope.encode());
        let started = Instant::now();
        // Counted from the event's `occurred_at`, not from here: a creation acknowledged later
        // than the deadline after it was made must not be answered 201, because consumers refuse
        // one stored past that horizon ([`confab_core::sequence`], rule 4). (An idempotent request
        // writes its record between the two.)
        let age = (chrono::Utc::now() - envelope.occurred_at)
            .to_std()
            .unwrap_or_default();
        let deadline = started + self.js.config.publish_deadline.saturating_sub(age);
        // Already past it (numbering took that long, or a replay came late): sending now could
        // store the event past its horizon, where consumers refuse it, and a timer's slack could
        // still let an attempt answer. Nothing is sent; the request is a 503.
        if age >= self.js.config.publish_deadline {
            self.metrics
                .events_published
                .with_label_values(&[kind, "error"])
                .inc();
            return Err(ApiError::Unavailable(format!(
                "the publish deadline passed before the event could be published ({} ms after \
                 it was made)",
                age.as_millis()
            )));
        }
        let mut attempt = 1u32;
        let retries = async {
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let why = match tokio::time::timeout(
                    remaining.min(self.js.config.publish_timeout),
                    self.attempt(&subject, &map, &payload, envelope),
                )
                .await
                {
                    // Acknowledged after the deadline (a timer's slack): not answered 201. The
                    // event may be stored, within its horizon, and an idempotent retry finds it.
                    Ok(Attempt::Outcome(..)) if Instant::now() > deadline => {
                        "acknowledged after the deadline".to_owned()
                    }
                    Ok(Attempt::Outcome(outcome, sequence)) => {
                        if let Some(sequence) = sequence {
                            tracing::Span::current().record("messaging.message.id", sequence);
                        }
                        let label = match outcome {
                            PublishOutcome::Stored => "stored",
                            PublishOutcome::RetriedOwn => "retried",
                            PublishOutcome::Collision => "collision",
                        };
                        self.metrics
                            .events_published
                            .with_label_values(&[kind, label])
                            .inc();
                        self.metrics
                            .publish_duration
                            .with_label_values(&[kind])
                            .observe(started.elapsed().as_secs_f64());
                        return Ok(outcome);
                    }
                    Ok(Attempt::Retry(why)) => why,
                    Err(_) => "no acknowledgement in time".to_owned(),
                };
                // Jittered: replicas that failed together do not come back together.
                let sleep = RETRY.delay(attempt);
                if Instant::now() + sleep >= deadline {
                    self.metrics
                        .events_published
                        .with_label_values(&[kind, "error"])
                        .inc();
                    return Err(ApiError::Unavailable(format!(
                        "jetstream publish after {attempt} attempts: {why}"
                    )));
                }
                tracing::debug!(attempt, error = %why, "publish failed, repeating");
                self.metrics
                    .publish_retries
                    .with_label_values(&[kind])
                    .inc();
                tokio::time::sleep(sleep).await;
                attempt += 1;
            }
        }
        .instrument(span);
        retries.await
    }

    async fn attempt(
        &self,
        subject: &str,
        map: &HeaderMap,
        payload: &bytes::Bytes,
        envelope: &Envelope,
    ) -> Attempt {
        let ack = confab_runtime::jetstream::publish_acked(
            &self.js,
            subject.to_owned(),
            map.clone(),
            payload.clone(),
        )
        .await;
        let (stored, sequence) = match ack {
            Ok(ack) if !ack.duplicate => {
                return Attempt::Outcome(PublishOutcome::Stored, Some(ack.sequence))
            }
            // The dedup window knows this id: read the event it stored.
            // Boxed, like the lookup below: rare, and large inline in every publish's future.
            Ok(ack) => (
                Box::pin(self.event_id_at(ack.sequence)).await,
                Some(ack.sequence),
            ),
            // The creation subject already holds an event: read it.
            Err(PublishFailure::WrongLastSequence(_)) => {
                (Box::pin(self.last_event_id_on(subject)).await, None)
            }
            Err(error) => return Attempt::Retry(error.to_string()),
        };
        match stored {
            Ok(Some(stored)) => Attempt::Outcome(
                classify_publish(true, &stored, &envelope.id.to_string()),
                sequence,
            ),
            // Removed between the two calls (only by an operator): try again.
            Ok(None) => Attempt::Retry("the stored duplicate disappeared".to_owned()),
            // When the stored event cannot be read, the outcome is unknown: repeat rather than
            // guess (a guess of "collision" would store one message under two numbers).
            Err(error) => Attempt::Retry(error),
        }
    }

    /// The envelope id of the event stored at `sequence`.
    async fn event_id_at(&self, sequence: u64) -> std::result::Result<Option<String>, String> {
        let message = self
            .js
            .events
            .direct_get(sequence)
            .await
            .map_err(|error| format!("cannot read stored duplicate {sequence}: {error}"))?;
        decode_id(&message.payload).map(Some)
    }

    /// The envelope id of the last event on `subject`, if any.
    async fn last_event_id_on(&self, subject: &str) -> std::result::Result<Option<String>, String> {
        match self.last_on(subject).await {
            Ok(Some(payload)) => decode_id(&payload).map(Some),
            Ok(None) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    /// The payload of the last event on `subject` (wildcards allowed), if any.
    async fn last_on(&self, subject: &str) -> Result<Option<bytes::Bytes>> {
        last_on(&self.js, subject).await
    }

    /// The highest number among the creation events still in the stream under `pattern` (a
    /// parent's creation wildcard): the numbers in flight, read from the subjects themselves,
    /// one stream-info request (paged past 100,000 subjects). Exact, not the last one stored:
    /// concurrent publishes are stored out of order, and re-seeding must be at least every
    /// number the stream still refuses ([`confab_core::sequence`]).
    pub async fn max_in_flight(&self, pattern: &str) -> Result<Option<u64>> {
        max_in_flight(&self.js, pattern).await
    }

    /// The envelope id of the creation event the stream holds for `envelope`'s number, if any,
    /// with whether it was stored past the creation horizon (consumers will refuse it,
    /// [`confab_core::sequence::creation_is_late`]).
    pub async fn stored_creation(&self, envelope: &Envelope) -> Result<Option<(String, bool)>> {
        let subject = self.js.subjects.for_event(&envelope.event);
        let Some(message) = last_message_on(&self.js, &subject).await? else {
            return Ok(None);
        };
        let stored = Envelope::decode(&message.payload).map_err(|error| {
            ApiError::Unavailable(format!("stored creation unreadable: {error}"))
        })?;
        let late = confab_core::sequence::creation_is_late(
            stored.occurred_at,
            confab_core::time::from_unix_nanos(message.time.unix_timestamp_nanos()),
            self.js.config.creation_horizon(),
        );
        Ok(Some((stored.id.to_string(), late)))
    }

    /// Whether the event on `subject` (one item's creation, or its deletion) is in the stream.
    pub async fn stored(&self, subject: &str) -> Result<bool> {
        Ok(self.last_on(subject).await?.is_some())
    }
}

/// The payload of the last event on `subject` (wildcards allowed), if any. Bounded like one
/// publish attempt, so a lookup during a leader election fails fast instead of holding the
/// request for the JetStream API's whole timeout.
async fn last_on(js: &JetStream, subject: &str) -> Result<Option<bytes::Bytes>> {
    Ok(last_message_on(js, subject)
        .await?
        .map(|message| message.payload))
}

/// The last message on `subject` (wildcards allowed), if any ([`last_on`]).
async fn last_message_on(
    js: &JetStream,
    subject: &str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let lookup = js.events.get_last_raw_message_by_subject(subject);
    match js.within(lookup).await {
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(error)) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Some(Err(error)) => Err(ApiError::Unavailable(format!(
            "jetstream last message lookup: {error}"
        ))),
        None => Err(ApiError::Unavailable(
            "jetstream last message lookup timed out".to_owned(),
        )),
    }
}

/// [`Publisher::max_in_flight`].
async fn max_in_flight(js: &JetStream, pattern: &str) -> Result<Option<u64>> {
    use futures::TryStreamExt;
    let unavailable = |error: &dyn std::fmt::Display| {
        ApiError::Unavailable(format!("jetstream subjects: {error}"))
    };
    let read = async {
        let subjects = js
            .events
            .info_with_subjects(pattern)
            .await
            .map_err(|e| unavailable(&e))?;
        subjects
            .map_err(|e| unavailable(&e))
            .try_fold(None, |max: Option<u64>, (subject, _count)| async move {
                Ok(max.max(confab_core::Subjects::created_number_of(&subject)))
            })
            .await
    };
    match js.within(read).await {
        Some(result) => result,
        None => Err(ApiError::Unavailable(
            "jetstream subjects lookup timed out".to_owned(),
        )),
    }
}

fn decode_id(payload: &[u8]) -> std::result::Result<String, String> {
    Envelope::decode(payload)
        .map(|e| e.id.to_string())
        .map_err(|error| format!("stored duplicate unreadable: {error}"))
}
