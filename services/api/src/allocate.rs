//! Numbered creation, shared by chats and messages: take the next number of a sequence, publish
//! the event that carries it, and take another number if the stream shows it was already used
//! (only possible after Redis lost data). The request path stays: INCR, publish, answer.
//!
//! With an `Idempotency-Key`, the event is recorded before it is published, and a request that
//! finds a record publishes the recorded event again instead of taking a number
//! ([`crate::idempotency`]).

use std::future::Future;

use confab_core::sequence::{reseed_value, PublishOutcome};
use confab_core::{Envelope, Event};
use confab_runtime::trace::TraceContext;

use crate::error::{ApiError, Result};
use crate::idempotency::{IdempotencyKey, Record};
use crate::numbering::{Admission, Numbered};
use crate::state::AppState;
use confab_core::quota::RateLimitState;

/// Numbers taken before giving up when every one collides. A collision raises the sequence past
/// the collided number and the last number in the stream, so more than a few in a row (numbers
/// taken before a Redis loss and stored after it) means something else is wrong.
const MAX_NUMBER_ATTEMPTS: usize = 8;

/// What a numbered creation needs to know about its parent.
pub struct Sequence<'a, P> {
    /// Metric label: `chat` or `message`.
    pub kind: &'static str,
    /// The Redis sequence key.
    pub key: String,
    /// The wildcard over this parent's creation subjects (for re-seeding).
    pub subjects: String,
    /// The highest number persisted in MySQL (for re-seeding); an error refuses the request (a
    /// deleted parent).
    pub persisted_max: P,
    /// The quotas checked atomically with taking the number.
    pub admission: Admission,
    pub trace: &'a TraceContext,
    pub idempotency: Option<IdempotencyKey>,
}

/// Where an idempotent request stands with its record.
enum Recorded {
    /// No key: nothing to record.
    NotAsked,
    /// This request holds the key's record at this revision (its claim, or its own event's
    /// record after a collision): it replaces it with the event it publishes.
    Held(u64),
}

/// What a creation turned out to be.
pub struct Published {
    pub number: u64,
    pub envelope: Envelope,
    /// The rate limiter's state after taking the number (none when no number was taken).
    pub rate: Option<RateLimitState>,
    /// Answered from an earlier request with the same `Idempotency-Key`.
    pub replayed: bool,
}

impl Published {
    fn replayed((number, envelope): (u64, Envelope)) -> Self {
        Self {
            number,
            envelope,
            rate: None,
            replayed: true,
        }
    }
}

impl AppState {
    /// Publishes `event(number)` under a fresh number (or the number an earlier request with the
    /// same idempotency key recorded).
    ///
    /// With a key, the request first claims it (a pending record, written only if the key has
    /// none, atomically): a concurrent request with the same key finds the claim, takes no
    /// number, and waits for the first request's answer (`409 idempotency_key_in_use` if that
    /// takes longer than the publish deadline), so no number goes to a request that creates
    /// nothing. A claim older than the creation horizon belongs to a request that is over, and
    /// is taken over.
    pub async fn publish_numbered<P, F>(
        &self,
        sequence: Sequence<'_, P>,
        event: impl Fn(u64) -> Event,
    ) -> Result<Published>
    where
        P: Fn() -> F,
        F: Future<Output = Result<Option<u64>>>,
    {
        let mut recorded = Recorded::NotAsked;
        let mut raise = false;
        // Whether the record this request holds is still its bare claim (no event recorded).
        let mut claim_pending = false;
        if let Some(key) = &sequence.idempotency {
            let (held, collided) = match Box::pin(self.claim(key, sequence.trace)).await? {
                Claimed::Answered(answer) => return Ok(Published::replayed(answer)),
                Claimed::Held(revision, collided) => (revision, collided),
            };
            recorded = Recorded::Held(held);
            claim_pending = true;
            raise = collided;
        }
        // The highest number seen taken: the sequence is raised at least past it.
        let mut taken = 0;
        for _ in 0..MAX_NUMBER_ATTEMPTS {
            // Made only when needed, and boxed (as are the other paths taken only now and then
            // below): a future holds room for everything it may await, and axum's layers move
            // the handler's future into boxes several times per request; inline, these made it
            // ~22 KB to copy each time.
            let sequence = &sequence;
            let seed = move || {
                Box::pin(async move {
                    // The stream before MySQL, not both at once: a creation that leaves the
                    // stream in between is in MySQL by the time MySQL is read.
                    let in_flight = self.publisher.max_in_flight(&sequence.subjects).await?;
                    let persisted = (sequence.persisted_max)().await?;
                    Ok(reseed_value(persisted, in_flight).max(taken))
                })
            };
            // Before the number is taken ([`Envelope::made_at`]).
            let made = chrono::Utc::now();
            let numbered = self
                .numbering
                .next(
                    &sequence.key,
                    sequence.kind,
                    &sequence.admission,
                    raise,
                    seed,
                )
                .await;
            let Numbered { number, rate } = match numbered {
                Ok(numbered) => numbered,
                Err(error) => {
                    // No number (a 429, a 409, Redis away): release a claim nobody else can
                    // answer for, so that a retry with the key goes ahead at once.
                    if let (Some(key), Recorded::Held(held), true) =
                        (&sequence.idempotency, &recorded, claim_pending)
                    {
                        Box::pin(self.release(key, *held)).await;
                    }
                    return Err(error);
                }
            };
            let envelope = Envelope::made_at(event(number), made);
            if let (Some(key), Recorded::Held(held)) = (&sequence.idempotency, &recorded) {
                let record = Record::for_envelope(key, &envelope);
                let Some(revision) =
                    Box::pin(self.idempotency.replace(key, &record, *held)).await?
                else {
                    // Our claim was taken over (this request outlived the horizon): answer as
                    // the request that took it does.
                    return match Box::pin(self.replay(key, sequence.trace)).await? {
                        Replay::Answered(answer) => Ok(Published::replayed(answer)),
                        Replay::Pending { .. } => Err(ApiError::IdempotencyKeyInUse),
                        Replay::Absent | Replay::Released(_) | Replay::Collided(_) => {
                            Err(ApiError::Unavailable(
                                "idempotency record changed concurrently".to_owned(),
                            ))
                        }
                    };
                };
                recorded = Recorded::Held(revision);
                claim_pending = false;
            }
            match self.publisher.publish(&envelope, sequence.trace).await? {
                PublishOutcome::Stored | PublishOutcome::RetriedOwn => {
                    return Ok(Published {
                        number,
                        envelope,
                        rate,
                        replayed: false,
                    })
                }
                PublishOutcome::Collision => {
                    tracing::warn!(
                        kind = sequence.kind,
                        number,
                        "number already taken, raising the sequence and taking another"
                    );
                    raise = true;
                    taken = taken.max(number);
                }
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} numbering keeps colliding",
            sequence.kind
        )))
    }

    /// Claims `key` for this request: an earlier request's answer, or the record's revision
    /// this request now holds (and whether the recorded event's number collided, so the
    /// sequence must be raised past it).
    async fn claim(&self, key: &IdempotencyKey, trace: &TraceContext) -> Result<Claimed> {
        for _ in 0..3 {
            let (expected, collided) = match Box::pin(self.replay(key, trace)).await? {
                Replay::Answered(answer) => return Ok(Claimed::Answered(answer)),
                Replay::Absent => (0, false),
                Replay::Released(revision) => (revision, false),
                Replay::Collided(revision) => (revision, true),
                Replay::Pending { revision, since } => {
                    let horizon = self.publisher.jetstream().config.creation_horizon();
                    let age = (chrono::Utc::now() - since).to_std().unwrap_or_default();
                    if age <= horizon {
                        // The first request is still running: wait for its answer.
                        self.idempotency.count_in_progress();
                        match Box::pin(self.await_answer(key, trace, since)).await? {
                            Some(answer) => return Ok(Claimed::Answered(answer)),
                            None => continue,
                        }
                    }
                    (revision, false)
                }
            };
            let claim = Record::pending(key);
            let written = if expected == 0 {
                Box::pin(self.idempotency.create(key, &claim)).await?
            } else {
                Box::pin(self.idempotency.replace(key, &claim, expected)).await?
            };
            if let Some(revision) = written {
                return Ok(Claimed::Held(revision, collided));
            }
            // Another request with this key wrote first: look again.
        }
        Err(ApiError::IdempotencyKeyInUse)
    }

    /// Waits while the request that claimed `key` at `since` runs: its answer once it recorded
    /// one, `None` when the record changed otherwise (look again), or `409
    /// idempotency_key_in_use` after the publish deadline (the claim is then taken over once it
    /// is older than the creation horizon).
    async fn await_answer(
        &self,
        key: &IdempotencyKey,
        trace: &TraceContext,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(u64, Envelope)>> {
        let deadline =
            tokio::time::Instant::now() + self.publisher.jetstream().config.publish_deadline;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            match Box::pin(self.replay(key, trace)).await? {
                Replay::Answered(answer) => return Ok(Some(answer)),
                Replay::Pending { since: still, .. } if still == since => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ApiError::IdempotencyKeyInUse);
                    }
                }
                _ => return Ok(None),
            }
        }
    }

    /// Releases this request's claim on `key` (at `revision`): best effort, since a claim left
    /// behind only makes a retry wait, then be taken over after the creation horizon.
    async fn release(&self, key: &IdempotencyKey, revision: u64) {
        if let Err(error) = self
            .idempotency
            .replace(key, &Record::released(key), revision)
            .await
        {
            tracing::debug!(%error, "releasing an idempotency claim");
        }
    }

    /// Answers from an earlier request's record, if there is one.
    async fn replay(&self, key: &IdempotencyKey, trace: &TraceContext) -> Result<Replay> {
        let Some((record, revision)) = self.idempotency.lookup(key).await? else {
            return Ok(Replay::Absent);
        };
        if let Some(since) = record.pending_since {
            return Ok(Replay::Pending { revision, since });
        }
        if record.released {
            return Ok(Replay::Released(revision));
        }
        let envelope = record.envelope.ok_or(ApiError::IdempotencyMismatch)?;
        let number = envelope
            .event
            .created_number()
            .ok_or(ApiError::IdempotencyMismatch)?;
        let age = chrono::Utc::now() - envelope.occurred_at;
        let outcome = if age.to_std().unwrap_or_default()
            > self.publisher.jetstream().config.publish_deadline
        {
            // Its first request is over: its event was stored, or never will be. Stored, it may
            // already be persisted and gone from the stream, and publishing it again would store
            // it a second time, past its horizon. So its fate is read instead.
            Box::pin(self.fate_of(&envelope)).await?
        } else {
            self.publisher.publish(&envelope, trace).await?
        };
        match outcome {
            PublishOutcome::Stored | PublishOutcome::RetriedOwn => {
                Ok(Replay::Answered((number, envelope)))
            }
            // The first request's event was never stored and its number went to another
            // request: this one takes a new number and replaces the record.
            PublishOutcome::Collision => Ok(Replay::Collided(revision)),
        }
    }
}

impl AppState {
    /// What became of a recorded creation whose request is over: in the stream, or in MySQL
    /// (read after the stream: an event that leaves the stream in between is in MySQL by then),
    /// as this event's (`RetriedOwn`) or another's (`Collision`); found nowhere, or stored past
    /// its horizon, it was never acknowledged and its number must not be claimed late
    /// (`Collision` too: the request takes a new number).
    async fn fate_of(&self, envelope: &Envelope) -> Result<PublishOutcome> {
        let own = envelope.id.to_string();
        match self.publisher.stored_creation(envelope).await? {
            // Ours, stored past its horizon: consumers will dead-letter this copy, so only a row
            // an earlier copy made can answer for it (read below).
            Some((stored, true)) if stored == own => {}
            Some((stored, _)) => {
                return Ok(confab_core::sequence::classify_publish(true, &stored, &own))
            }
            None => {}
        }
        let claim = crate::repo::creation_claim(&self.db, &envelope.event).await?;
        let ours = claim.flatten().as_deref() == Some(envelope.id.as_bytes().as_slice());
        Ok(if ours {
            PublishOutcome::RetriedOwn
        } else {
            PublishOutcome::Collision
        })
    }
}

enum Replay {
    Answered((u64, Envelope)),
    Absent,
    Collided(u64),
    /// Released by a request that took no number: the key is free (at this revision).
    Released(u64),
    /// Claimed by a request that has not recorded its event yet.
    Pending {
        revision: u64,
        since: chrono::DateTime<chrono::Utc>,
    },
}

enum Claimed {
    Answered((u64, Envelope)),
    /// The record's revision this request holds; whether the earlier record's number collided.
    Held(u64, bool),
}
