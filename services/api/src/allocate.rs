//! Numbered creation, shared by chats and messages: take the next number of a sequence, publish
//! the event that carries it, and take another number if the stream shows it was already used
//! (only possible after Redis lost data). The request path stays: INCR, publish, answer.

use std::future::Future;

use confab_core::sequence::{reseed_value, PublishOutcome};
use confab_core::trace::TraceParent;
use confab_core::{Envelope, Event};

use crate::error::{ApiError, Result};
use crate::numbering::Admission;
use crate::state::AppState;

/// Numbers taken before giving up when every one collides.
const MAX_NUMBER_ATTEMPTS: usize = 5;

/// What a numbered creation needs to know about its parent.
pub struct Sequence<'a, P> {
    /// Metric label: `chat` or `message`.
    pub kind: &'static str,
    /// The Redis sequence key.
    pub key: String,
    /// The JetStream subject creation events of this parent go to (for re-seeding).
    pub subject: String,
    /// The highest number persisted in MySQL (for re-seeding).
    pub persisted_max: P,
    /// The quotas checked atomically with taking the number.
    pub admission: Admission,
    pub trace: &'a TraceParent,
}

impl AppState {
    /// Publishes `event(number)` under a fresh number; returns the stored envelope and its number.
    pub async fn publish_numbered<P, F>(
        &self,
        sequence: Sequence<'_, P>,
        event: impl Fn(u64) -> Event,
    ) -> Result<(u64, Envelope)>
    where
        P: Fn() -> F,
        F: Future<Output = sqlx::Result<Option<u64>>>,
    {
        for _ in 0..MAX_NUMBER_ATTEMPTS {
            let seed = async {
                let persisted = (sequence.persisted_max)().await?;
                let in_flight = self.publisher.last_number_on(&sequence.subject).await?;
                Ok(reseed_value(persisted, in_flight))
            };
            let number = self
                .numbering
                .next(&sequence.key, sequence.kind, &sequence.admission, seed)
                .await?;
            let envelope = Envelope::new(event(number));
            match self.publisher.publish(&envelope, sequence.trace).await? {
                PublishOutcome::Stored | PublishOutcome::RetriedOwn => {
                    return Ok((number, envelope))
                }
                PublishOutcome::Collision => {
                    tracing::warn!(
                        kind = sequence.kind,
                        number,
                        "number already taken, taking another"
                    );
                }
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} numbering keeps colliding",
            sequence.kind
        )))
    }
}
