//! Purging deleted applications' data.
//!
//! The admin API deletes an application by turning its row into a tombstone (tokens revoked at
//! once) and answering; the data goes here, in bounded statements, on every reconciler pass. So a
//! deletion survives a crash or timeout of the request that asked for it, and chats that events
//! still in flight created after the deletion (the persister drops them, but one that raced the
//! tombstone may land) are purged on a later pass.

use sqlx::MySqlPool;

/// Tombstoned applications handled per pass.
const APPLICATIONS_PER_PASS: u32 = 10;

/// Deletes, `chunk` rows per statement, the messages and chats of deleted applications; returns
/// how many rows went.
pub async fn purge_deleted(db: &MySqlPool, chunk: u32) -> sqlx::Result<u64> {
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
            "DELETE FROM messages WHERE chat_id IN \
             (SELECT id FROM chats WHERE application_id = ?) LIMIT ?",
            app,
            chunk,
        )
        .await?;
        purged += delete_in_chunks(
            db,
            "DELETE FROM chats WHERE application_id = ? LIMIT ?",
            app,
            chunk,
        )
        .await?;
        tracing::info!(application_id = app, "deleted application purged");
    }
    Ok(purged)
}

async fn delete_in_chunks(db: &MySqlPool, sql: &str, app: u64, chunk: u32) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(sql)
            .bind(app)
            .bind(chunk)
            .execute(db)
            .await?
            .rows_affected();
        total += deleted;
        if deleted == 0 {
            return Ok(total);
        }
    }
}
