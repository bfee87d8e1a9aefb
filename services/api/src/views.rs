//! What clients see. Internal ids never appear here: applications are named by token, chats and
//! messages by number.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::repo::{ApplicationRow, ChatRow, MessageRow};

#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationView {
    /// The application's secret token; the only way to address it. Omitted from the list unless
    /// `CONFAB_LIST_TOKENS=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub name: String,
    /// Persisted chats; refreshed asynchronously, so it may lag creation.
    pub chats_count: u64,
    #[serde(serialize_with = "confab_core::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "confab_core::time::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl From<ApplicationRow> for ApplicationView {
    fn from(row: ApplicationRow) -> Self {
        Self {
            token: Some(row.token),
            name: row.name,
            chats_count: row.chats_count,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl ApplicationView {
    /// The view for a request that presented `token`: it shows that token, never the current one
    /// (a token replaced by a rotation still works during its grace period, and must not reveal
    /// its successor).
    pub fn presented(row: ApplicationRow, token: &confab_core::Token) -> Self {
        Self {
            token: Some(token.expose().to_owned()),
            ..row.into()
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatView {
    pub number: u64,
    /// Persisted messages; refreshed asynchronously, so it may lag creation.
    pub messages_count: u64,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "confab_core::time::rfc3339_opt"
    )]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "confab_core::time::rfc3339_opt"
    )]
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<ChatRow> for ChatView {
    fn from(row: ChatRow) -> Self {
        Self {
            number: row.number,
            messages_count: row.messages_count,
            created_at: Some(row.created_at),
            updated_at: Some(row.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub number: u64,
    pub body: String,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "confab_core::time::rfc3339_opt"
    )]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "confab_core::time::rfc3339_opt"
    )]
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<MessageRow> for MessageView {
    fn from(row: MessageRow) -> Self {
        Self {
            number: row.number,
            body: row.body,
            created_at: Some(row.created_at),
            updated_at: Some(row.updated_at),
        }
    }
}

/// Request body of application create/update (also accepted as `{"application": {...}}`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the request shape in the OpenAPI document
pub struct ApplicationInput {
    /// 1 to 255 characters after trimming; not blank.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]"
    )]
    pub name: String,
}

/// Request body of message create/update (also accepted as `{"message": {...}}`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the request shape in the OpenAPI document
pub struct MessageInput {
    /// Not blank; at most `CONFAB_MAX_BODY_BYTES` (65,536) bytes of UTF-8, or the application's
    /// smaller `max_body_bytes` quota (413 beyond it).
    #[schema(
        min_length = 1,
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]"
    )]
    pub body: String,
}
