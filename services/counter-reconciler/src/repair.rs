//! Full repair: recompute every count from the rows, in bounded id ranges, for a fresh install
//! or after manual edits. Safe to run beside the reconciler and the persister. A one-shot command:
//! it reports progress in its log (no process is left to scrape metrics from).

use sqlx::MySqlPool;

use crate::reconcile::{Kind, KINDS};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RepairStats {
    pub chats: u64,
    pub applications: u64,
}

/// Recomputes every count, `chunk` parent ids per statement.
pub async fn repair(db: &MySqlPool, chunk: u64) -> sqlx::Result<RepairStats> {
    let mut stats = RepairStats::default();
    for kind in KINDS {
        let n = repair_kind(db, kind, chunk.max(1)).await?;
        if kind.parent_table == "chats" {
            stats.chats = n;
        } else {
            stats.applications = n;
        }
    }
    Ok(stats)
}

async fn repair_kind(db: &MySqlPool, kind: Kind, chunk: u64) -> sqlx::Result<u64> {
    let max: Option<u64> =
        sqlx::query_scalar(&format!("SELECT MAX(id) FROM {}", kind.parent_table))
            .fetch_one(db)
            .await?;
    let Some(max) = max else { return Ok(0) };
    let sql = format!(
        "UPDATE {parent} p SET p.{count} = (SELECT COUNT(*) FROM {child} c \
         WHERE c.{child_parent} = p.id AND c.deleted_at IS NULL) WHERE p.id BETWEEN ? AND ?",
        parent = kind.parent_table,
        count = kind.count_column,
        child = kind.child_table,
        child_parent = kind.child_parent_column,
    );
    let (mut start, mut rows) = (1u64, 0u64);
    while start <= max {
        let end = start.saturating_add(chunk - 1);
        let matched = sqlx::query(&sql)
            .bind(start)
            .bind(end)
            .execute(db)
            .await?
            .rows_affected();
        rows += matched;
        tracing::info!(
            kind = kind.name,
            up_to_id = end,
            max_id = max,
            "repair progress"
        );
        start = end.saturating_add(1);
    }
    Ok(rows)
}
