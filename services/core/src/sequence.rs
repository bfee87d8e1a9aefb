//! Numbering decisions.
//!
//! Numbers come from Redis `INCR`. When a sequence key is missing (new parent, or Redis lost its
//! data) it is re-seeded from the highest number known anywhere: persisted in MySQL or still in
//! flight in JetStream. The seed is written with set-if-absent semantics, so concurrent re-seeders
//! agree on one value. Numbers that were handed out but not yet published when Redis lost its data
//! are caught at publish time: JetStream's duplicate window rejects a second event with the same
//! dedup id, and the api then takes the next number (see [`PublishOutcome`]).

/// The value to seed a missing sequence with: the highest number known, or 0 for a new parent.
pub fn reseed_value(persisted_max: Option<u64>, in_flight_max: Option<u64>) -> u64 {
    persisted_max.unwrap_or(0).max(in_flight_max.unwrap_or(0))
}

/// What a JetStream publish of a numbered event turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored as a new event.
    Stored,
    /// The stream already had an event with this dedup id, and it is this very event
    /// (a retry of our own publish): success.
    RetriedOwn,
    /// The stream already had a different event with this number: the number was handed out
    /// twice (Redis lost data). The caller must take a new number.
    Collision,
}

/// Classifies a publish acknowledgement; for a duplicate, `stored_event_id` is the id of the event
/// the stream already holds. The caller must have read it: guessing "collision" when it could not
/// would store one message twice under two numbers.
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
