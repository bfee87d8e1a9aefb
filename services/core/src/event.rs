//! The event contract between the api and the services that consume JetStream.
//!
//! Events are self-describing JSON envelopes (`version`, `id`, `type`, `occurred_at`, `data`).
//! A consumer that meets a `version` it does not know dead-letters the event rather than guess.
//! Headers carry what routing and tracing need without parsing the body: the dedup id
//! (`Nats-Msg-Id`), the event type and version, and the W3C trace context (`traceparent`,
//! `tracestate`, written by OpenTelemetry's propagator in `confab-runtime`).
//!
//! Subjects (with the configurable prefix `p`, default `confab`):
//!
//! | subject | event |
//! |---|---|
//! | `p.v1.chat.created.{app}.{number}` | [`Event::ChatCreated`] |
//! | `p.v1.message.created.{app}.{chat}.{number}` | [`Event::MessageCreated`] |
//! | `p.v1.message.updated.{app}.{chat}.{number}` | [`Event::MessageUpdated`] |
//! | `p.v1.message.deleted.{app}.{chat}.{number}` | [`Event::MessageDeleted`] |
//! | `p.v1.chat.deleted.{app}.{number}` | [`Event::ChatDeleted`] |
//! | `p.dlq.<original subject>` | dead letters (separate stream) |
//!
//! Every creation event has a subject of its own, one per (parent, number). The api publishes it
//! with `Nats-Expected-Last-Subject-Sequence: 0`, so the stream itself refuses a second creation
//! event for a number while the first is retained ([`crate::sequence`] says why that is enough
//! once the events stream drops what every consumer acked). The numbers in flight for a parent
//! are the subjects under the parent's wildcard (`…created.{app}.*`), listed by one stream-info
//! request.
//!
//! The live stream sources every message event under `p.live.{app}.{chat}`
//! ([`Subjects::live_transform`]): one subject per chat, kept for the live window, from which
//! live delivery follows and replays a chat.
//!
//! Deletions have a subject per deleted item too, so "is a deletion of this item stored?" is one
//! lookup, and they dedup on the item. A deletion is final: consumers version every write of a
//! message by its stream sequence, and a deletion by [`DELETION_VERSION`] plus its sequence, so no
//! update can ever outrank it, whatever the order of delivery ([`write_version`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The envelope version this code writes and understands.
pub const EVENT_VERSION: u32 = 1;

/// Header names. `Nats-Msg-Id` is JetStream's own dedup header.
pub mod headers {
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// JetStream's optimistic-concurrency header; `0` means "no message on this subject yet".
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
    pub const DLQ_REASON: &str = "Confab-Dead-Letter-Reason";
    /// The reason's class, one of the `reason` label values of
    /// `confab_events_dead_lettered_total` (`undecodable`, `rejected`, `exhausted`,
    /// `number_conflict`).
    pub const DLQ_CLASS: &str = "Confab-Dead-Letter-Class";
    pub const DLQ_SERVICE: &str = "Confab-Dead-Letter-Service";
    pub const DLQ_STREAM_SEQUENCE: &str = "Confab-Dead-Letter-Stream-Sequence";
}

/// One event as stored in the stream: `{"version", "id", "occurred_at", "type", "data"}`, the
/// last two being [`Event`]'s adjacent tagging. Its serde is written out ([`wire`]) rather than
/// derived with `#[serde(flatten)]`, which buffers every field of every event into an
/// intermediate tree on the way in and goes through a map serializer on the way out.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub version: u32,
    /// Unique per publish attempt sequence (a retried publish keeps its id).
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub event: Event,
}

/// An event; in the envelope, `type` is [`EventKind::as_str`] and `data` the variant's fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ChatCreated(ChatCreated),
    MessageCreated(MessageWritten),
    MessageUpdated(MessageWritten),
    MessageDeleted(MessageDeleted),
    ChatDeleted(ChatDeleted),
}

/// Versions at or above this are deletions: every deletion outranks every other write of the
/// same message (stream sequences stay far below 2^62).
pub const DELETION_VERSION: u64 = 1 << 62;

/// The version of a write to a message carried by `event` at `stream_sequence`: the sequence,
/// or [`DELETION_VERSION`] plus it for a deletion, so a deletion is never overwritten.
pub fn write_version(event: &Event, stream_sequence: u64) -> u64 {
    match event {
        Event::MessageDeleted(_) | Event::ChatDeleted(_) => DELETION_VERSION + stream_sequence,
        _ => stream_sequence,
    }
}

/// A message deleted by its tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageDeleted {
    pub application_id: u64,
    pub chat_number: u64,
    pub number: u64,
}

/// A chat deleted by its tenant, with all its messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatDeleted {
    pub application_id: u64,
    pub number: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCreated {
    pub application_id: u64,
    pub number: u64,
}

/// A message's body as of this event (create and update carry the same shape, so consumers apply
/// both as one last-writer-wins upsert ordered by stream sequence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageWritten {
    pub application_id: u64,
    pub chat_number: u64,
    pub number: u64,
    pub body: String,
}

/// The kind of an event, for metric labels and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    ChatCreated,
    MessageCreated,
    MessageUpdated,
    MessageDeleted,
    ChatDeleted,
}

impl EventKind {
    pub const ALL: [Self; 5] = [
        Self::ChatCreated,
        Self::MessageCreated,
        Self::MessageUpdated,
        Self::MessageDeleted,
        Self::ChatDeleted,
    ];
    /// The names of [`Self::ALL`], in order (the `type` of the envelope).
    pub const NAMES: [&'static str; 5] = [
        "chat.created",
        "message.created",
        "message.updated",
        "message.deleted",
        "chat.deleted",
    ];

    /// The name in the envelope's `type`, metric labels and span names.
    pub fn as_str(self) -> &'static str {
        // The variants are declared in the order of `ALL` and `NAMES`.
        Self::NAMES[self as usize]
    }

    /// The name of the span that publishes an event of this kind (`publish <kind>`), a constant
    /// so the request path formats nothing.
    pub fn publish_span_name(self) -> &'static str {
        match self {
            Self::ChatCreated => "publish chat.created",
            Self::MessageCreated => "publish message.created",
            Self::MessageUpdated => "publish message.updated",
            Self::MessageDeleted => "publish message.deleted",
            Self::ChatDeleted => "publish chat.deleted",
        }
    }
}

impl Event {
    /// The number a creation event claims, `None` for other events.
    pub fn created_number(&self) -> Option<u64> {
        match self {
            Self::ChatCreated(c) => Some(c.number),
            Self::MessageCreated(m) => Some(m.number),
            Self::MessageUpdated(_) | Self::MessageDeleted(_) | Self::ChatDeleted(_) => None,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Self::ChatCreated(_) => EventKind::ChatCreated,
            Self::MessageCreated(_) => EventKind::MessageCreated,
            Self::MessageUpdated(_) => EventKind::MessageUpdated,
            Self::MessageDeleted(_) => EventKind::MessageDeleted,
            Self::ChatDeleted(_) => EventKind::ChatDeleted,
        }
    }
}

/// Why an event cannot be decoded. Such events are dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event is not valid json for the envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported event version {0}")]
    UnsupportedVersion(u32),
}

impl Envelope {
    pub fn new(event: Event) -> Self {
        Self::made_at(event, Utc::now())
    }

    /// An envelope made at `occurred_at`. A creation's is read before its number is taken, so
    /// that "stored more than the horizon after `occurred_at`" also means "more than the horizon
    /// after its number was taken" ([`crate::sequence`], rule 4).
    pub fn made_at(event: Event, occurred_at: DateTime<Utc>) -> Self {
        Self {
            version: EVENT_VERSION,
            id: Uuid::now_v7(),
            occurred_at,
            event,
        }
    }

    /// The JetStream dedup id (`Nats-Msg-Id`), for the events whose subject does not already
    /// make them unique. A creation has none: it is published to a subject of its own (parent,
    /// number) with `Nats-Expected-Last-Subject-Sequence: 0`, so the stream stores at most one
    /// creation per number (a second one, or a retry, is refused and compared with the stored
    /// one), which is what makes a number handed out twice detectable; a dedup id would only
    /// repeat that check at the cost of a dedup-window entry per message in the server.
    /// Deletions dedup on their item (deleting twice is deleting once); updates on the event
    /// id (publish retries only).
    pub fn dedup_id(&self) -> Option<String> {
        match &self.event {
            Event::ChatCreated(_) | Event::MessageCreated(_) => None,
            Event::MessageUpdated(_) => Some(format!("upd:{}", self.id)),
            Event::MessageDeleted(m) => Some(format!(
                "msg-del:{}:{}:{}",
                m.application_id, m.chat_number, m.number
            )),
            Event::ChatDeleted(c) => Some(format!("chat-del:{}:{}", c.application_id, c.number)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Sized for the envelope around a short body (a message's is 295 bytes with a 100-byte
        // body): `serde_json::to_vec` starts at 128 bytes and grew its buffer twice on the way.
        let mut out = Vec::with_capacity(ENCODED_CAPACITY);
        serde_json::to_writer(&mut out, self).expect("an envelope always serializes");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        // A future shape fails as "unsupported", not "malformed": the version is looked at when
        // the envelope does not parse.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let envelope =
            serde_json::from_slice::<Self>(bytes).map_err(
                |error| match serde_json::from_slice::<Version>(bytes) {
                    Ok(v) if v.version != EVENT_VERSION => {
                        DecodeError::UnsupportedVersion(v.version)
                    }
                    _ => DecodeError::Malformed(error),
                },
            )?;
        if envelope.version != EVENT_VERSION {
            return Err(DecodeError::UnsupportedVersion(envelope.version));
        }
        Ok(envelope)
    }
}

/// The buffer [`Envelope::encode`] starts with: the envelope's fields (about 200 bytes) and a
/// body of up to about 300.
const ENCODED_CAPACITY: usize = 512;

/// Subject names under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// `{prefix}{kind}.{number}….{tail}`, built without `format!` (subjects are built on every
    /// request).
    fn name(&self, kind: &str, numbers: &[u64], tail: &str) -> String {
        crate::name::join(&self.prefix, kind, '.', numbers, tail)
    }

    /// The filter of the events stream.
    pub fn all_events(&self) -> String {
        format!("{}.v1.>", self.prefix)
    }

    /// The filter of the api's idempotency records stream.
    pub fn all_idempotency_records(&self) -> String {
        format!("{}.idem.>", self.prefix)
    }

    /// The subject of one idempotency record (`key` is a hex digest).
    pub fn idempotency_record(&self, key: &str) -> String {
        format!("{}.idem.{key}", self.prefix)
    }

    /// The filter of the dead-letter stream.
    pub fn all_dead_letters(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// The subject of one chat's creation event.
    pub fn chat_created(&self, application_id: u64, number: u64) -> String {
        self.name(".v1.chat.created", &[application_id, number], "")
    }

    /// Every chat creation of one application (sequence recovery).
    pub fn chats_created(&self, application_id: u64) -> String {
        self.name(".v1.chat.created", &[application_id], ".*")
    }

    /// The subject of one message's creation event.
    pub fn message_created(&self, application_id: u64, chat_number: u64, number: u64) -> String {
        self.name(
            ".v1.message.created",
            &[application_id, chat_number, number],
            "",
        )
    }

    /// Every message creation of one chat (sequence recovery).
    pub fn messages_created(&self, application_id: u64, chat_number: u64) -> String {
        self.name(".v1.message.created", &[application_id, chat_number], ".*")
    }

    /// The subject of one message's updates.
    pub fn message_updated(&self, application_id: u64, chat_number: u64, number: u64) -> String {
        self.name(
            ".v1.message.updated",
            &[application_id, chat_number, number],
            "",
        )
    }

    /// The subject of one message's deletion.
    pub fn message_deleted(&self, application_id: u64, chat_number: u64, number: u64) -> String {
        self.name(
            ".v1.message.deleted",
            &[application_id, chat_number, number],
            "",
        )
    }

    /// The subject of one chat's deletion.
    pub fn chat_deleted(&self, application_id: u64, number: u64) -> String {
        self.name(".v1.chat.deleted", &[application_id, number], "")
    }

    /// Message events only (created, updated and deleted), for consumers such as the indexer.
    pub fn all_message_events(&self) -> String {
        format!("{}.v1.message.>", self.prefix)
    }

    /// The filter of the live stream: `{prefix}.live.{app}.{chat}`, one subject per chat.
    pub fn all_live(&self) -> String {
        format!("{}.live.>", self.prefix)
    }

    /// The live stream's subject of one chat: every message event of the chat (creations,
    /// updates, deletions), in the order the events stream stored them.
    pub fn live_chat(&self, application_id: u64, chat_number: u64) -> String {
        self.name(".live", &[application_id, chat_number], "")
    }

    /// How the live stream sources the events stream: every message event
    /// (`p.v1.message.{kind}.{app}.{chat}.{number}`) becomes `p.live.{app}.{chat}`, so the live
    /// stream holds one subject per chat, not one per message ([`crate::sequence`]). Returns
    /// (source filter, destination).
    pub fn live_transform(&self) -> (String, String) {
        (
            format!("{}.v1.message.*.*.*.*", self.prefix),
            format!(
                "{}.live.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}",
                self.prefix
            ),
        )
    }

    /// The (application, chat) of a live stream subject (`p.live.{app}.{chat}`), without
    /// decoding the event; `None` for anything else.
    pub fn chat_of_live(&self, subject: &str) -> Option<(u64, u64)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".live.")?;
        let (app, chat) = rest.split_once('.')?;
        Some((app.parse().ok()?, chat.parse().ok()?))
    }

    /// The number a creation subject (`….created.{parent…}.{number}`) names.
    pub fn created_number_of(subject: &str) -> Option<u64> {
        subject.rsplit_once('.')?.1.parse().ok()
    }

    pub fn for_event(&self, event: &Event) -> String {
        match event {
            Event::ChatCreated(c) => self.chat_created(c.application_id, c.number),
            Event::MessageCreated(m) => {
                self.message_created(m.application_id, m.chat_number, m.number)
            }
            Event::MessageUpdated(m) => {
                self.message_updated(m.application_id, m.chat_number, m.number)
            }
            Event::MessageDeleted(m) => {
                self.message_deleted(m.application_id, m.chat_number, m.number)
            }
            Event::ChatDeleted(c) => self.chat_deleted(c.application_id, c.number),
        }
    }

    /// Where an event that can never be applied goes, keeping its original subject visible.
    pub fn dead_letter(&self, original_subject: &str) -> String {
        let rest = original_subject
            .strip_prefix(&format!("{}.", self.prefix))
            .unwrap_or(original_subject);
        format!("{}.dlq.{rest}", self.prefix)
    }
}

/// [`Envelope`]'s serde, field by field.
mod wire {
    use std::fmt;

    use chrono::{DateTime, Utc};
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use serde::ser::SerializeStruct;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{
        ChatCreated, ChatDeleted, Envelope, Event, EventKind, MessageDeleted, MessageWritten,
    };

    struct Rfc3339<'a>(&'a DateTime<Utc>);

    impl Serialize for Rfc3339<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            crate::time::rfc3339(self.0, serializer)
        }
    }

    impl Serialize for Envelope {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut s = serializer.serialize_struct("Envelope", 5)?;
            s.serialize_field("version", &self.version)?;
            s.serialize_field("id", &self.id)?;
            s.serialize_field("occurred_at", &Rfc3339(&self.occurred_at))?;
            s.serialize_field("type", self.event.kind().as_str())?;
            match &self.event {
                Event::ChatCreated(data) => s.serialize_field("data", data)?,
                Event::MessageCreated(data) | Event::MessageUpdated(data) => {
                    s.serialize_field("data", data)?
                }
                Event::MessageDeleted(data) => s.serialize_field("data", data)?,
                Event::ChatDeleted(data) => s.serialize_field("data", data)?,
            }
            s.end()
        }
    }

    #[derive(Deserialize)]
    #[serde(field_identifier, rename_all = "snake_case")]
    enum Field {
        Version,
        Id,
        OccurredAt,
        Type,
        Data,
        #[serde(other)]
        Other,
    }

    /// `type`, one of the [`EventKind::as_str`] names.
    struct KindName;

    impl Visitor<'_> for KindName {
        type Value = EventKind;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an event type")
        }

        fn visit_str<E: de::Error>(self, name: &str) -> Result<EventKind, E> {
            EventKind::ALL
                .into_iter()
                .find(|kind| kind.as_str() == name)
                .ok_or_else(|| E::unknown_variant(name, &EventKind::NAMES))
        }
    }

    impl<'de> DeserializeSeed<'de> for KindName {
        type Value = EventKind;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EventKind, D::Error> {
            d.deserialize_str(self)
        }
    }

    /// Reads `data` as the event `type` names.
    struct DataOf(EventKind);

    impl<'de> DeserializeSeed<'de> for DataOf {
        type Value = Event;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
            Ok(match self.0 {
                EventKind::ChatCreated => Event::ChatCreated(ChatCreated::deserialize(d)?),
                EventKind::MessageCreated => Event::MessageCreated(MessageWritten::deserialize(d)?),
                EventKind::MessageUpdated => Event::MessageUpdated(MessageWritten::deserialize(d)?),
                EventKind::MessageDeleted => Event::MessageDeleted(MessageDeleted::deserialize(d)?),
                EventKind::ChatDeleted => Event::ChatDeleted(ChatDeleted::deserialize(d)?),
            })
        }
    }

    impl<'de> Deserialize<'de> for Envelope {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            const FIELDS: &[&str] = &["version", "id", "occurred_at", "type", "data"];
            d.deserialize_struct("Envelope", FIELDS, EnvelopeVisitor)
        }
    }

    struct EnvelopeVisitor;

    impl<'de> Visitor<'de> for EnvelopeVisitor {
        type Value = Envelope;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an event envelope")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
            let (mut version, mut id, mut occurred_at, mut kind) = (None, None, None, None);
            let (mut event, mut early) = (None, None::<serde_json::Value>);
            while let Some(field) = map.next_key()? {
                match field {
                    Field::Version => version = Some(map.next_value()?),
                    Field::Id => id = Some(map.next_value()?),
                    Field::OccurredAt => occurred_at = Some(map.next_value()?),
                    Field::Type => kind = Some(map.next_value_seed(KindName)?),
                    // Read in place when the type came first (as this module writes it); kept
                    // as a value until the type is known otherwise.
                    Field::Data => match kind {
                        Some(kind) => event = Some(map.next_value_seed(DataOf(kind))?),
                        None => early = Some(map.next_value()?),
                    },
                    Field::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
            let event = match (event, early) {
                (Some(event), _) => event,
                (None, Some(data)) => DataOf(kind).deserialize(data).map_err(de::Error::custom)?,
                (None, None) => return Err(de::Error::missing_field("data")),
            };
            Ok(Envelope {
                version: version.ok_or_else(|| de::Error::missing_field("version"))?,
                id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                occurred_at: occurred_at.ok_or_else(|| de::Error::missing_field("occurred_at"))?,
                event,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: fn(MessageWritten) -> Event) -> Envelope {
        Envelope::new(kind(MessageWritten {
            application_id: 7,
            chat_number: 3,
            number: 42,
            body: "hello".into(),
        }))
    }

    #[test]
    fn envelope_round_trips_and_is_self_describing() {
        let e = message(Event::MessageCreated);
        let json: serde_json::Value = serde_json::from_slice(&e.encode()).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["type"], "message.created");
        assert_eq!(json["data"]["body"], "hello");
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn every_event_type_has_its_name_and_round_trips() {
        let written = || MessageWritten {
            application_id: 7,
            chat_number: 3,
            number: 42,
            body: "hello".into(),
        };
        let events = [
            (
                Event::ChatCreated(ChatCreated {
                    application_id: 7,
                    number: 3,
                }),
                "chat.created",
            ),
            (Event::MessageCreated(written()), "message.created"),
            (Event::MessageUpdated(written()), "message.updated"),
            (
                Event::MessageDeleted(MessageDeleted {
                    application_id: 7,
                    chat_number: 3,
                    number: 42,
                }),
                "message.deleted",
            ),
            (
                Event::ChatDeleted(ChatDeleted {
                    application_id: 7,
                    number: 3,
                }),
                "chat.deleted",
            ),
        ];
        for (event, name) in events {
            assert_eq!(event.kind().as_str(), name);
            let e = Envelope::new(event);
            let json: serde_json::Value = serde_json::from_slice(&e.encode()).unwrap();
            assert_eq!(json["type"], name);
            assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        }
        let unknown = String::from_utf8(message(Event::MessageCreated).encode())
            .unwrap()
            .replace("message.created", "message.exploded");
        assert!(matches!(
            Envelope::decode(unknown.as_bytes()),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn the_envelope_reads_in_any_field_order_and_skips_unknown_fields() {
        let e = message(Event::MessageUpdated);
        let text = String::from_utf8(e.encode()).unwrap();
        let at = |key: &str| text.find(&format!(r#""{key}":"#)).unwrap();
        let order = ["version", "id", "occurred_at", "type", "data"].map(at);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        let encoded: serde_json::Value = serde_json::from_str(&text).unwrap();
        let reordered = format!(
            r#"{{"data":{},"extra":[1,{{"x":2}}],"occurred_at":{},"type":"message.updated","id":{},"version":1}}"#,
            encoded["data"], encoded["occurred_at"], encoded["id"]
        );
        assert_eq!(Envelope::decode(reordered.as_bytes()).unwrap(), e);
        let untyped = reordered.replace(r#""type":"message.updated","#, "");
        assert!(matches!(
            Envelope::decode(untyped.as_bytes()),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_versions_and_garbage_are_rejected() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&message(Event::MessageCreated).encode()).unwrap();
        json["version"] = 2.into();
        let bytes = serde_json::to_vec(&json).unwrap();
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Envelope::decode(b"nope"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn creations_dedup_by_subject_and_updates_on_event_id() {
        let a = message(Event::MessageCreated);
        let b = message(Event::MessageCreated);
        assert_eq!(a.dedup_id(), None);
        // Two creations of one number share the subject the stream accepts once.
        let subjects = Subjects::new("confab");
        assert_eq!(subjects.for_event(&a.event), subjects.for_event(&b.event));
        assert_eq!(
            subjects.for_event(&a.event),
            subjects.message_created(7, 3, 42)
        );
        let u1 = message(Event::MessageUpdated);
        let u2 = message(Event::MessageUpdated);
        assert_ne!(u1.dedup_id(), u2.dedup_id());
    }

    #[test]
    fn a_deletion_outranks_every_write_and_dedups_on_its_item() {
        let deleted = |number| {
            Envelope::new(Event::MessageDeleted(MessageDeleted {
                application_id: 7,
                chat_number: 3,
                number,
            }))
        };
        let update = message(Event::MessageUpdated);
        // A deletion early in the stream still outranks an update late in it.
        assert!(write_version(&deleted(42).event, 5) > write_version(&update.event, 1 << 40));
        assert!(write_version(&deleted(42).event, 6) > write_version(&deleted(42).event, 5));
        assert_eq!(deleted(42).dedup_id(), deleted(42).dedup_id());
        assert_ne!(deleted(42).dedup_id(), deleted(41).dedup_id());
        let json: serde_json::Value = serde_json::from_slice(&deleted(42).encode()).unwrap();
        assert_eq!(json["type"], "message.deleted");
        assert_eq!(deleted(42).event.created_number(), None);
    }

    #[test]
    fn subjects_are_under_the_stream_filters() {
        let s = Subjects::new("t");
        assert_eq!(s.chat_created(1, 4), "t.v1.chat.created.1.4");
        assert_eq!(s.chats_created(1), "t.v1.chat.created.1.*");
        assert_eq!(s.message_created(1, 2, 3), "t.v1.message.created.1.2.3");
        assert_eq!(s.messages_created(1, 2), "t.v1.message.created.1.2.*");
        assert_eq!(s.message_updated(1, 2, 3), "t.v1.message.updated.1.2.3");
        assert_eq!(s.live_chat(1, 2), "t.live.1.2");
        assert_eq!(s.chat_of_live(&s.live_chat(1, 2)), Some((1, 2)));
        assert_eq!(s.all_live(), "t.live.>");
        for other in [
            "t.live.1",
            "t.v1.message.created.1.2.3",
            "u.live.1.2",
            "t.live.1.x",
        ] {
            assert_eq!(s.chat_of_live(other), None, "{other}");
        }
        assert_eq!(
            s.live_transform(),
            (
                "t.v1.message.*.*.*.*".to_owned(),
                "t.live.{{wildcard(2)}}.{{wildcard(3)}}".to_owned()
            )
        );
        assert_eq!(
            Subjects::created_number_of(&s.message_created(1, 2, 37)),
            Some(37)
        );
        assert_eq!(Subjects::created_number_of("t.v1.chat.created.1.x"), None);
        assert_eq!(s.message_deleted(1, 2, 3), "t.v1.message.deleted.1.2.3");
        assert_eq!(s.chat_deleted(1, 4), "t.v1.chat.deleted.1.4");
        assert_eq!(
            s.dead_letter("t.v1.chat.created.1.4"),
            "t.dlq.v1.chat.created.1.4"
        );
        assert_eq!(s.all_events(), "t.v1.>");
    }
}
