//! `Idempotency-Key`: a retried POST is not a second write (invariant 7).
//!
//! Stripe-style: the first request with a key records what it is about to write; a later request
//! with the same key and the same body answers what the first answered (the same number), from
//! any replica; the same key with another body is `422`. Records live in a JetStream stream
//! (`CONFAB_IDEMPOTENCY_STREAM`, one subject per key, kept `CONFAB_IDEMPOTENCY_TTL_SECS`, 24 h),
//! not in Redis: losing Redis must not turn a retry into a second message, and MySQL is not
//! written on the request path. "Create if absent" and "replace if unchanged" are atomic through
//! `Nats-Expected-Last-Subject-Sequence`, as for creation events.
//!
//! For chats and messages the record holds the event envelope *before* it is published. A retry
//! publishes that same envelope again: the stream either already has it (the first attempt was
//! stored, perhaps after its client gave up) or stores it now; either way the answer is the
//! recorded number. Because the creation subject accepts one event per number, a late copy of the
//! first attempt can never be stored beside a second number. For applications the record holds
//! the key under which the application row is inserted, so a retry finds that row.

use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use axum::http::HeaderMap;
use confab_core::event::headers;
use confab_core::Envelope;
use confab_runtime::jetstream::{JetStream, PublishFailure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Result};
use crate::metrics::Metrics;

pub const HEADER: &str = "idempotency-key";
/// Longest key accepted (Stripe's limit).
const MAX_KEY_LEN: usize = 255;

/// A request's idempotency key, scoped to what it writes, with its body's fingerprint.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The bucket key: a hash of the scope and the client's key (bucket keys allow few
    /// characters, and the client's key never reaches NATS as written).
    bucket_key: String,
    fingerprint: String,
}

impl IdempotencyKey {
    /// The request's key, if it sent one. `scope` names the resource written (the route and the
    /// parent it writes into), so one key reused on another chat is another request; `body` is
    /// the parsed request body, whose canonical JSON is the fingerprint.
    pub fn from_request(
        headers: &HeaderMap,
        scope: impl std::fmt::Display,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Self>> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
            .filter(|k| k.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
            .ok_or_else(|| {
                ApiError::InvalidParameter(format!(
                    "Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters"
                ))
            })?;
        let bucket_key = hex(Sha256::new()
            .chain_update(scope.to_string().as_bytes())
            .chain_update([0])
            .chain_update(key.as_bytes()));
        // serde_json's map is ordered by key, so equal bodies serialize equally.
        let canonical = serde_json::to_vec(body).expect("a json map always serializes");
        let fingerprint = hex(Sha256::new().chain_update(&canonical));
        Ok(Some(Self {
            bucket_key,
            fingerprint,
        }))
    }
}

fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the first request with a key recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    fingerprint: String,
    /// Chats and messages: the creation event, recorded before it is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Envelope>,
    /// Applications: the `external_key` of the row the request inserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_key: Option<String>,
    /// Chats and messages: a request with this key claimed it at this time and has not recorded
    /// its event yet. Until the claim is older than the creation horizon, another request with
    /// the key is `409 idempotency_key_in_use` and takes no number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<chrono::DateTime<chrono::Utc>>,
    /// A claim given back by a request that took no number (refused, or a dependency away):
    /// the key is free again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

impl Record {
    pub fn for_envelope(key: &IdempotencyKey, envelope: &Envelope) -> Self {
        Self {
            fingerprint: key.fingerprint.clone(),
            envelope: Some(envelope.clone()),
            application_key: None,
            pending_since: None,
            released: false,
        }
    }

    pub fn for_application(key: &IdempotencyKey, application_key: String) -> Self {
        Self {
            fingerprint: key.fingerprint.clone(),
            envelope: None,
            application_key: Some(application_key),
            pending_since: None,
            released: false,
        }
    }

    /// A claim on the key by a request about to take a number.
    pub fn pending(key: &IdempotencyKey) -> Self {
        Self {
            fingerprint: key.fingerprint.clone(),
            envelope: None,
            application_key: None,
            pending_since: Some(chrono::Utc::now()),
            released: false,
        }
    }

    /// A claim given back.
    pub fn released(key: &IdempotencyKey) -> Self {
        Self {
            fingerprint: key.fingerprint.clone(),
            envelope: None,
            application_key: None,
            pending_since: None,
            released: true,
        }
    }

    /// The record, if it was made for this very request; `422` if the key was used with another
    /// body.
    fn matching(self, key: &IdempotencyKey) -> Result<Self> {
        if self.fingerprint == key.fingerprint {
            Ok(self)
        } else {
            Err(ApiError::IdempotencyMismatch)
        }
    }
}

/// The stream of records.
#[derive(Clone)]
pub struct Idempotency {
    js: JetStream,
    records: stream::Stream,
    metrics: Metrics,
}

impl Idempotency {
    pub fn new(js: JetStream, records: stream::Stream, metrics: Metrics) -> Self {
        Self {
            js,
            records,
            metrics,
        }
    }

    fn subject(&self, key: &IdempotencyKey) -> String {
        self.js.subjects.idempotency_record(&key.bucket_key)
    }

    /// The record for `key` and its revision, if a request with that key came before.
    pub async fn lookup(&self, key: &IdempotencyKey) -> Result<Option<(Record, u64)>> {
        let subject = self.subject(key);
        let lookup = self.records.get_last_raw_message_by_subject(&subject);
        let message = match self.js.within(lookup).await {
            Some(Ok(message)) => message,
            Some(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Some(Err(e)) => return Err(ApiError::Unavailable(format!("idempotency lookup: {e}"))),
            None => {
                return Err(ApiError::Unavailable(
                    "idempotency lookup timed out".to_owned(),
                ))
            }
        };
        let record: Record = serde_json::from_slice(&message.payload)
            .map_err(|e| ApiError::Unavailable(format!("idempotency record unreadable: {e}")))?;
        let record = record.matching(key).inspect_err(|_| {
            self.metrics
                .idempotent_requests
                .with_label_values(&["mismatch"])
                .inc();
        })?;
        // A claim in progress is counted once by the request that waits on it
        // ([`Self::count_in_progress`]), not at every look while it waits.
        if record.pending_since.is_none() {
            let outcome = if record.released {
                "released"
            } else {
                "replayed"
            };
            self.metrics
                .idempotent_requests
                .with_label_values(&[outcome])
                .inc();
        }
        Ok(Some((record, message.sequence)))
    }

    /// Counts a request that found its key claimed by another one still running.
    pub fn count_in_progress(&self) {
        self.metrics
            .idempotent_requests
            .with_label_values(&["in_progress"])
            .inc();
    }

    /// Records the first request with `key`; `None` if another request recorded it first (the
    /// caller looks it up and answers as that one does), otherwise the record's revision.
    pub async fn create(&self, key: &IdempotencyKey, record: &Record) -> Result<Option<u64>> {
        self.write(key, record, 0).await
    }

    /// Replaces the record at `revision` (its number collided and another was taken); `None` if
    /// another request replaced it first.
    pub async fn replace(
        &self,
        key: &IdempotencyKey,
        record: &Record,
        revision: u64,
    ) -> Result<Option<u64>> {
        self.write(key, record, revision).await
    }

    /// Writes `record` if the key's last record is at `expected` (0: none yet).
    async fn write(
        &self,
        key: &IdempotencyKey,
        record: &Record,
        expected: u64,
    ) -> Result<Option<u64>> {
        let mut map = async_nats::HeaderMap::new();
        map.insert(
            headers::EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let payload = serde_json::to_vec(record).expect("a record always serializes");
        let ack = confab_runtime::jetstream::publish_acked(
            &self.js,
            self.subject(key),
            map,
            payload.into(),
        );
        match self.js.within(ack).await {
            Some(Ok(ack)) => Ok(Some(ack.sequence)),
            Some(Err(PublishFailure::WrongLastSequence(_))) => Ok(None),
            Some(Err(e)) => Err(ApiError::Unavailable(format!("idempotency record: {e}"))),
            None => Err(ApiError::Unavailable(
                "idempotency record timed out".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(
        headers: &[(&'static str, &str)],
        scope: &str,
        body: serde_json::Value,
    ) -> Result<Option<IdempotencyKey>> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        let serde_json::Value::Object(body) = body else {
            panic!("object")
        };
        IdempotencyKey::from_request(&map, scope, &body)
    }

    #[test]
    fn same_key_and_body_match_whatever_the_json_order() {
        let a = key(&[(HEADER, "k1")], "s", json!({"a": 1, "b": 2}))
            .unwrap()
            .unwrap();
        let b = key(&[(HEADER, "k1")], "s", json!({"b": 2, "a": 1}))
            .unwrap()
            .unwrap();
        assert_eq!(a.bucket_key, b.bucket_key);
        assert_eq!(a.fingerprint, b.fingerprint);
        let record = Record::for_application(&a, "x".into());
        assert!(record.clone().matching(&b).is_ok());
        let other_body = key(&[(HEADER, "k1")], "s", json!({"a": 2}))
            .unwrap()
            .unwrap();
        assert!(matches!(
            record.matching(&other_body),
            Err(ApiError::IdempotencyMismatch)
        ));
    }

    #[test]
    fn keys_are_scoped_and_validated() {
        let a = key(&[(HEADER, "k1")], "chat 1", json!({}))
            .unwrap()
            .unwrap();
        let b = key(&[(HEADER, "k1")], "chat 2", json!({}))
            .unwrap()
            .unwrap();
        assert_ne!(a.bucket_key, b.bucket_key);
        assert!(a.bucket_key.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(key(&[], "s", json!({})).unwrap().is_none());
        assert!(key(&[(HEADER, "")], "s", json!({})).is_err());
        assert!(key(&[(HEADER, &"x".repeat(256))], "s", json!({})).is_err());
    }
}
