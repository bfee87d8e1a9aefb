//! One reconcile step: claim dirty marks, recount their parents, delete the marks — in one
//! transaction, at READ COMMITTED (every Confab pool sets it per session) so each
//! recount sees the latest committed rows and takes no gap locks that would stall the persister.
//!
//! `FOR UPDATE SKIP LOCKED` lets replicas run at once on disjoint marks (no leader needed, no
//! work done twice). A crash before commit rolls the claim back, so the marks stay and the next
//! run recounts; a persister that marks a parent while it is being recounted waits for the commit
//! and re-inserts the mark, so a change is never lost between count and delete.

use chrono::{DateTime, Utc};
use confab_runtime::metrics;

use crate::metrics::Metrics;
use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};

/// A counted column and where its dirty marks live.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// Metric label.
    pub name: &'static str,
    pub dirty_table: &'static str,
    pub dirty_key: &'static str,
    /// The parent table and its count column, and the child table and its parent column.
    pub parent_table: &'static str,
    pub count_column: &'static str,
    pub child_table: &'static str,
    pub child_parent_column: &'static str,
}

pub const CHATS: Kind = Kind {
    name: "chat",
    dirty_table: "counter_dirty_chats",
    dirty_key: "chat_id",
    parent_table: "chats",
    count_column: "messages_count",
    child_table: "messages",
    child_parent_column: "chat_id",
};

pub const APPLICATIONS: Kind = Kind {
    name: "application",
    dirty_table: "counter_dirty_applications",
    dirty_key: "application_id",
    parent_table: "applications",
    count_column: "chats_count",
    child_table: "chats",
    child_parent_column: "application_id",
};

pub const KINDS: [Kind; 2] = [CHATS, APPLICATIONS];

/// What one run did, per kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    pub chats_recounted: u64,
    pub applications_recounted: u64,
}

/// Claims up to `limit` dirty marks, oldest first, skipping marks another replica holds.
pub async fn claim(
    tx: &mut Transaction<'_, MySql>,
    kind: Kind,
    limit: u32,
) -> sqlx::Result<Vec<(u64, DateTime<Utc>)>> {
    sqlx::query_as(&format!(
        "SELECT {key}, dirty_since FROM {table} ORDER BY dirty_since LIMIT ? FOR UPDATE SKIP LOCKED",
        key = kind.dirty_key,
        table = kind.dirty_table
    ))
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Sets each claimed parent's count to the number of its persisted children (none: no statement).
pub async fn recount(tx: &mut Transaction<'_, MySql>, kind: Kind, ids: &[u64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::<MySql>::new(format!(
        "UPDATE {parent} p SET p.{count} = (SELECT COUNT(*) FROM {child} c \
         WHERE c.{child_parent} = p.id AND c.deleted_at IS NULL) WHERE p.id IN (",
        parent = kind.parent_table,
        count = kind.count_column,
        child = kind.child_table,
        child_parent = kind.child_parent_column,
    ));
    push_ids(&mut q, ids);
    q.build().execute(&mut **tx).await?;
    Ok(())
}

/// Deletes the claimed marks (none: no statement).
pub async fn clear(tx: &mut Transaction<'_, MySql>, kind: Kind, ids: &[u64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::<MySql>::new(format!(
        "DELETE FROM {table} WHERE {key} IN (",
        table = kind.dirty_table,
        key = kind.dirty_key
    ));
    push_ids(&mut q, ids);
    q.build().execute(&mut **tx).await?;
    Ok(())
}

fn push_ids(q: &mut QueryBuilder<'_, MySql>, ids: &[u64]) {
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    list.push_unseparated(")");
}

/// Claims, recounts and clears one batch; returns how many parents it recounted.
pub async fn reconcile_batch(
    db: &MySqlPool,
    metrics: &Metrics,
    kind: Kind,
    limit: u32,
) -> sqlx::Result<u64> {
    let started = std::time::Instant::now();
    let mut tx = db.begin().await?;
    let claimed = claim(&mut tx, kind, limit).await?;
    if claimed.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let ids: Vec<u64> = claimed.iter().map(|(id, _)| *id).collect();
    recount(&mut tx, kind, &ids).await?;
    clear(&mut tx, kind, &ids).await?;
    tx.commit().await?;
    metrics.dependencies.mysql("reconcile_batch", started);
    for (_, since) in &claimed {
        metrics::observe_since(&metrics.reconcile_lag, kind.name, *since);
    }
    metrics
        .rows_recounted
        .with_label_values(&[kind.name])
        .inc_by(ids.len() as u64);
    Ok(ids.len() as u64)
}

/// Reconciles every mark of one kind, batch by batch.
async fn reconcile_all(
    db: &MySqlPool,
    metrics: &Metrics,
    kind: Kind,
    limit: u32,
) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = reconcile_batch(db, metrics, kind, limit).await?;
        total += n;
        if n < u64::from(limit) {
            return Ok(total);
        }
    }
}

/// Reconciles every mark present, for both kinds. `db` must come from [`crate::pool`].
pub async fn run_once(db: &MySqlPool, metrics: &Metrics, limit: u32) -> sqlx::Result<RunStats> {
    let started = std::time::Instant::now();
    let stats = RunStats {
        chats_recounted: reconcile_all(db, metrics, CHATS, limit).await?,
        applications_recounted: reconcile_all(db, metrics, APPLICATIONS, limit).await?,
    };
    metrics
        .run_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(stats)
}

/// Updates the counter-lag gauges: the age of the oldest unreconciled mark of each kind.
pub async fn observe_lag(db: &MySqlPool, metrics: &Metrics) -> sqlx::Result<()> {
    for kind in KINDS {
        let oldest: Option<DateTime<Utc>> = sqlx::query_scalar(&format!(
            "SELECT MIN(dirty_since) FROM {}",
            kind.dirty_table
        ))
        .fetch_one(db)
        .await?;
        let lag = oldest.map_or(0.0, |t| {
            (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        });
        metrics.lag.with_label_values(&[kind.name]).set(lag);
    }
    Ok(())
}
