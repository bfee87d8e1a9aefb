//! What a batch of events becomes in MySQL — pure, no I/O.
//!
//! Chat creations and message writes are reduced to two sets of rows:
//! - the chats a batch needs (every chat created, and every chat a message refers to — the api
//!   only accepts a message for a chat that exists, so the event itself proves the chat);
//! - message upserts, each versioned by its event's stream sequence, so that creates and updates
//!   applied in any order, any number of times, leave the body of the highest sequence;
//! - the creation event that claims each created row ([`Claim`]): a row belongs to the creation
//!   event that made it, and another creation event for the same number is a conflict, never an
//!   overwrite. Two creation events for one number in one batch: the first in the stream wins and
//!   the other is listed in [`Plan::conflicts`];
//! - deletions: a deleted message is a write like the others, with an empty body, a deletion
//!   time and a version above every update's ([`confab_core::event::write_version`]), so it is
//!   final in any order; a deleted chat is a tombstone on its row, and the store drops every
//!   message write for a chat that is deleted ([`Plan::retain_live_chats`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use confab_core::event::write_version;
use confab_core::{Envelope, Event};
use uuid::Uuid;

/// One decoded event and where it sits in the stream.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub stream_sequence: u64,
    pub envelope: Envelope,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChatKey {
    pub application_id: u64,
    pub number: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageUpsert {
    pub chat: ChatKey,
    pub number: u64,
    pub body: String,
    pub version: u64,
    pub at: DateTime<Utc>,
    /// The creation event of this message in the batch, if there is one.
    pub creation: Option<Uuid>,
    /// A deletion: the body is empty and `at` is when the message was deleted.
    pub deleted: bool,
}

/// A creation event's claim on the row of its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub event_id: Uuid,
    pub stream_sequence: u64,
}

/// Which sequence numbers a row: an application's chats, or a chat's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SequenceOf {
    Chats(u64),
    Messages(u64, u64),
}

/// A created row's identity: a chat (`message: None`) or a message of a chat.
pub type Created = (ChatKey, Option<u64>);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Chats to ensure, with the earliest time the batch saw for each. Sorted (lock order).
    pub chats: BTreeMap<ChatKey, DateTime<Utc>>,
    /// The creation event that claims each chat or message this batch creates.
    pub claims: BTreeMap<Created, Claim>,
    /// Stream sequences of creation events that lost to another creation of the same number in
    /// this batch.
    pub conflicts: Vec<u64>,
    /// Chats that received message writes (their `messages_count` may change). Sorted.
    pub counted_chats: Vec<ChatKey>,
    /// Chats deleted by this batch, with the time of the (first) deletion.
    pub deleted_chats: BTreeMap<ChatKey, DateTime<Utc>>,
    /// Message rows, at most one per (chat, number): the highest version in the batch wins here
    /// already, and the database keeps the highest version across batches. Sorted (lock order).
    pub messages: Vec<MessageUpsert>,
}

/// The row an event creates, if it is a creation.
fn created(event: &Event) -> Option<Created> {
    match event {
        Event::ChatCreated(c) => Some((
            ChatKey {
                application_id: c.application_id,
                number: c.number,
            },
            None,
        )),
        Event::MessageCreated(m) => Some((
            ChatKey {
                application_id: m.application_id,
                number: m.chat_number,
            },
            Some(m.number),
        )),
        Event::MessageUpdated(_) | Event::MessageDeleted(_) | Event::ChatDeleted(_) => None,
    }
}

/// Reduces a batch of events to the rows to write.
pub fn plan<'a>(events: impl IntoIterator<Item = &'a Sequenced> + Clone) -> Plan {
    // First the claims: per created row, the creation event first in the stream.
    let mut claims: BTreeMap<Created, Claim> = BTreeMap::new();
    for e in events.clone() {
        if let Some(row) = created(&e.envelope.event) {
            let claim = Claim {
                event_id: e.envelope.id,
                stream_sequence: e.stream_sequence,
            };
            claims
                .entry(row)
                .and_modify(|c| {
                    if claim.stream_sequence < c.stream_sequence {
                        *c = claim;
                    }
                })
                .or_insert(claim);
        }
    }
    let mut conflicts = BTreeSet::new();
    let mut chats: BTreeMap<ChatKey, DateTime<Utc>> = BTreeMap::new();
    let mut messages: BTreeMap<(ChatKey, u64), MessageUpsert> = BTreeMap::new();
    let mut counted_chats = BTreeSet::new();
    let mut deleted_chats: BTreeMap<ChatKey, DateTime<Utc>> = BTreeMap::new();
    for e in events {
        if let Some(row) = created(&e.envelope.event) {
            if claims
                .get(&row)
                .is_some_and(|c| c.event_id != e.envelope.id)
            {
                conflicts.insert(e.stream_sequence);
                continue;
            }
        }
        let at = e.envelope.occurred_at;
        let mut need_chat = |key: ChatKey| {
            chats
                .entry(key)
                .and_modify(|t| *t = (*t).min(at))
                .or_insert(at);
        };
        let version = write_version(&e.envelope.event, e.stream_sequence);
        let (chat, number, body) = match &e.envelope.event {
            Event::ChatCreated(c) => {
                need_chat(ChatKey {
                    application_id: c.application_id,
                    number: c.number,
                });
                continue;
            }
            Event::ChatDeleted(c) => {
                let chat = ChatKey {
                    application_id: c.application_id,
                    number: c.number,
                };
                // The tombstone needs the row (its creation may not have been applied yet).
                need_chat(chat.clone());
                deleted_chats
                    .entry(chat)
                    .and_modify(|t| *t = (*t).min(at))
                    .or_insert(at);
                continue;
            }
            Event::MessageCreated(m) | Event::MessageUpdated(m) => (
                ChatKey {
                    application_id: m.application_id,
                    number: m.chat_number,
                },
                m.number,
                m.body.as_str(),
            ),
            Event::MessageDeleted(m) => (
                ChatKey {
                    application_id: m.application_id,
                    number: m.chat_number,
                },
                m.number,
                "",
            ),
        };
        need_chat(chat.clone());
        // An update or a deletion can insert a row too (its create lost or not yet applied), so
        // every message write marks its chat; a recount is idempotent.
        counted_chats.insert(chat.clone());
        let creation = claims
            .get(&(chat.clone(), Some(number)))
            .map(|c| c.event_id);
        let row = MessageUpsert {
            chat: chat.clone(),
            number,
            body: body.to_owned(),
            version,
            at,
            creation,
            deleted: matches!(e.envelope.event, Event::MessageDeleted(_)),
        };
        messages
            .entry((chat, number))
            .and_modify(|existing| {
                if row.version > existing.version {
                    *existing = row.clone();
                }
            })
            .or_insert(row);
    }
    Plan {
        chats,
        claims,
        conflicts: conflicts.into_iter().collect(),
        counted_chats: counted_chats.into_iter().collect(),
        deleted_chats,
        messages: messages.into_values().collect(),
    }
}

impl Plan {
    /// The highest number created per sequence. The persister raises the Redis sequences to
    /// these after the commit.
    pub fn created_maxima(&self) -> BTreeMap<SequenceOf, u64> {
        let mut maxima = BTreeMap::new();
        for (chat, message) in self.claims.keys() {
            let (sequence, number) = match message {
                None => (SequenceOf::Chats(chat.application_id), chat.number),
                Some(number) => (
                    SequenceOf::Messages(chat.application_id, chat.number),
                    *number,
                ),
            };
            let max = maxima.entry(sequence).or_insert(number);
            *max = (*max).max(number);
        }
        maxima
    }

    /// The applications this plan writes to, ascending.
    pub fn applications(&self) -> Vec<u64> {
        let mut apps: Vec<u64> = self.chats.keys().map(|k| k.application_id).collect();
        apps.dedup();
        apps
    }

    /// The applications whose existing items this plan changes (edits, deletions), ascending:
    /// their reads stay on the primary while a replica may not show the change yet.
    pub fn changed_applications(&self) -> Vec<u64> {
        let mut apps: Vec<u64> = self
            .deleted_chats
            .keys()
            .map(|k| k.application_id)
            .chain(
                self.messages
                    .iter()
                    .filter(|m| m.deleted || m.creation.is_none())
                    .map(|m| m.chat.application_id),
            )
            .collect();
        apps.sort_unstable();
        apps.dedup();
        apps
    }

    /// Drops every row of the given (deleted) applications: events still in flight when an
    /// application was deleted must not bring its chats back.
    pub fn retain_applications(&mut self, deleted: &[u64]) {
        let keep = |key: &ChatKey| !deleted.contains(&key.application_id);
        self.chats.retain(|key, _| keep(key));
        self.claims.retain(|(key, _), _| keep(key));
        self.counted_chats.retain(keep);
        self.deleted_chats.retain(|key, _| keep(key));
        self.messages.retain(|m| keep(&m.chat));
    }

    /// Drops every message write to the given (deleted) chats, and their claims: a message of a
    /// deleted chat, whenever it was written, is gone with the chat. The chats' own rows stay
    /// (their tombstones).
    pub fn retain_live_chats(&mut self, deleted: &[ChatKey]) {
        let keep = |key: &ChatKey| !deleted.contains(key);
        self.claims
            .retain(|(key, message), _| message.is_none() || keep(key));
        self.counted_chats.retain(keep);
        self.messages.retain(|m| keep(&m.chat));
    }
}

/// Splits rows into chunks that keep one statement under `max_rows` rows and `max_bytes` of
/// body text (MySQL's `max_allowed_packet` bounds a statement).
pub fn chunks(rows: &[MessageUpsert], max_rows: usize, max_bytes: usize) -> Vec<&[MessageUpsert]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let full = i > start && (i - start >= max_rows || bytes + row.body.len() > max_bytes);
        if full {
            out.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += row.body.len();
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_core::event::{ChatCreated, MessageWritten};

    fn ev(seq: u64, event: Event) -> Sequenced {
        Sequenced {
            stream_sequence: seq,
            envelope: Envelope::new(event),
        }
    }

    #[test]
    fn rows_of_deleted_applications_are_dropped() {
        let other = MessageWritten {
            application_id: 2,
            ..msg(1, 1, "b")
        };
        let mut p = plan(&[
            ev(1, Event::MessageCreated(msg(1, 1, "a"))),
            ev(2, Event::MessageCreated(other)),
        ]);
        assert_eq!(p.applications(), vec![1, 2]);
        p.retain_applications(&[1]);
        assert_eq!(p.applications(), vec![2]);
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.counted_chats.len(), 1);
    }

    #[test]
    fn edits_and_deletions_change_their_application_creations_do_not() {
        use confab_core::event::{ChatDeleted, MessageDeleted};
        let of = |application_id, m: MessageWritten| MessageWritten {
            application_id,
            ..m
        };
        let p = plan(&[
            ev(1, Event::MessageCreated(of(1, msg(1, 1, "new")))),
            ev(2, Event::MessageUpdated(of(2, msg(1, 1, "edited")))),
            ev(
                3,
                Event::MessageDeleted(MessageDeleted {
                    application_id: 3,
                    chat_number: 1,
                    number: 1,
                }),
            ),
            ev(
                4,
                Event::ChatDeleted(ChatDeleted {
                    application_id: 4,
                    number: 1,
                }),
            ),
            // Created and edited in one batch: no reader saw the first body.
            ev(5, Event::MessageCreated(of(5, msg(1, 1, "a")))),
            ev(6, Event::MessageUpdated(of(5, msg(1, 1, "b")))),
        ]);
        assert_eq!(p.changed_applications(), vec![2, 3, 4]);
    }

    fn msg(chat: u64, number: u64, body: &str) -> MessageWritten {
        MessageWritten {
            application_id: 1,
            chat_number: chat,
            number,
            body: body.into(),
        }
    }

    #[test]
    fn messages_imply_their_chat_and_duplicates_collapse() {
        let p = plan(&[
            ev(
                1,
                Event::ChatCreated(ChatCreated {
                    application_id: 1,
                    number: 1,
                }),
            ),
            ev(2, Event::MessageCreated(msg(1, 1, "a"))),
            ev(3, Event::MessageCreated(msg(2, 1, "b"))),
            ev(2, Event::MessageCreated(msg(1, 1, "a"))),
        ]);
        assert_eq!(p.chats.len(), 2);
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.counted_chats.len(), 2);
    }

    #[test]
    fn the_highest_sequence_wins_whatever_the_order() {
        let p = plan(&[
            ev(9, Event::MessageUpdated(msg(1, 1, "new"))),
            ev(5, Event::MessageCreated(msg(1, 1, "old"))),
        ]);
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.messages[0].body, "new");
        assert_eq!(p.messages[0].version, 9);
        // An update may insert the row, so it marks its chat too.
        let p = plan(&[ev(9, Event::MessageUpdated(msg(1, 1, "new")))]);
        assert_eq!(p.counted_chats.len(), 1);
    }

    #[test]
    fn a_deletion_is_final_whatever_the_order_and_a_deleted_chat_drops_its_messages() {
        use confab_core::event::{ChatDeleted, MessageDeleted, DELETION_VERSION};
        let created = ev(4, Event::MessageCreated(msg(1, 1, "hello")));
        let deleted = ev(
            5,
            Event::MessageDeleted(MessageDeleted {
                application_id: 1,
                chat_number: 1,
                number: 1,
            }),
        );
        let late_update = ev(9, Event::MessageUpdated(msg(1, 1, "edited")));
        for events in [
            vec![created.clone(), deleted.clone(), late_update.clone()],
            vec![late_update.clone(), deleted.clone(), created.clone()],
        ] {
            let p = plan(&events);
            assert_eq!(p.messages.len(), 1);
            assert!(p.messages[0].deleted);
            assert_eq!(p.messages[0].body, "");
            assert_eq!(p.messages[0].version, DELETION_VERSION + 5);
            // The row still belongs to its creation event (a second creation stays a conflict).
            assert_eq!(p.messages[0].creation, Some(created.envelope.id));
            assert_eq!(p.counted_chats.len(), 1);
        }
        let chat_deleted = ev(
            10,
            Event::ChatDeleted(ChatDeleted {
                application_id: 1,
                number: 1,
            }),
        );
        let mut p = plan(&[created, chat_deleted, late_update]);
        assert_eq!(p.deleted_chats.len(), 1);
        assert_eq!(p.chats.len(), 1);
        let chat = p.deleted_chats.keys().next().unwrap().clone();
        p.retain_live_chats(&[chat]);
        assert!(p.messages.is_empty());
        assert!(p.counted_chats.is_empty());
        assert!(p.claims.is_empty());
        assert_eq!(p.chats.len(), 1, "the tombstone keeps its row");
    }

    #[test]
    fn a_second_creation_of_a_number_is_a_conflict_not_an_overwrite() {
        let first = ev(4, Event::MessageCreated(msg(1, 1, "first")));
        let second = ev(7, Event::MessageCreated(msg(1, 1, "second")));
        let update = ev(9, Event::MessageUpdated(msg(1, 1, "edited")));
        // Whatever the delivery order, the creation first in the stream claims the row.
        for events in [
            vec![second.clone(), first.clone()],
            vec![first.clone(), second.clone(), first.clone()],
        ] {
            let p = plan(&events);
            assert_eq!(p.conflicts, vec![7]);
            assert_eq!(p.messages.len(), 1);
            assert_eq!(p.messages[0].body, "first");
            assert_eq!(p.messages[0].creation, Some(first.envelope.id));
        }
        // Updates still apply on top of the winner.
        let p = plan(&[second, update, first.clone()]);
        assert_eq!(p.messages[0].body, "edited");
        assert_eq!(p.messages[0].creation, Some(first.envelope.id));
        // A redelivered creation is not a conflict with itself.
        assert!(plan(&[first.clone(), first]).conflicts.is_empty());
    }

    #[test]
    fn created_maxima_follow_each_sequence() {
        let chat = |n| {
            ev(
                n,
                Event::ChatCreated(ChatCreated {
                    application_id: 1,
                    number: n,
                }),
            )
        };
        let p = plan(&[
            chat(3),
            chat(5),
            ev(10, Event::MessageCreated(msg(5, 8, "a"))),
            ev(11, Event::MessageCreated(msg(5, 6, "b"))),
            ev(12, Event::MessageUpdated(msg(2, 99, "c"))),
        ]);
        let maxima: Vec<_> = p.created_maxima().into_iter().collect();
        assert_eq!(
            maxima,
            vec![(SequenceOf::Chats(1), 5), (SequenceOf::Messages(1, 5), 8)]
        );
    }

    #[test]
    fn chunks_respect_rows_and_bytes() {
        let rows: Vec<_> = (0..10)
            .map(|n| MessageUpsert {
                chat: ChatKey {
                    application_id: 1,
                    number: 1,
                },
                number: n,
                body: "x".repeat(10),
                version: n,
                at: Utc::now(),
                creation: None,
                deleted: false,
            })
            .collect();
        let by_rows = chunks(&rows, 4, usize::MAX);
        assert_eq!(
            by_rows.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let by_bytes = chunks(&rows, 100, 25);
        assert_eq!(
            by_bytes.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![2, 2, 2, 2, 2]
        );
        // A single row over the byte budget still goes out, alone.
        assert_eq!(chunks(&rows[..1], 100, 1).len(), 1);
        assert!(chunks(&[], 4, 4).is_empty());
    }
}
