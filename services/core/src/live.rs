//! Live delivery of a chat's events, the pure parts: where a subscriber stands ([`Cursor`]) and
//! the order creations are released in ([`Reorder`]).
//!
//! A chat's events are identified by their JetStream sequence, which is global to the stream, so
//! one chat's events are sparse in it. Whoever reads them in stream order (a consumer filtered to
//! the chat) also knows each event's predecessor in the chat (`prev`). That is what makes a
//! cursor exact: "every event of this chat up to sequence `upto`, plus these few above it".
//!
//! Creations of one chat are not stored in the order of their numbers when two writers race
//! (number 6 can be acknowledged before 5). [`Reorder`] holds a creation back, for a bounded
//! window, until the numbers below it have been seen, and holds an update or deletion behind the
//! creation it applies to. Delivery order therefore differs from stream order at times, and the
//! cursor then names the events delivered above the contiguous prefix, so a client that resumes
//! from it gets neither a gap nor a repeat.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Most events a cursor may name above its contiguous prefix (a cursor is a header value).
pub const MAX_CURSOR_GAPS: usize = 64;

/// What a subscriber has received of one chat's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Every event of the chat with a sequence up to this one has been received.
    upto: u64,
    /// Received events above `upto`, each with its predecessor in the chat once known (a cursor
    /// parsed from a client names sequences only; their predecessors are learnt on replay).
    above: BTreeMap<u64, Option<u64>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a cursor is a stream sequence, optionally followed by up to {MAX_CURSOR_GAPS} larger ones, separated by dots (`1041` or `1041.1043`)")]
pub struct CursorError;

impl Cursor {
    /// A subscriber that has received every event up to `sequence`.
    pub fn at(sequence: u64) -> Self {
        Self {
            upto: sequence,
            above: BTreeMap::new(),
        }
    }

    /// The contiguous prefix: every event up to this sequence has been received.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// Whether event `sequence` has been received.
    pub fn includes(&self, sequence: u64) -> bool {
        sequence <= self.upto || self.above.contains_key(&sequence)
    }

    /// The highest sequence received.
    pub fn last(&self) -> u64 {
        self.above.last_key_value().map_or(self.upto, |(&s, _)| s)
    }

    /// Records event `sequence`, whose predecessor in the chat is `prev`, as received. False when
    /// it had been received already: a repeat, not to be delivered again.
    pub fn receive(&mut self, sequence: u64, prev: u64) -> bool {
        if sequence <= self.upto {
            return false;
        }
        // Nothing of the chat lies strictly between `prev` and `sequence`: what a client's cursor
        // named there is not an event of this chat (sequences are global to the stream), and
        // would otherwise hold the prefix back for good.
        let named: Vec<u64> = self
            .above
            .range(prev.saturating_add(1)..sequence)
            .filter(|(_, known)| known.is_none())
            .map(|(&s, _)| s)
            .collect();
        for s in named {
            self.above.remove(&s);
        }
        let fresh = match self.above.get_mut(&sequence) {
            Some(known) => {
                *known = Some(prev);
                false
            }
            None => {
                self.above.insert(sequence, Some(prev));
                true
            }
        };
        self.advance();
        fresh
    }

    /// Every event below `sequence` has been received (a replay read everything stored before the
    /// live feed's first sequence).
    pub fn received_below(&mut self, sequence: u64) {
        self.upto = self.upto.max(sequence.saturating_sub(1));
        self.advance();
    }

    /// Moves the contiguous prefix over every received event that now follows it.
    fn advance(&mut self) {
        while let Some((&sequence, &prev)) = self.above.first_key_value() {
            if sequence <= self.upto {
                self.above.pop_first();
            } else if prev.is_some_and(|prev| prev <= self.upto) {
                self.upto = sequence;
                self.above.pop_first();
            } else {
                break;
            }
        }
    }

    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let mut parts = text.trim().split('.');
        let upto = parts
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(CursorError)?;
        let mut cursor = Self::at(upto);
        for part in parts {
            let sequence = part.parse::<u64>().map_err(|_| CursorError)?;
            if sequence <= upto || cursor.above.len() >= MAX_CURSOR_GAPS {
                return Err(CursorError);
            }
            cursor.above.insert(sequence, None);
        }
        Ok(cursor)
    }
}

/// `upto` alone, or `upto.s1.s2` while events above a gap have been delivered.
impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.upto)?;
        for sequence in self.above.keys() {
            write!(f, ".{sequence}")?;
        }
        Ok(())
    }
}

/// Releases a chat's creations in the order of their numbers, and every other event of a message
/// after that message's creation.
///
/// A creation above the next expected number is held until the numbers below it arrive or its
/// `window` passes (a number can be lost for good: the api took it and the publish failed). What
/// arrives later than that is released late rather than never. A reorder that has released
/// nothing yet (a feed that has just started) does not know which numbers are still in flight:
/// it holds its first creations for a window as well, unless they start at number 1. Events
/// released together keep the stream's order wherever it is a valid one ([`release_order`]).
#[derive(Debug)]
pub struct Reorder<T> {
    window: Duration,
    /// The highest creation number released so far.
    released: Option<u64>,
    /// Held creations by number: the deadline, and the events held with their arrival (the
    /// creation first).
    held: BTreeMap<u64, (Instant, Vec<(u64, T)>)>,
    /// Counts arrivals, to release held events in the order they came.
    arrivals: u64,
}

impl<T> Reorder<T> {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            released: None,
            held: BTreeMap::new(),
            arrivals: 0,
        }
    }

    /// A reorder that has released every creation up to `number`.
    pub fn after(mut self, number: u64) -> Self {
        self.released = Some(number);
        self
    }

    /// Takes the event of message `number` (a creation when `created`); what may be delivered
    /// now is appended to `out`, in order.
    pub fn push(&mut self, number: u64, created: bool, event: T, now: Instant, out: &mut Vec<T>) {
        self.arrivals += 1;
        let arrival = self.arrivals;
        if !created {
            match self.held.get_mut(&number) {
                Some((_, events)) => events.push((arrival, event)),
                None => out.push(event),
            }
            return;
        }
        let next = self
            .released
            .map_or(1, |released| released.saturating_add(1));
        if number > next || (self.released.is_none() && number != 1) {
            self.held
                .entry(number)
                .or_insert_with(|| (now + self.window, Vec::new()))
                .1
                .push((arrival, event));
            return;
        }
        out.push(event);
        self.released = Some(self.released.map_or(number, |r| r.max(number)));
        let mut groups = Vec::new();
        self.release_following(&mut groups);
        emit(groups, out);
    }

    /// When the earliest hold ends, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.values().map(|(until, _)| *until).min()
    }

    /// Releases every hold that ended by `now`, with the holds of lower numbers before it.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        let Some(last) = self
            .held
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(&number, _)| number)
            .max()
        else {
            return;
        };
        let rest = self.held.split_off(&(last + 1));
        let mut groups: Vec<_> = std::mem::replace(&mut self.held, rest)
            .into_values()
            .map(|(_, events)| events)
            .collect();
        self.released = Some(self.released.map_or(last, |r| r.max(last)));
        self.release_following(&mut groups);
        emit(groups, out);
    }

    /// Takes the held creations that now follow the released ones, in number order.
    fn release_following(&mut self, groups: &mut Vec<Vec<(u64, T)>>) {
        while let Some(released) = self.released {
            let Some((_, events)) = self.held.remove(&(released + 1)) else {
                break;
            };
            groups.push(events);
            self.released = Some(released + 1);
        }
    }
}

/// Held groups released together (in number order, each its creation first) in delivery order.
fn emit<T>(groups: Vec<Vec<(u64, T)>>, out: &mut Vec<T>) {
    let mut events = Vec::new();
    for (rank, group) in groups.into_iter().enumerate() {
        for (i, (arrival, event)) in group.into_iter().enumerate() {
            events.push((arrival, rank, i == 0, event));
        }
    }
    in_delivery_order(events, out);
}

/// One event of a batch to put in delivery order ([`release_order`]).
#[derive(Debug)]
pub struct Released<T> {
    /// Its place in the stream.
    pub arrival: u64,
    /// The message it is about.
    pub number: u64,
    pub created: bool,
    pub event: T,
}

/// A batch of a chat's events in delivery order: the creations in the order of their numbers,
/// every other event after its message's creation when that is in the batch, and otherwise the
/// stream's order. Where the stream's order is a valid one (the usual case) it is kept exactly,
/// so the cursors of a replay stay contiguous.
pub fn release_order<T>(batch: Vec<Released<T>>) -> Vec<T> {
    let mut numbers: Vec<u64> = batch
        .iter()
        .filter(|e| e.created)
        .map(|e| e.number)
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut seen = vec![false; numbers.len()];
    let mut events = Vec::with_capacity(batch.len());
    for e in batch {
        let rank = numbers.binary_search(&e.number).ok();
        match rank {
            Some(r) if e.created && !seen[r] => {
                seen[r] = true;
                events.push((e.arrival, r, true, e.event));
            }
            // An event of a message created before the batch, or a repeated creation (not
            // expected): in the stream's order, after the batch's creation of it if any.
            Some(r) => events.push((e.arrival, r, false, e.event)),
            None => events.push((e.arrival, usize::MAX, false, e.event)),
        }
    }
    let mut out = Vec::with_capacity(events.len());
    in_delivery_order(events, &mut out);
    out
}

/// `(arrival, rank of the message's creation in number order, is that creation, event)`, where
/// every rank below `usize::MAX` has exactly one creation: walks the stream's order, holding a
/// creation until those of lower rank are out and any other event until its creation is.
fn in_delivery_order<T>(mut events: Vec<(u64, usize, bool, T)>, out: &mut Vec<T>) {
    events.sort_by_key(|e| e.0);
    let ranks = events.iter().filter(|e| e.2).count();
    let mut parked: Vec<Option<T>> = (0..ranks).map(|_| None).collect();
    let mut waiting: Vec<Vec<T>> = (0..ranks).map(|_| Vec::new()).collect();
    let mut next = 0;
    for (_, rank, creation, event) in events {
        if creation {
            parked[rank] = Some(event);
            while let Some(creation) = parked.get_mut(next).and_then(Option::take) {
                out.push(creation);
                out.append(&mut waiting[next]);
                next += 1;
            }
        } else if rank < next || rank >= ranks {
            out.push(event);
        } else {
            waiting[rank].push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_follows_the_chain_of_a_chats_sparse_sequences() {
        let mut c = Cursor::at(10);
        assert!(c.receive(14, 10));
        assert!(c.receive(20, 14));
        assert_eq!(c.to_string(), "20");
        assert!(!c.receive(14, 10), "a repeat");
    }

    #[test]
    fn a_cursor_names_what_was_delivered_above_a_gap_until_the_gap_closes() {
        let mut c = Cursor::at(10);
        // 14 is held back; 20 (whose predecessor is 14) is delivered first.
        assert!(c.receive(20, 14));
        assert_eq!(c.to_string(), "10.20");
        assert!(c.includes(20) && c.includes(9) && !c.includes(14));
        assert_eq!(c.last(), 20);
        assert!(c.receive(14, 10));
        assert_eq!(c.to_string(), "20");
    }

    #[test]
    fn a_parsed_cursor_skips_what_it_names_and_learns_its_place_on_replay() {
        let mut c = Cursor::parse("10.20").unwrap();
        assert!(c.receive(14, 10), "14 was not delivered");
        assert!(!c.receive(20, 14), "20 was");
        assert_eq!(c.to_string(), "20");
        assert!(c.receive(25, 20));
        assert_eq!(c.upto(), 25);
    }

    #[test]
    fn a_replay_that_read_to_the_live_start_closes_the_prefix() {
        let mut c = Cursor::at(3);
        c.received_below(50);
        assert_eq!(c.to_string(), "49");
        assert!(c.receive(50, 49));
        assert!(!c.receive(7, 3));
    }

    #[test]
    fn bad_cursors_are_refused() {
        for bad in ["", "x", "5.", "5.3", "5.5", "-1", "1.2.x"] {
            assert_eq!(Cursor::parse(bad), Err(CursorError), "{bad:?}");
        }
        let too_many = (1..=MAX_CURSOR_GAPS as u64 + 1)
            .map(|n| (n + 1).to_string())
            .collect::<Vec<_>>()
            .join(".");
        assert!(Cursor::parse(&format!("1.{too_many}")).is_err());
        assert_eq!(Cursor::parse("7.9.8").unwrap().to_string(), "7.8.9");
    }

    fn push(
        r: &mut Reorder<&'static str>,
        n: u64,
        created: bool,
        e: &'static str,
        at: Instant,
    ) -> Vec<&'static str> {
        let mut out = Vec::new();
        r.push(n, created, e, at, &mut out);
        out
    }

    #[test]
    fn creations_are_released_in_number_order_with_their_updates_after_them() {
        let t = Instant::now();
        let mut r = Reorder::new(Duration::from_millis(100)).after(3);
        assert_eq!(push(&mut r, 4, true, "c4", t), ["c4"]);
        assert_eq!(push(&mut r, 6, true, "c6", t), Vec::<&str>::new());
        assert_eq!(push(&mut r, 6, false, "u6", t), Vec::<&str>::new());
        assert_eq!(push(&mut r, 4, false, "u4", t), ["u4"]);
        assert_eq!(push(&mut r, 5, true, "c5", t), ["c5", "c6", "u6"]);
        assert_eq!(push(&mut r, 3, true, "c3", t), ["c3"], "late, not lost");
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn a_number_that_never_arrives_holds_the_next_for_the_window_only() {
        let t = Instant::now();
        let window = Duration::from_millis(100);
        let mut r = Reorder::new(window).after(0);
        push(&mut r, 1, true, "c1", t);
        assert!(push(&mut r, 3, true, "c3", t).is_empty());
        assert!(push(&mut r, 5, true, "c5", t + window / 2).is_empty());
        assert!(push(&mut r, 4, true, "c4", t + window / 2).is_empty());
        assert_eq!(r.next_deadline(), Some(t + window));
        let mut out = Vec::new();
        r.expire(t + window / 4, &mut out);
        assert!(out.is_empty());
        r.expire(t + window, &mut out);
        assert_eq!(out, ["c3", "c4", "c5"]);
        assert_eq!(push(&mut r, 6, true, "c6", t + window), ["c6"]);
    }

    #[test]
    fn a_new_feed_holds_its_first_creations_for_a_window_as_lower_ones_may_be_in_flight() {
        let t = Instant::now();
        let window = Duration::from_millis(100);
        let mut r = Reorder::new(window);
        assert!(push(&mut r, 6, true, "c6", t).is_empty());
        assert!(push(&mut r, 6, false, "u6", t).is_empty());
        assert_eq!(
            push(&mut r, 2, false, "u2", t),
            ["u2"],
            "its creation came before"
        );
        assert!(push(&mut r, 5, true, "c5", t + window / 2).is_empty());
        let mut out = Vec::new();
        r.expire(t + window / 2, &mut out);
        assert!(out.is_empty());
        r.expire(t + window, &mut out);
        assert_eq!(out, ["c5", "c6", "u6"]);
        assert_eq!(push(&mut r, 7, true, "c7", t + window), ["c7"]);

        // A chat's first number cannot have a lower one in flight.
        let mut r = Reorder::new(window);
        assert!(push(&mut r, 2, true, "c2", t).is_empty());
        assert_eq!(push(&mut r, 1, true, "c1", t), ["c1", "c2"]);
    }

    #[test]
    fn events_released_together_keep_the_streams_order_where_it_is_valid() {
        let t = Instant::now();
        let window = Duration::from_millis(100);
        let mut r = Reorder::new(window).after(0);
        assert!(push(&mut r, 3, true, "c3", t).is_empty());
        assert!(push(&mut r, 2, true, "c2", t).is_empty());
        assert!(push(&mut r, 3, false, "u3", t).is_empty());
        assert!(push(&mut r, 2, false, "d2", t).is_empty());
        assert!(push(&mut r, 4, true, "c4", t).is_empty());
        assert!(push(&mut r, 4, false, "u4", t).is_empty());
        assert_eq!(
            push(&mut r, 1, true, "c1", t),
            ["c1", "c2", "c3", "u3", "d2", "c4", "u4"]
        );
    }

    fn batch(events: &[(u64, bool, &'static str)]) -> Vec<Released<&'static str>> {
        events
            .iter()
            .enumerate()
            .map(|(i, &(number, created, event))| Released {
                arrival: i as u64,
                number,
                created,
                event,
            })
            .collect()
    }

    #[test]
    fn a_batch_in_a_valid_stream_order_keeps_it() {
        let events = [
            (10, true, "c10"),
            (10, false, "u10"),
            (3, false, "u3"),
            (11, true, "c11"),
            (11, false, "u11"),
            (10, false, "d10"),
        ];
        assert_eq!(
            release_order(batch(&events)),
            ["c10", "u10", "u3", "c11", "u11", "d10"]
        );
    }

    #[test]
    fn a_batch_puts_creations_in_number_order_and_their_events_after_them() {
        let events = [
            (6, true, "c6"),
            (6, false, "u6"),
            (2, false, "u2"),
            (5, true, "c5"),
            (5, false, "u5"),
            (7, true, "c7"),
        ];
        assert_eq!(
            release_order(batch(&events)),
            ["u2", "c5", "c6", "u6", "u5", "c7"]
        );
    }

    #[test]
    fn what_a_cursor_named_between_two_events_of_the_chat_is_dropped() {
        // A client's cursor may name a sequence that is not this chat's (sequences are global).
        let mut c = Cursor::parse("10.12.30").unwrap();
        assert!(
            c.receive(14, 10),
            "12 lies between 10 and 14: not the chat's"
        );
        assert_eq!(c.to_string(), "14.30");
        assert!(c.receive(31, 14), "30 lies between 14 and 31");
        assert_eq!(c.to_string(), "31");
    }

    #[test]
    fn a_later_hold_that_ends_first_releases_the_lower_ones_before_it() {
        let t = Instant::now();
        let mut r = Reorder::new(Duration::from_millis(100)).after(0);
        push(&mut r, 1, true, "c1", t);
        push(&mut r, 5, true, "c5", t + Duration::from_millis(50));
        push(&mut r, 3, true, "c3", t);
        let mut out = Vec::new();
        r.expire(t + Duration::from_millis(100), &mut out);
        assert_eq!(out, ["c3"]);
        r.expire(t + Duration::from_millis(150), &mut out);
        assert_eq!(out, ["c3", "c5"]);
        assert_eq!(push(&mut r, 6, true, "c6", t), ["c6"]);
    }
}
