//! Numbering decisions.
//!
//! Numbers come from Redis `INCR`. Two mechanisms make a number handed out twice impossible to
//! acknowledge twice, whatever the duplicate window, the persistence lag or how often Redis loses
//! its data:
//!
//! 1. **The stream refuses a second creation.** Each creation event has its own subject
//!    (parent, number) and is published with `Nats-Expected-Last-Subject-Sequence: 0` (no
//!    `Nats-Msg-Id`: it would repeat this check). JetStream stores it only if that subject holds no
//!    message, atomically, so while the first creation of a number is retained no other event
//!    can claim it. The api then reads the stored event: its own (a retry) is success, anyone
//!    else's is a [`PublishOutcome::Collision`] and the api takes another number.
//! 2. **Redis never falls behind what left the stream.** An event leaves the stream only after
//!    `CONFAB_STREAM_MAX_AGE_SECS`, by which time the persister has written it (the same bound
//!    invariant 2 needs). After each commit the persister raises the parent's sequence to at
//!    least the highest number it wrote (a monotone "max", creating the key if missing); a missing
//!    key is seeded from `MAX(number)` in MySQL and the last creation in the stream; and a
//!    collision raises the sequence the same way before the next number is taken. Every write
//!    to a sequence is a `max`, so no two writers can move it backwards.
//!
//! Together: a stored number k is either still in the stream (1 refuses it) or persisted and
//! below every value the sequence can have (2). Gaps are possible after a Redis loss; repeats
//! are not. The assumption, stated in the README: Redis is never restored from an old snapshot.

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
    fn duplicate_of_someone_elses_event_is_a_collision() {
        assert_eq!(classify_publish(false, "", "a"), PublishOutcome::Stored);
        assert_eq!(classify_publish(true, "a", "a"), PublishOutcome::RetriedOwn);
        assert_eq!(classify_publish(true, "b", "a"), PublishOutcome::Collision);
    }
}
