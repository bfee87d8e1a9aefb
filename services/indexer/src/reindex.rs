//! Rebuilding the index from MySQL, for a new mapping or a lost index, while search keeps
//! answering. Documents carry the version MySQL holds (the stream sequence of the last applied
//! event), so a rebuild racing live indexing never lets an older body win.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use confab_search::{SearchBackend, SearchDoc};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::{purge, Error};

/// Rows read from MySQL per chunk.
pub const CHUNK: u32 = 1000;

/// Progress of a rebuild, shared with the status endpoint.
#[derive(Debug, Default)]
pub struct Progress {
    pub running: AtomicBool,
    pub indexed: AtomicU64,
    pub total: AtomicU64,
    pub runs: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub running: bool,
    pub indexed: u64,
    pub total: u64,
    pub completed_runs: u64,
}

impl Progress {
    pub fn status(&self) -> Status {
        Status {
            running: self.running.load(Ordering::SeqCst),
            indexed: self.indexed.load(Ordering::SeqCst),
            total: self.total.load(Ordering::SeqCst),
            completed_runs: self.runs.load(Ordering::SeqCst),
        }
    }
}

/// Indexes every message of a live (not deleted) application in MySQL, in id order, `CHUNK`
/// rows at a time.
pub async fn reindex(
    db: &MySqlPool,
    backend: &dyn SearchBackend,
    progress: &Progress,
) -> Result<u64, Error> {
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages m JOIN chats c ON c.id = m.chat_id \
         JOIN applications a ON a.id = c.application_id WHERE a.deleted_at IS NULL",
    )
    .fetch_one(db)
    .await?;
    progress.total.store(total.max(0) as u64, Ordering::SeqCst);
    progress.indexed.store(0, Ordering::SeqCst);
    let mut after = 0u64;
    loop {
        let rows: Vec<(u64, u64, u64, u64, String, u64)> = sqlx::query_as(
            "SELECT m.id, c.application_id, c.number, m.number, m.body, m.version \
             FROM messages m JOIN chats c ON c.id = m.chat_id \
             JOIN applications a ON a.id = c.application_id \
             WHERE m.id > ? AND a.deleted_at IS NULL ORDER BY m.id LIMIT ?",
        )
        .bind(after)
        .bind(CHUNK)
        .fetch_all(db)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        let docs: Vec<SearchDoc> = rows
            .into_iter()
            .map(
                |(_, application_id, chat_number, number, body, version)| SearchDoc {
                    application_id,
                    chat_number,
                    number,
                    body,
                    version,
                },
            )
            .collect();
        backend.index(&docs).await?;
        let apps = purge::application_ids(&docs);
        purge::delete_if_deleted(db, backend, &apps).await?;
        let done = progress
            .indexed
            .fetch_add(docs.len() as u64, Ordering::SeqCst)
            + docs.len() as u64;
        tracing::info!(indexed = done, total, "reindex progress");
    }
    progress.runs.fetch_add(1, Ordering::SeqCst);
    Ok(progress.indexed.load(Ordering::SeqCst))
}

/// Starts a rebuild in the background unless one is running; returns whether it started.
pub fn start(db: MySqlPool, backend: Arc<dyn SearchBackend>, progress: Arc<Progress>) -> bool {
    if progress.running.swap(true, Ordering::SeqCst) {
        return false;
    }
    tokio::spawn(async move {
        match reindex(&db, backend.as_ref(), &progress).await {
            Ok(n) => tracing::info!(indexed = n, "reindex finished"),
            Err(error) => tracing::error!(%error, "reindex failed"),
        }
        progress.running.store(false, Ordering::SeqCst);
    });
    true
}
