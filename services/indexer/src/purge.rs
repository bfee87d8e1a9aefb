//! Removing deleted applications from the search index.
//!
//! The admin API deletes an application by tombstoning its row; the counter reconciler purges
//! its MySQL rows and this module its documents. Three things could bring documents back after
//! a purge, and each is closed:
//! - events still in the stream: the worker drops events of tombstoned applications before
//!   indexing ([`confab_runtime::deletion::deleted_applications`]);
//! - a batch (or a reindex chunk) being written while the tombstone is written: after writing,
//!   the writer asks again and deletes what it wrote for applications deleted meanwhile
//!   ([`delete_if_deleted`]); a reindex reads only live applications;
//! - writes the backend had not yet made visible to a delete (Elasticsearch refreshes about once
//!   a second): an application is purged again on every pass until one purge began at least
//!   `grace` after its deletion. `deleted_at` is the api's clock and the purge time the indexer's,
//!   so the grace (60 s by default) also absorbs clock skew between them.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use confab_search::{SearchBackend, SearchDoc};
use sqlx::MySqlPool;

use crate::Error;

/// Tombstoned applications handled per pass.
const APPLICATIONS_PER_PASS: u32 = 100;

/// Deletes the documents of deleted applications whose purge is not yet final (never purged
/// first, then the longest ago); returns how many it purged. One application failing does not
/// hold up the others.
pub async fn purge_deleted(
    db: &MySqlPool,
    backend: &dyn SearchBackend,
    grace: Duration,
) -> Result<usize, Error> {
    let due: Vec<u64> = sqlx::query_scalar(
        "SELECT id FROM applications WHERE deleted_at IS NOT NULL \
         AND (search_purged_at IS NULL \
              OR search_purged_at < deleted_at + INTERVAL ? MICROSECOND) \
         ORDER BY search_purged_at IS NOT NULL, search_purged_at, id LIMIT ?",
    )
    .bind(u64::try_from(grace.as_micros()).unwrap_or(u64::MAX))
    .bind(APPLICATIONS_PER_PASS)
    .fetch_all(db)
    .await?;
    let mut purged = 0;
    for app in due {
        match purge_one(db, backend, app).await {
            Ok(()) => purged += 1,
            Err(error) => {
                tracing::warn!(application_id = app, %error, "search purge failed; retrying next pass");
            }
        }
    }
    Ok(purged)
}

async fn purge_one(db: &MySqlPool, backend: &dyn SearchBackend, app: u64) -> Result<(), Error> {
    // Taken before the delete: it is when this purge began. Replicas racing never move it back.
    let began: DateTime<Utc> = Utc::now();
    backend.delete_application(app).await?;
    sqlx::query(
        "UPDATE applications \
         SET search_purged_at = GREATEST(COALESCE(search_purged_at, ?), ?) WHERE id = ?",
    )
    .bind(began)
    .bind(began)
    .bind(app)
    .execute(db)
    .await?;
    tracing::info!(
        application_id = app,
        "deleted application purged from search"
    );
    Ok(())
}

/// The distinct applications of `docs`, ascending.
pub fn application_ids<'a>(docs: impl IntoIterator<Item = &'a SearchDoc>) -> Vec<u64> {
    let mut apps: Vec<u64> = docs.into_iter().map(|d| d.application_id).collect();
    apps.sort_unstable();
    apps.dedup();
    apps
}

/// After documents of `apps` were written: deletes the documents of those that were deleted
/// meanwhile (their purge may already have run).
pub async fn delete_if_deleted(
    db: &MySqlPool,
    backend: &dyn SearchBackend,
    apps: &[u64],
) -> Result<(), Error> {
    for app in confab_runtime::deletion::deleted_applications(db, apps).await? {
        backend.delete_application(app).await?;
        tracing::info!(
            application_id = app,
            "application deleted while indexing; its documents removed"
        );
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
