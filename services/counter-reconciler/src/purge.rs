//! Purging deleted applications' rows, and deleted chats' messages, from MySQL (step 3 of
//! [`confab_runtime::deletion`]).
//!
//! The admin API deletes an application by turning its row into a tombstone (tokens revoked at
//! once) and answering; the data goes here. The purge is its own task, apart from the reconcile
//! loop, with its own schedule (`CONFAB_MYSQL_PURGE_INTERVAL_MS`) and statement size
//! (`CONFAB_MYSQL_PURGE_CHUNK`): a million-row application never holds up counting, and each
//! statement's locks stay small. Shutdown drops a pass wherever it is (each DELETE commits on
//! its own, or not at all, and the next pass goes on from there), so SIGTERM never waits for a
//! purge. A deletion survives a crash or timeout of the request that asked for it,
//! and chats that events still in flight created after the deletion (the persister drops them,
//! but one that raced the tombstone may land) are purged on a later pass. A deleted chat keeps its
//! row (the tombstone that keeps its number taken and its late events dropped); its messages go.

use std::future::Future;
use std::time::Duration;

use sqlx::MySqlPool;

use crate::metrics::Metrics;

/// Tombstoned applications handled per pass.
const APPLICATIONS_PER_PASS: u32 = 10;
/// Tombstoned chats whose messages are purged per pass.
const CHATS_PER_PASS: u32 = 100;

/// Runs purge passes every `interval` until `stop` resolves. Dropping a pass between statements
/// is safe: each DELETE commits on its own and the next pass goes on where this one stopped.
pub async fn run(
    db: MySqlPool,
    metrics: Metrics,
    interval: Duration,
    chunk: u32,
    stop: impl Future<Output = ()>,
) {
    confab_runtime::shutdown::every(interval, "purge of deleted applications", stop, || {
        purge_deleted(&db, &metrics, chunk)
    })
    .await;
}

/// Deletes, `chunk` rows per statement, the messages and chats of deleted applications and the
/// messages of deleted chats; returns how many rows went.
pub async fn purge_deleted(db: &MySqlPool, metrics: &Metrics, chunk: u32) -> sqlx::Result<u64> {
    let apps: Vec<u64> = sqlx::query_scalar(
        "SELECT a.id FROM applications a WHERE a.deleted_at IS NOT NULL \
         AND EXISTS (SELECT 1 FROM chats c WHERE c.application_id = a.id) LIMIT ?",
    )
    .bind(APPLICATIONS_PER_PASS)
    .fetch_all(db)
    .await?;
    let mut purged = 0;
    for app in apps {
        purged += delete_in_chunks(
            db,
            metrics,
            "messages",
            "DELETE FROM messages WHERE chat_id IN \
             (SELECT id FROM chats WHERE application_id = ?) LIMIT ?",
            app,
            chunk,
        )
        .await?;
        purged += delete_in_chunks(
            db,
            metrics,
            "chats",
            "DELETE FROM chats WHERE application_id = ? LIMIT ?",
            app,
            chunk,
        )
        .await?;
        tracing::info!(application_id = app, "deleted application purged");
    }
    let chats: Vec<u64> = sqlx::query_scalar(
        "SELECT c.id FROM chats c WHERE c.deleted_at IS NOT NULL \
         AND EXISTS (SELECT 1 FROM messages m WHERE m.chat_id = c.id) LIMIT ?",
    )
    .bind(CHATS_PER_PASS)
    .fetch_all(db)
    .await?;
    for chat in chats {
        purged += delete_in_chunks(
            db,
            metrics,
            "messages",
            "DELETE FROM messages WHERE chat_id = ? LIMIT ?",
            chat,
            chunk,
        )
        .await?;
        tracing::info!(chat_id = chat, "deleted chat's messages purged");
    }
    Ok(purged)
}

/// Runs `sql` (a `DELETE … LIMIT ?` of `table`'s rows of `parent`) until it deletes less than a
/// chunk, counting every statement's rows as they go.
async fn delete_in_chunks(
    db: &MySqlPool,
    metrics: &Metrics,
    table: &str,
    sql: &str,
    parent: u64,
    chunk: u32,
) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(sql)
            .bind(parent)
            .bind(chunk)
            .execute(db)
            .await?
            .rows_affected();
        metrics
            .rows_purged
            .with_label_values(&[table])
            .inc_by(deleted);
        total += deleted;
        if deleted < u64::from(chunk) {
            return Ok(total);
        }
    }
}
