//! MySQL access of the api: reads for every resource, and the (rare, synchronous) application
//! writes. Chat and message creation never come here to write.

use chrono::{DateTime, Utc};
use confab_core::quota::QuotaRequest;
use sqlx::MySqlPool;

#[derive(Debug, sqlx::FromRow)]
pub struct ApplicationRow {
    pub id: u64,
    pub name: String,
    pub token: String,
    pub chats_count: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub max_chats: Option<u64>,
    pub messages_per_second: Option<u32>,
    pub message_burst: Option<u32>,
    pub max_body_bytes: Option<u32>,
    pub max_subscriptions: Option<u32>,
    /// A JSON array of origins, or NULL.
    pub allowed_origins: Option<String>,
}

impl ApplicationRow {
    /// The browser origins allowed to call its routes.
    pub fn allowed_origins(&self) -> Vec<String> {
        self.allowed_origins
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default()
    }

    /// The quotas this application asked for (NULL columns follow the defaults).
    pub fn requested_quotas(&self) -> QuotaRequest {
        QuotaRequest {
            max_chats: self.max_chats,
            messages_per_second: self.messages_per_second,
            message_burst: self.message_burst,
            max_body_bytes: self.max_body_bytes,
            max_subscriptions: self.max_subscriptions,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct ChatRow {
    pub number: u64,
    pub messages_count: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub number: u64,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const APPLICATION_COLUMNS: &str = "id, name, token, chats_count, created_at, updated_at, \
     max_chats, messages_per_second, message_burst, max_body_bytes, max_subscriptions, \
     allowed_origins";

/// Inserts an application; with `external_key`, a row already inserted under that key is
/// returned as it is instead (a retried idempotent request).
pub async fn insert_application(
    db: &MySqlPool,
    name: &str,
    token: &str,
    external_key: Option<&str>,
) -> sqlx::Result<ApplicationRow> {
    let now = Utc::now();
    // `LAST_INSERT_ID(id)` makes the existing row's id the statement's insert id.
    let id = sqlx::query(
        "INSERT INTO applications (name, token, external_key, chats_count, created_at, \
         updated_at) VALUES (?, ?, ?, 0, ?, ?) ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
    )
    .bind(name)
    .bind(token)
    .bind(external_key)
    .bind(now)
    .bind(now)
    .execute(db)
    .await?
    .last_insert_id();
    sqlx::query_as(&format!(
        "SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = ?"
    ))
    .bind(id)
    .fetch_one(db)
    .await
}

pub async fn list_applications(
    db: &MySqlPool,
    limit: u32,
    offset: u64,
) -> sqlx::Result<Vec<ApplicationRow>> {
    sqlx::query_as(&format!(
        "SELECT {APPLICATION_COLUMNS} FROM applications WHERE deleted_at IS NULL \
         ORDER BY id LIMIT ? OFFSET ?"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await
}

/// The live application a token names: its current token, or the one it replaced while that is
/// in its grace period.
/// A live application by its id (client tokens name their application by id).
pub async fn application_by_id(db: &MySqlPool, id: u64) -> sqlx::Result<Option<ApplicationRow>> {
    sqlx::query_as(&format!(
        "SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = ? AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn application_by_token(
    db: &MySqlPool,
    token: &str,
) -> sqlx::Result<Option<ApplicationRow>> {
    sqlx::query_as(&format!(
        "SELECT {APPLICATION_COLUMNS} FROM applications \
         WHERE (token = ? OR (previous_token = ? AND previous_token_expires_at > ?)) \
         AND deleted_at IS NULL"
    ))
    .bind(token)
    .bind(token)
    .bind(Utc::now())
    .fetch_optional(db)
    .await
}

/// Renames an application.
pub async fn rename_application(db: &MySqlPool, id: u64, name: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE applications SET name = ?, updated_at = ? WHERE id = ?")
        .bind(name)
        .bind(Utc::now())
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn list_chats(
    db: &MySqlPool,
    application_id: u64,
    limit: u32,
    offset: u64,
) -> sqlx::Result<Vec<ChatRow>> {
    sqlx::query_as(
        "SELECT number, messages_count, created_at, updated_at FROM chats \
         WHERE application_id = ? AND deleted_at IS NULL ORDER BY number LIMIT ? OFFSET ?",
    )
    .bind(application_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await
}

pub async fn chat(
    db: &MySqlPool,
    application_id: u64,
    number: u64,
) -> sqlx::Result<Option<ChatRow>> {
    sqlx::query_as(
        "SELECT number, messages_count, created_at, updated_at FROM chats \
         WHERE application_id = ? AND number = ? AND deleted_at IS NULL",
    )
    .bind(application_id)
    .bind(number)
    .fetch_optional(db)
    .await
}

pub async fn max_chat_number(db: &MySqlPool, application_id: u64) -> sqlx::Result<Option<u64>> {
    sqlx::query_scalar("SELECT MAX(number) FROM chats WHERE application_id = ?")
        .bind(application_id)
        .fetch_one(db)
        .await
}

pub async fn max_message_number(
    db: &MySqlPool,
    application_id: u64,
    chat_number: u64,
) -> sqlx::Result<Option<u64>> {
    sqlx::query_scalar(
        "SELECT MAX(m.number) FROM messages m JOIN chats c ON c.id = m.chat_id \
         WHERE c.application_id = ? AND c.number = ?",
    )
    .bind(application_id)
    .bind(chat_number)
    .fetch_one(db)
    .await
}

pub async fn list_messages(
    db: &MySqlPool,
    application_id: u64,
    chat_number: u64,
    limit: u32,
    offset: u64,
) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as(
        "SELECT m.number, m.body, m.created_at, m.updated_at \
         FROM chats c JOIN messages m ON m.chat_id = c.id \
         WHERE c.application_id = ? AND c.number = ? AND m.deleted_at IS NULL \
         ORDER BY m.number LIMIT ? OFFSET ?",
    )
    .bind(application_id)
    .bind(chat_number)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await
}

pub async fn message(
    db: &MySqlPool,
    application_id: u64,
    chat_number: u64,
    number: u64,
) -> sqlx::Result<Option<MessageRow>> {
    sqlx::query_as(
        "SELECT m.number, m.body, m.created_at, m.updated_at \
         FROM chats c JOIN messages m ON m.chat_id = c.id \
         WHERE c.application_id = ? AND c.number = ? AND m.number = ? AND m.deleted_at IS NULL",
    )
    .bind(application_id)
    .bind(chat_number)
    .bind(number)
    .fetch_optional(db)
    .await
}

/// What MySQL holds of a chat or a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Live,
    /// A tombstone: deleted, its number still taken.
    Deleted,
}

/// The state from `deleted_at IS NOT NULL` (an integer in MySQL), if there is a row.
fn state(deleted: Option<i64>) -> Option<State> {
    deleted.map(|deleted| {
        if deleted != 0 {
            State::Deleted
        } else {
            State::Live
        }
    })
}

/// Whether a chat is persisted, and deleted; `None` when it is not persisted (yet).
pub async fn chat_state(
    db: &MySqlPool,
    application_id: u64,
    number: u64,
) -> sqlx::Result<Option<State>> {
    let deleted: Option<i64> = sqlx::query_scalar(
        "SELECT deleted_at IS NOT NULL FROM chats WHERE application_id = ? AND number = ?",
    )
    .bind(application_id)
    .bind(number)
    .fetch_optional(db)
    .await?;
    Ok(state(deleted))
}

/// The creation event that made a persisted chat or message row: `None` when there is no row,
/// `Some(None)` for a row no creation event has claimed ([`crate::allocate`]'s replay of an old
/// idempotency record reads it).
pub async fn creation_claim(
    db: &MySqlPool,
    event: &confab_core::Event,
) -> sqlx::Result<Option<Option<Vec<u8>>>> {
    use confab_core::Event;
    match event {
        Event::ChatCreated(c) => {
            sqlx::query_scalar(
                "SELECT creation_event_id FROM chats WHERE application_id = ? AND number = ?",
            )
            .bind(c.application_id)
            .bind(c.number)
            .fetch_optional(db)
            .await
        }
        Event::MessageCreated(m) => {
            sqlx::query_scalar(
                "SELECT m.creation_event_id FROM chats c JOIN messages m ON m.chat_id = c.id \
                 WHERE c.application_id = ? AND c.number = ? AND m.number = ?",
            )
            .bind(m.application_id)
            .bind(m.chat_number)
            .bind(m.number)
            .fetch_optional(db)
            .await
        }
        _ => Ok(None),
    }
}

/// Whether a message is persisted, and deleted; `None` when it is not persisted (yet).
pub async fn message_state(
    db: &MySqlPool,
    application_id: u64,
    chat_number: u64,
    number: u64,
) -> sqlx::Result<Option<State>> {
    let deleted: Option<i64> = sqlx::query_scalar(
        "SELECT m.deleted_at IS NOT NULL FROM chats c JOIN messages m ON m.chat_id = c.id \
         WHERE c.application_id = ? AND c.number = ? AND m.number = ?",
    )
    .bind(application_id)
    .bind(chat_number)
    .bind(number)
    .fetch_optional(db)
    .await?;
    Ok(state(deleted))
}
