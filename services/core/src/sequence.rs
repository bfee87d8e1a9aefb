//! Numbering decisions, and why a number is never acknowledged twice.
//!
//! Numbers come from Redis `INCR`. The events stream keeps an event only until every durable
//! consumer (persister, indexer, the live stream's source) has acked it, so the NATS server holds
//! per-subject state for the work in flight, not for the history written. Five rules keep a
//! number from being acknowledged (`201`) for two creations, whatever Redis loses and however
//! far persistence lags:
//!
//! 1. **The stream refuses a second creation while it holds the first.** Each creation event
//!    has its own subject (parent, number) and is published with
//!    `Nats-Expected-Last-Subject-Sequence: 0`: JetStream stores it only if that subject holds no
//!    message, atomically. The api then reads the stored event: its own (a retry) is success,
//!    anyone else's is a [`PublishOutcome::Collision`] and the api takes another number.
//! 2. **An event leaves the stream only once it is in MySQL and below the sequence.** The
//!    persister acks a creation only after its row is committed and the parent's sequence was
//!    raised to at least its number (a `max` on an existing key). Interest retention drops an
//!    event only once every required consumer acked it, and the persister's consumer is made
//!    to exist before anything is published. Rows are never removed while their parent lives
//!    (a deleted message or chat keeps a tombstone row), so `MAX(number)` never falls.
//! 3. **A lost sequence is re-seeded from the stream, then MySQL, after a quiescence, under a
//!    fence.** A missing key means Redis lost its data. The api re-seeds it (the persister's
//!    raise never creates a key). Each application has an epoch key, when its sequences began
//!    (Redis's clock), created when found missing. A seed is read only once the epoch is
//!    `Q = CONFAB_PUBLISH_DEADLINE_MS + 2 × CONFAB_CLOCK_SKEW_MS` old (`503
//!    sequence_recovering` until then), as the highest number among the creation subjects the
//!    stream still holds (exact: their subjects are listed) and then `MAX(number)` in MySQL, and
//!    it is written only if the epoch is still the one it was read under. A new application
//!    starts with a settled epoch: none of its numbers can be in flight.
//! 4. **A creation stored past its horizon is never applied.** A creation's `occurred_at` is read
//!    before its number is taken, and the api answers `201` only when the acknowledgement comes
//!    within `CONFAB_PUBLISH_DEADLINE_MS` of it (one whose deadline passed before it could be
//!    published, as when numbering stalled, is not sent at all, and an acknowledgement arriving
//!    past the deadline is not answered 201). A creation the stream stored later than
//!    `H = deadline + skew` after its `occurred_at` was therefore answered 503, and the persister
//!    and indexer dead-letter it (`late`) instead of applying it ([`creation_is_late`]). A replayed `Idempotency-Key` whose
//!    first request is over reads its event's fate from the stream and MySQL rather than
//!    publishing it again. A copy of its own event stored past the horizon does not count: only
//!    a row answers for it, or the request takes a new number.
//! 5. **Every write to a sequence is a `max`** (INCR, seed, raise), so no two writers move it
//!    backwards.
//!
//! **The argument.** Take a number k of a parent, stored by a creation E₁ that was
//! acknowledged. At every moment, k is either refused by the stream or below the sequence and in
//! MySQL:
//!
//! - While E₁ is in the stream, any other creation of k is refused (1).
//! - When E₁ leaves, k is committed in MySQL and the sequence is at least k (2). From then on
//!   the sequence only grows (5) unless Redis loses it. After a loss, no number is handed out
//!   before a seed (the key is missing), and a seed is written only under the epoch it was
//!   read in. The epoch was created after the loss, and the reads came after it, so MySQL
//!   already showed k. The seed is at least k, and every later number is above it.
//!
//! What remains is a number k handed out *before* a loss and published *after* the seed was
//! read, so the seed cannot have seen it. Its grant g came before the loss, and the seed was
//! read at least Q after the epoch, so at least Q after g. If that publish was acknowledged, it
//! was stored within the deadline of g, before the seed was read, and the seed saw k (in the
//! stream, or in MySQL if it had left the stream). So such a publish was answered 503. Its
//! `occurred_at` was read before g, so it was stored more than Q > H after its `occurred_at`: it
//! is dead-lettered `late` and never claims k's row (4). Meanwhile, while it sits in the stream,
//! it refuses another creation of k (1), and the api takes another number.
//!
//! Gaps are possible after a Redis loss; repeats of an acknowledged number are not.
//!
//! **The assumptions**, stated in the docs:
//! - Redis is never restored from an old snapshot.
//! - Redis does not evict sequence keys (`maxmemory-policy noeviction`).
//! - A Redis failover (Redis Cluster, Sentinel) promotes a replica that acknowledged the
//!   persister's raises: `CONFAB_REDIS_WAIT_REPLICAS` set to the replicas of each master. A
//!   replica promoted without some increments looks like neither a loss nor a seed: its
//!   sequence is merely behind. That is safe for what rule 2 covers: the persister's raise of a
//!   number is written on the master after the increment that took it, and the persister acks
//!   the event only once `WAIT` says the replicas hold the raise (replication is in order, so
//!   they hold the increment too). A promoted replica can therefore be behind only by numbers
//!   whose events are still in the stream, and rule 1 refuses those a second time (the api
//!   counts a collision and takes the next number). Without the wait, a number persisted and
//!   acked just before its master died could be handed out again by the promoted replica once
//!   the stream had forgotten it.
//! - Clocks of api hosts and NATS servers differ by at most `CONFAB_CLOCK_SKEW_MS`.
//! - Consumers ack an event within `CONFAB_STREAM_MAX_AGE_SECS` (a week), which bounds how
//!   long an unacked event waits.

/// Whether a creation event made at `occurred_at` (the api's clock) and stored at `stored_at`
/// (the stream's clock) was stored past `horizon` (`CONFAB_PUBLISH_DEADLINE_MS` plus the clock
/// skew allowed): its request was answered 503, so it is not an acknowledged write, and its
/// number may have gone to another creation since a Redis loss. Consumers dead-letter it as
/// `late` instead of applying it (step 4 of the argument above).
pub fn creation_is_late(
    occurred_at: chrono::DateTime<chrono::Utc>,
    stored_at: chrono::DateTime<chrono::Utc>,
    horizon: std::time::Duration,
) -> bool {
    chrono::Duration::from_std(horizon).is_ok_and(|horizon| stored_at - occurred_at > horizon)
}

/// The value to seed (or raise) a sequence to: the highest number known, or 0 for a new parent.
pub fn reseed_value(persisted_max: Option<u64>, in_flight_max: Option<u64>) -> u64 {
    persisted_max.unwrap_or(0).max(in_flight_max.unwrap_or(0))
}

/// What a JetStream publish of an event turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored as a new event.
    Stored,
    /// The stream already had this event (on its creation subject, or under its dedup id): a
    /// retry of our own publish, so success.
    RetriedOwn,
    /// The stream already had a different event with this number: the number was handed out
    /// twice (Redis lost data, or is behind the stream). The caller must take a new number.
    Collision,
}

/// Classifies a publish acknowledgement; for a duplicate (or a refused creation), `stored_event_id`
/// is the id of the event the stream already holds. The caller must have read it: guessing
/// "collision" when it could not would store one message twice under two numbers.
pub fn classify_publish(
    duplicate: bool,
    stored_event_id: &str,
    own_event_id: &str,
) -> PublishOutcome {
    match duplicate {
        false => PublishOutcome::Stored,
        true if stored_event_id == own_event_id => PublishOutcome::RetriedOwn,
        true => PublishOutcome::Collision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reseed_takes_the_highest_known_number() {
        assert_eq!(reseed_value(None, None), 0);
        assert_eq!(reseed_value(Some(5), None), 5);
        assert_eq!(reseed_value(None, Some(7)), 7);
        assert_eq!(reseed_value(Some(9), Some(7)), 9);
        assert_eq!(reseed_value(Some(3), Some(7)), 7);
    }

    #[test]
    fn a_creation_stored_past_its_horizon_is_late() {
        let made = chrono::DateTime::from_timestamp(1_000_000, 0).unwrap();
        let horizon = std::time::Duration::from_secs(10);
        let at = |secs: i64| made + chrono::Duration::seconds(secs);
        assert!(!creation_is_late(made, at(0), horizon));
        assert!(
            !creation_is_late(made, at(10), horizon),
            "at the horizon: still in time"
        );
        assert!(creation_is_late(made, at(11), horizon));
        // A stream clock behind the api's (skew) is never late.
        assert!(!creation_is_late(made, at(-5), horizon));
    }

    #[test]
    fn duplicate_of_someone_elses_event_is_a_collision() {
        assert_eq!(classify_publish(false, "", "a"), PublishOutcome::Stored);
        assert_eq!(classify_publish(true, "a", "a"), PublishOutcome::RetriedOwn);
        assert_eq!(classify_publish(true, "b", "a"), PublishOutcome::Collision);
    }
}
