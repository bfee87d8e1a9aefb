//! MySQL access of the admin API. Each write is one transaction that locks the application's row,
//! so concurrent admin calls on one key serialize.

use chrono::{DateTime, Duration, Utc};
use confab_core::admin::ApplicationSpec;
use confab_core::Token;
use sqlx::{MySql, MySqlPool, Transaction};

use crate::repo::{ApplicationRow, APPLICATION_COLUMNS};

#[derive(Debug, sqlx::FromRow)]
pub struct AdminRow {
    #[sqlx(flatten)]
    pub app: ApplicationRow,
    pub external_key: Option<String>,
    pub rotation_id: Option<String>,
    pub previous_token_expires_at: Option<DateTime<Utc>>,
}

fn select(filter: &str) -> String {
    format!(
        "SELECT {APPLICATION_COLUMNS}, external_key, rotation_id, previous_token_expires_at \
         FROM applications WHERE {filter}"
    )
}

pub async fn by_key(db: &MySqlPool, key: &str) -> sqlx::Result<Option<AdminRow>> {
    sqlx::query_as(&select("external_key = ? AND deleted_at IS NULL"))
        .bind(key)
        .fetch_optional(db)
        .await
}

async fn lock(tx: &mut Transaction<'_, MySql>, key: &str) -> sqlx::Result<Option<AdminRow>> {
    sqlx::query_as(&select(
        "external_key = ? AND deleted_at IS NULL FOR UPDATE",
    ))
    .bind(key)
    .fetch_optional(&mut **tx)
    .await
}

/// Creates the application named by `key`, or updates its name and quotas. `true` if created.
/// Two concurrent first calls for one key both find no row; the loser's insert hits the unique
/// key and is retried once, as the update it now is.
pub async fn upsert(
    db: &MySqlPool,
    key: &str,
    spec: &ApplicationSpec,
) -> sqlx::Result<(AdminRow, bool)> {
    match upsert_once(db, key, spec).await {
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            upsert_once(db, key, spec).await
        }
        other => other,
    }
}

async fn upsert_once(
    db: &MySqlPool,
    key: &str,
    spec: &ApplicationSpec,
) -> sqlx::Result<(AdminRow, bool)> {
    let mut tx = db.begin().await?;
    let now = Utc::now();
    let q = &spec.quotas;
    let origins = (!spec.allowed_origins.is_empty())
        .then(|| serde_json::to_string(&spec.allowed_origins).expect("strings serialize"));
    let created = match lock(&mut tx, key).await? {
        Some(row) => {
            sqlx::query(
                "UPDATE applications SET name = ?, max_chats = ?, messages_per_second = ?, \
                 message_burst = ?, max_body_bytes = ?, max_subscriptions = ?, \
                 allowed_origins = ?, updated_at = ? WHERE id = ?",
            )
            .bind(&spec.name)
            .bind(q.max_chats)
            .bind(q.messages_per_second)
            .bind(q.message_burst)
            .bind(q.max_body_bytes)
            .bind(q.max_subscriptions)
            .bind(&origins)
            .bind(now)
            .bind(row.app.id)
            .execute(&mut *tx)
            .await?;
            false
        }
        None => {
            sqlx::query(
                "INSERT INTO applications (name, token, chats_count, external_key, max_chats, \
                 messages_per_second, message_burst, max_body_bytes, max_subscriptions, \
                 allowed_origins, created_at, updated_at) \
                 VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&spec.name)
            .bind(Token::generate().expose())
            .bind(key)
            .bind(q.max_chats)
            .bind(q.messages_per_second)
            .bind(q.message_burst)
            .bind(q.max_body_bytes)
            .bind(q.max_subscriptions)
            .bind(&origins)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            true
        }
    };
    let row = lock(&mut tx, key)
        .await?
        .ok_or_else(|| sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    Ok((row, created))
}

/// An application after a rotation, and the token it replaced (`None` when the request was a
/// repeat and nothing changed).
pub struct Rotated {
    pub row: AdminRow,
    pub replaced: Option<String>,
}

/// Replaces the token; the old one keeps working for `grace`. A rotation whose `request_id` is
/// the last one applied changes nothing. `None` if there is no such application.
pub async fn rotate(
    db: &MySqlPool,
    key: &str,
    request_id: Option<&str>,
    grace: Duration,
) -> sqlx::Result<Option<Rotated>> {
    let mut tx = db.begin().await?;
    let Some(row) = lock(&mut tx, key).await? else {
        return Ok(None);
    };
    if request_id.is_some() && row.rotation_id.as_deref() == request_id {
        tx.commit().await?;
        return Ok(Some(Rotated {
            row,
            replaced: None,
        }));
    }
    let now = Utc::now();
    let keep_old = grace > Duration::zero();
    sqlx::query(
        "UPDATE applications SET previous_token = ?, previous_token_expires_at = ?, token = ?, \
         rotation_id = ?, updated_at = ? WHERE id = ?",
    )
    .bind(keep_old.then_some(&row.app.token))
    .bind(keep_old.then(|| now + grace))
    .bind(Token::generate().expose())
    .bind(request_id)
    .bind(now)
    .bind(row.app.id)
    .execute(&mut *tx)
    .await?;
    let replaced = Some(row.app.token);
    let row = lock(&mut tx, key).await?;
    tx.commit().await?;
    Ok(row.map(|row| Rotated { row, replaced }))
}

/// Deletes the application named by `key`: its tokens stop working at once and its row becomes
/// a tombstone (no key, no usable token); the counter reconciler purges its chats and messages
/// (`confab_counter_reconciler::purge`). `None` if there is no such application.
pub async fn delete(db: &MySqlPool, key: &str) -> sqlx::Result<Option<AdminRow>> {
    let mut tx = db.begin().await?;
    let Some(row) = lock(&mut tx, key).await? else {
        return Ok(None);
    };
    let now = Utc::now();
    sqlx::query(
        "UPDATE applications SET deleted_at = ?, external_key = NULL, token = ?, \
         previous_token = NULL, previous_token_expires_at = NULL, updated_at = ? WHERE id = ?",
    )
    .bind(now)
    .bind(Token::generate().expose())
    .bind(now)
    .bind(row.app.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(row))
}
