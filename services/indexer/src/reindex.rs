//! Rebuilding the index from MySQL, for a new mapping or a lost index, while search keeps
//! answering. Documents carry the version MySQL holds (the stream sequence of the last applied
//! event), so a rebuild racing live indexing never lets an older body win.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use confab_search::{SearchBackend, SearchDoc};
use serde::{Deserialize, Serialize};
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
    /// Why the last rebuild failed; cleared when the next one starts.
    pub error: Mutex<Option<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub running: bool,
    pub indexed: u64,
    pub total: u64,
    /// Rebuilds that finished successfully since the indexer started.
    pub completed_runs: u64,
    /// Why the last rebuild failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

impl Progress {
    pub fn status(&self) -> Status {
        Status {
            running: self.running.load(Ordering::SeqCst),
            indexed: self.indexed.load(Ordering::SeqCst),
            total: self.total.load(Ordering::SeqCst),
            completed_runs: self.runs.load(Ordering::SeqCst),
            error: self.error().clone(),
        }
    }

    fn error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.error.lock().unwrap_or_else(PoisonError::into_inner)
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
         JOIN applications a ON a.id = c.application_id \
         WHERE a.deleted_at IS NULL AND c.deleted_at IS NULL",
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
             WHERE m.id > ? AND a.deleted_at IS NULL AND c.deleted_at IS NULL \
             ORDER BY m.id LIMIT ?",
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
        purge::delete_if_deleted(db, backend, &docs).await?;
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
    *progress.error() = None;
    tokio::spawn(async move {
        match reindex(&db, backend.as_ref(), &progress).await {
            Ok(n) => tracing::info!(indexed = n, "reindex finished"),
            Err(error) => {
                tracing::error!(%error, "reindex failed");
                *progress.error() = Some(error.to_string());
            }
        }
        progress.running.store(false, Ordering::SeqCst);
    });
    true
}

/// Rebuilds the embedded index through the running indexer at `base` (its search address),
/// presenting `token` (`CONFAB_INTERNAL_TOKEN`) when set: starts a rebuild, follows its progress
/// every `poll`, and returns how many documents it indexed — or why it failed, so
/// `confab-indexer reindex` exits non-zero.
pub async fn through_indexer(
    base: &str,
    token: Option<&confab_runtime::Secret<String>>,
    poll: Duration,
) -> Result<u64, Error> {
    let url = format!("{}/internal/reindex", base.trim_end_matches('/'));
    let failed = |what: &str, e: reqwest::Error| Error::Reindex(format!("{what}: {e}"));
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = format!("Bearer {}", token.expose()).parse().map_err(|_| {
            Error::Reindex("CONFAB_INTERNAL_TOKEN is not a valid header value".into())
        })?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()
        .map_err(|e| failed("building the http client", e))?;
    let response = http
        .post(&url)
        .send()
        .await
        .map_err(|e| failed("asking the indexer to reindex", e))?;
    if !response.status().is_success() {
        return Err(Error::Reindex(format!(
            "the indexer refused ({}): {}",
            response.status(),
            response.text().await.unwrap_or_default()
        )));
    }
    let started: Status = response
        .json()
        .await
        .map_err(|e| failed("reading the indexer's answer", e))?;
    loop {
        tokio::time::sleep(poll).await;
        let status: Status = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| failed("following the reindex", e))?
            .json()
            .await
            .map_err(|e| failed("reading the reindex progress", e))?;
        tracing::info!(
            indexed = status.indexed,
            total = status.total,
            "reindex progress"
        );
        if status.running {
            continue;
        }
        if let Some(error) = status.error {
            return Err(Error::Reindex(format!(
                "the indexer's reindex failed: {error}"
            )));
        }
        // Not running, no error, and no run completed: the indexer restarted and lost it.
        if status.completed_runs <= started.completed_runs {
            return Err(Error::Reindex(
                "the reindex stopped without completing (did the indexer restart?)".into(),
            ));
        }
        return Ok(status.indexed);
    }
}
