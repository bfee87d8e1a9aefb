//! Removing deleted applications and deleted chats from the search index.
//!
//! The admin API deletes an application by tombstoning its row, the persister a chat (on its
//! `chat.deleted` event); the counter reconciler purges their MySQL rows and this module their
//! documents. Three things could bring documents back after a purge, and each is closed, for both
//! scopes alike:
//! - events still in the stream: the worker drops events of tombstoned applications and chats
//!   before indexing ([`confab_runtime::deletion`]);
//! - a batch (or a reindex chunk) being written while the tombstone is written: after writing,
//!   the writer asks again and deletes what it wrote for applications deleted meanwhile
//!   ([`delete_if_deleted`]); a reindex reads only live applications and chats;
//! - writes the backend had not yet made visible to a delete (Elasticsearch refreshes about once
//!   a second): a scope is purged again on every pass until one purge began at least `grace`
//!   after its deletion. `deleted_at` is another service's clock and the purge time the
//!   indexer's, so the grace (60 s by default) also absorbs clock skew between them.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use confab_search::{Scope, SearchBackend, SearchDoc};
use sqlx::MySqlPool;

use crate::Error;

/// Tombstoned applications, and tombstoned chats, handled per pass.
const PER_PASS: u32 = 100;

/// The rows whose purge is not yet final (never purged first, then the longest ago) in `table`
/// (`applications` or `chats`).
fn due_sql(table: &str) -> String {
    format!(
        "SELECT id FROM {table} WHERE deleted_at IS NOT NULL \
         AND (search_purged_at IS NULL \
              OR search_purged_at < deleted_at + INTERVAL ? MICROSECOND) \
         ORDER BY search_purged_at IS NOT NULL, search_purged_at, id LIMIT ?"
    )
}

/// Deletes the documents of deleted applications and chats whose purge is not yet final; returns
/// how many it purged. One failing does not hold up the others.
pub async fn purge_deleted(
    db: &MySqlPool,
    backend: &dyn SearchBackend,
    grace: Duration,
) -> Result<usize, Error> {
    let grace = u64::try_from(grace.as_micros()).unwrap_or(u64::MAX);
    let mut purged = 0;
    for table in ["applications", "chats"] {
        let due: Vec<u64> = sqlx::query_scalar(&due_sql(table))
            .bind(grace)
            .bind(PER_PASS)
            .fetch_all(db)
            .await?;
        for id in due {
            match purge_one(db, backend, table, id).await {
                Ok(()) => purged += 1,
                Err(error) => {
                    tracing::warn!(table, id, %error, "search purge failed; retrying next pass");
                }
            }
        }
    }
    Ok(purged)
}

async fn purge_one(
    db: &MySqlPool,
    backend: &dyn SearchBackend,
    table: &str,
    id: u64,
) -> Result<(), Error> {
    // Taken before the delete: it is when this purge began. Replicas racing never move it back.
    let began: DateTime<Utc> = Utc::now();
    let scope = if table == "chats" {
        let (application_id, chat_number): (u64, u64) =
            sqlx::query_as("SELECT application_id, number FROM chats WHERE id = ?")
                .bind(id)
                .fetch_one(db)
                .await?;
        Scope::Chat {
            application_id,
            chat_number,
        }
    } else {
        Scope::Application(id)
    };
    backend.delete(scope).await?;
    sqlx::query(&format!(
        "UPDATE {table} \
         SET search_purged_at = GREATEST(COALESCE(search_purged_at, ?), ?) WHERE id = ?"
    ))
    .bind(began)
    .bind(began)
    .bind(id)
    .execute(db)
    .await?;
    tracing::info!(?scope, "deleted scope purged from search");
    Ok(())
}

/// The distinct applications of `docs`, ascending.
pub fn application_ids<'a>(docs: impl IntoIterator<Item = &'a SearchDoc>) -> Vec<u64> {
    let mut apps: Vec<u64> = docs.into_iter().map(|d| d.application_id).collect();
    apps.sort_unstable();
    apps.dedup();
    apps
}

/// The distinct chats (application id, chat number) of `docs`, ascending.
pub fn chat_keys<'a>(docs: impl IntoIterator<Item = &'a SearchDoc>) -> Vec<(u64, u64)> {
    let mut chats: Vec<(u64, u64)> = docs
        .into_iter()
        .map(|d| (d.application_id, d.chat_number))
        .collect();
    chats.sort_unstable();
    chats.dedup();
    chats
}

/// After `docs` were written: deletes the documents of the applications and chats among theirs
/// that were deleted meanwhile (their purge may already have run).
pub async fn delete_if_deleted(
    db: &MySqlPool,
    backend: &dyn SearchBackend,
    docs: &[SearchDoc],
) -> Result<(), Error> {
    use confab_runtime::deletion;
    let apps = deletion::deleted_applications(db, &application_ids(docs)).await?;
    let chats = deletion::deleted_chats(db, &chat_keys(docs)).await?;
    let scopes = apps
        .into_iter()
        .map(Scope::Application)
        .chain(
            chats
                .into_iter()
                .map(|(application_id, chat_number)| Scope::Chat {
                    application_id,
                    chat_number,
                }),
        );
    for scope in scopes {
        backend.delete(scope).await?;
        tracing::info!(?scope, "deleted while indexing; its documents removed");
    }
    Ok(())
}

/// Purges every `interval` until `stop` resolves (also in the middle of a pass: a purge is
/// repeated until one completes); failures are logged and retried next pass.
pub async fn run(
    db: MySqlPool,
    backend: std::sync::Arc<dyn SearchBackend>,
    interval: Duration,
    grace: Duration,
    stop: impl Future<Output = ()>,
) {
    confab_runtime::shutdown::every(interval, "search purge", stop, || {
        purge_deleted(&db, &*backend, grace)
    })
    .await;
}
