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

/// A browser origin as the OpenAPI document describes it: what [`valid_origin`] accepts, less
/// IPv6 hosts and leading zeros in ports (a schema may be stricter than the server). (Hosts
/// have no overall length limit beyond their labels', so that the pattern says it all.)
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[schema(
    pattern = "^https?://[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$"
)]
pub struct OriginSchema(#[allow(dead_code)] String);

/// The most browser origins one application may allow.
pub const MAX_ALLOWED_ORIGINS: usize = 32;

/// Whether `origin` is a browser origin as an `Origin` header sends it: `http` or `https`, a
/// lowercase host (letters, digits, dots, hyphens; or an IPv6 address in brackets) and an
/// optional port, nothing after (no path, no trailing slash).
pub fn valid_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((address, after)) = v6.split_once(']') else {
            return false;
        };
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':';
        if address.is_empty() || !address.bytes().all(lower_hex) {
            return false;
        }
        if after.is_empty() {
            return true;
        }
        let Some(port) = after.strip_prefix(':') else {
            return false;
        };
        ("v6", Some(port))
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let host_ok = host == "v6"
        || (!host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }));
    let port_ok = port.is_none_or(|port| {
        !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65_535).contains(&p))
    });
    host_ok && port_ok
}

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
    /// Browser origins allowed to call the application's routes (CORS), e.g.
    /// `https://chat.example.com`: scheme, host and optional port, no path; at most 32.
    /// (Left out when empty, so an api older than the field still takes the spec.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<OriginSchema>, max_items = 32))]
    pub allowed_origins: Vec<String>,
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
    /// Browser origins allowed to call its routes (CORS).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
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
    fn origins_are_scheme_host_and_port_only() {
        for good in [
            "https://chat.example.com",
            "http://127.0.0.1:5173",
            "http://localhost",
            "https://a-b.c9.example:443",
            "http://[::1]:8080",
            "http://[::1]",
        ] {
            assert!(valid_origin(good), "{good}");
        }
        for bad in [
            "",
            "chat.example.com",
            "ftp://x.com",
            "https://chat.example.com/",
            "https://chat.example.com/path",
            "https://Chat.example.com",
            "https://x.com:0",
            "https://x.com:65536",
            "https://x.com:",
            "https://-x.com",
            "https://x..com",
            "https://*.example.com",
            "null",
            "http://[::1",
            "http://[::1]/path",
            "http://[::1]?q",
            "http://[::ABCD]",
        ] {
            assert!(!valid_origin(bad), "{bad}");
        }
    }

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
            allowed_origins: Vec::new(),
            chats_count: 0,
            rotation_id: None,
            previous_token_expires_at: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert!(!format!("{app:?}").contains("s3cr3t"));
    }
}
