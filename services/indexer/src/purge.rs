//! Removing deleted applications from the search index.
//!
//! The admin API deletes an application by tombstoning its row; the counter reconciler purges
//! its MySQL rows and this module its documents. Two things could bring documents back after a
//! purge: a batch the worker was already indexing when the tombstone was written, and events
//! still in the stream. The worker drops documents of tombstoned applications before indexing
//! ([`confab_runtime::db::deleted_applications`]), which handles the second; for the first, an application is purged again
//! on every pass until one purge began at least `grace` after its deletion.

use std::time::Duration;

use chrono::{DateTime, Utc};
use confab_search::SearchBackend;
use sqlx::MySqlPool;

use crate::Error;

/// Tombstoned applications handled per pass.
const APPLICATIONS_PER_PASS: u32 = 100;

/// Deletes the documents of deleted applications whose purge is not yet final; returns how many
/// applications it purged.
pub async fn purge_deleted(
    db: &MySqlPool,
    backend: &dyn SearchBackend,
    grace: Duration,
) -> Result<usize, Error> {
    let due: Vec<u64> = sqlx::query_scalar(
        "SELECT id FROM applications WHERE deleted_at IS NOT NULL \
         AND (search_purged_at IS NULL \
              OR search_purged_at < deleted_at + INTERVAL ? MICROSECOND) \
         ORDER BY id LIMIT ?",
    )
    .bind(u64::try_from(grace.as_micros()).unwrap_or(u64::MAX))
    .bind(APPLICATIONS_PER_PASS)
    .fetch_all(db)
    .await?;
    for &app in &due {
        // The time is taken before the delete: it is when this purge began.
        let began: DateTime<Utc> = Utc::now();
        backend.delete_application(app).await?;
        sqlx::query("UPDATE applications SET search_purged_at = ? WHERE id = ?")
            .bind(began)
            .bind(app)
            .execute(db)
            .await?;
        tracing::info!(
            application_id = app,
            "deleted application purged from search"
        );
    }
    Ok(due.len())
}

/// Purges every `interval` until `stop` resolves; failures are logged and retried next pass.
pub async fn run(
    db: MySqlPool,
    backend: std::sync::Arc<dyn SearchBackend>,
    interval: Duration,
    grace: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {}
        }
        if let Err(error) = purge_deleted(&db, &*backend, grace).await {
            tracing::warn!(%error, "search purge failed; retrying next pass");
        }
    }
}
