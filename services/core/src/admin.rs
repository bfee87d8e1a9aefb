//! The admin API's wire format, shared by the api (which serves it) and the operator (which
//! calls it), so the two cannot drift apart.
//!
//! Applications are addressed by a caller-chosen `key` (the operator uses the custom resource's
//! UID), which makes every write idempotent: `PUT` creates or updates, a rotation carries a
//! request id and is applied once.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::quota::{QuotaRequest, Quotas};

/// Longest accepted application key.
pub const MAX_KEY_LEN: usize = 128;

/// Whether `key` can name an application: 1–128 of `A-Z a-z 0-9 . _ : -`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `PUT /admin/v1/applications/{key}`: create the application, or update its name and quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ApplicationSpec {
    /// 1 to 255 characters after trimming; not blank.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]"
        )
    )]
    pub name: String,
    /// Missing fields take the api's defaults.
    #[serde(default, deserialize_with = "object")]
    pub quotas: QuotaRequest,
}

/// A struct from a JSON object only (serde's derive also takes the fields as an array).
fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom("expected an object"));
    }
    serde_json::from_value(value).map_err(serde::de::Error::custom)
}

/// `POST /admin/v1/applications/{key}/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Idempotency key: a rotation with the id of the last applied one changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._:-]{1,128}$"))]
    pub request_id: Option<String>,
    /// How long the replaced token keeps working; default 3600, 0 revokes it at once; at most
    /// 30 days.
    #[serde(
        default,
        deserialize_with = "crate::quota::whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2592000))]
    pub grace_seconds: Option<u64>,
}

/// An application as the admin API shows it, token included.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminApplication {
    pub key: String,
    pub name: String,
    /// The current token. Secret: never log this struct's fields one by one.
    pub token: String,
    /// What was asked for; missing fields follow the api's defaults.
    pub requested_quotas: QuotaRequest,
    /// What is enforced.
    pub quotas: Quotas,
    pub chats_count: u64,
    /// The id of the last rotation applied, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_id: Option<String>,
    /// Until when the replaced token still works, if a rotation is in its grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_token_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl fmt::Debug for AdminApplication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminApplication")
            .field("key", &self.key)
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("quotas", &self.quotas)
            .field("chats_count", &self.chats_count)
            .field("rotation_id", &self.rotation_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_restricted_to_a_safe_alphabet() {
        assert!(valid_key("0d3c6b1e-2f4a-4c1b-9e7d-5a6b7c8d9e0f"));
        assert!(valid_key("team.app:1_x"));
        assert!(!valid_key(""));
        assert!(!valid_key("a/b"));
        assert!(!valid_key(&"a".repeat(MAX_KEY_LEN + 1)));
    }

    #[test]
    fn debug_never_prints_the_token() {
        let app = AdminApplication {
            key: "k".into(),
            name: "n".into(),
            token: "s3cr3t-token".into(),
            requested_quotas: QuotaRequest::default(),
            quotas: Quotas::default(),
            chats_count: 0,
            rotation_id: None,
            previous_token_expires_at: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert!(!format!("{app:?}").contains("s3cr3t"));
    }
}
