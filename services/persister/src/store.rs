//! Applies a [`Plan`] to MySQL in one transaction. Idempotent: replaying any batch, in any order,
//! leaves the same rows.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use confab_runtime::{db, deletion};
use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};

use crate::batch::{self, ChatKey, Claim, Plan};

/// Rows per multi-row statement, and body bytes per statement (well under MariaDB's default
/// 16 MiB `max_allowed_packet`).
const MAX_ROWS_PER_STATEMENT: usize = 500;
const MAX_BYTES_PER_STATEMENT: usize = 4 * 1024 * 1024;

/// The creation event (its id's bytes) that claimed a row, if one did.
type Owner = Option<Vec<u8>>;

/// Why a write failed, and whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("transient database failure: {0}")]
    Transient(#[source] sqlx::Error),
    #[error("the database rejects this data: {0}")]
    Permanent(#[source] sqlx::Error),
    /// Creation events (by stream sequence) whose number already has a row made by another
    /// creation event. Nothing was written; the caller dead-letters them and applies the rest.
    #[error("{} creation events claim numbers another creation event made", .0.len())]
    Conflicts(Vec<u64>),
    /// Committed, but the Redis sequences could not be raised past the new numbers: the batch
    /// is applied again (idempotently) rather than acked.
    #[error("raising sequences in redis: {0}")]
    Sequence(#[source] redis::RedisError),
    /// The applications this batch changes could not be marked changed in Redis (which keeps
    /// their reads off a lagging replica): nothing is committed, the batch is applied again.
    #[error("marking changed applications in redis: {0}")]
    Marking(#[source] redis::RedisError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if db::classify(&error) == db::Failure::Rejected {
            Self::Permanent(error)
        } else {
            Self::Transient(error)
        }
    }
}

/// Writes the plan in one transaction: ensure the chats, mark the changed parents for the counter
/// reconciler, tombstone the deleted chats and drop every message write to a deleted chat, upsert
/// the messages, then check that every created row belongs to the creation
/// event that claims it (else nothing is committed: [`StoreError::Conflicts`]).
///
/// Lock order matters: the reconciler locks a parent's mark, then the parent row. Marks are
/// therefore taken here *before* the foreign-key checks of the inserts lock parent rows, and in
/// ascending id order, so the two never wait on each other in a cycle.
pub async fn apply(db: &MySqlPool, plan: &Plan) -> Result<(), StoreError> {
    if plan.chats.is_empty() && plan.messages.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    // Copied only when something is dropped from it.
    let mut plan = Cow::Borrowed(plan);
    let deleted = deletion::deleted_applications(&mut *tx, &plan.applications()).await?;
    if !deleted.is_empty() {
        tracing::info!(
            count = deleted.len(),
            "dropping events of deleted applications"
        );
        plan.to_mut().retain_applications(&deleted);
    }
    // Chats deleted before this batch, then also those it deletes.
    let mut deleted_chats = Vec::new();
    let mut owners = HashMap::new();
    let mut ids = chat_ids(&mut tx, plan.chats.keys(), &mut deleted_chats, &mut owners).await?;
    let missing: Vec<_> = plan
        .chats
        .iter()
        .filter(|(key, _)| !ids.contains_key(key))
        .collect();
    // New and deleted chats change their application's chats_count.
    let mut apps: Vec<u64> = missing
        .iter()
        .map(|(k, _)| k.application_id)
        .chain(plan.deleted_chats.keys().map(|k| k.application_id))
        .collect();
    apps.sort_unstable();
    apps.dedup();
    mark_dirty(
        &mut tx,
        "counter_dirty_applications",
        "application_id",
        &apps,
    )
    .await?;
    if !missing.is_empty() {
        insert_chats(&mut tx, &missing, &plan.claims).await?;
        let keys = missing.iter().map(|(k, _)| *k);
        ids.extend(chat_ids(&mut tx, keys, &mut deleted_chats, &mut owners).await?);
    }
    if let Some(key) = plan.chats.keys().find(|k| !ids.contains_key(k)) {
        // Not visible yet (e.g. a concurrent insert by another replica): retry, never reject.
        return Err(StoreError::Transient(sqlx::Error::Protocol(format!(
            "chat {}/{} not visible after insert",
            key.application_id, key.number
        ))));
    }
    // Message writes change their chat's messages_count; a chat's mark is taken before its row
    // is locked (the tombstone's update, the inserts' foreign-key checks). A chat deleted by now
    // is marked too: a recount is idempotent, and the order stays the reconciler's.
    let mut dirty_chats: Vec<u64> = plan
        .counted_chats
        .iter()
        .chain(plan.deleted_chats.keys())
        .filter_map(|key| ids.get(key).copied())
        .collect();
    dirty_chats.sort_unstable();
    dirty_chats.dedup();
    mark_dirty(&mut tx, "counter_dirty_chats", "chat_id", &dirty_chats).await?;
    for (key, at) in &plan.deleted_chats {
        sqlx::query("UPDATE chats SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL")
            .bind(at)
            .bind(ids[key])
            .execute(&mut *tx)
            .await?;
    }
    deleted_chats.extend(plan.deleted_chats.keys().cloned());
    if plan
        .messages
        .iter()
        .any(|m| deleted_chats.contains(&m.chat))
    {
        let before = plan.messages.len();
        plan.to_mut().retain_live_chats(&deleted_chats);
        tracing::info!(
            count = before - plan.messages.len(),
            "dropping message writes to deleted chats"
        );
    }
    // Rows that existed before this batch: only their claims can have been lost.
    let mut existing = HashSet::new();
    for chunk in batch::chunks(
        &plan.messages,
        MAX_ROWS_PER_STATEMENT,
        MAX_BYTES_PER_STATEMENT,
    ) {
        if !write_messages(&mut tx, chunk, &ids).await? {
            existing.extend(
                chunk
                    .iter()
                    .filter_map(|m| Some((*ids.get(&m.chat)?, m.number))),
            );
        }
    }
    let conflicts = claim_conflicts(&mut tx, &plan, &ids, &owners, &existing).await?;
    if !conflicts.is_empty() {
        // Dropping the transaction rolls it back.
        return Err(StoreError::Conflicts(conflicts));
    }
    tx.commit().await?;
    Ok(())
}

/// Claims the created rows for their creation events (a row nobody claimed yet is claimed now)
/// and returns the stream sequences of the claims that lost to another creation event.
///
/// Chats and messages claim their rows as they are written (their inserts carry the creation
/// event, and keep a claim already made); a claim, once made, never changes. So a chat's owner
/// read with its id (`owners`) is final unless it was still unclaimed: only those chats are
/// claimed and read again here. Of the messages, only the rows in `existing` are read back: a row
/// this batch inserted carries its own creation event.
async fn claim_conflicts(
    tx: &mut Transaction<'_, MySql>,
    plan: &Plan,
    ids: &HashMap<ChatKey, u64>,
    owners: &HashMap<u64, Owner>,
    existing: &HashSet<(u64, u64)>,
) -> Result<Vec<u64>, StoreError> {
    let mut conflicts = Vec::new();
    let mut unclaimed: Vec<(u64, &Claim)> = Vec::new();
    for ((chat, message), claim) in &plan.claims {
        if message.is_some() {
            continue;
        }
        let Some(id) = ids.get(chat) else { continue };
        let owner = owners.get(id);
        if !matches!(owner, Some(Some(_))) {
            unclaimed.push((*id, claim));
        } else if lost(owner, claim) {
            conflicts.push(claim.stream_sequence);
        }
    }
    for chunk in unclaimed.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new("UPDATE chats SET creation_event_id = CASE id ");
        for (id, claim) in chunk {
            q.push(" WHEN ")
                .push_bind(*id)
                .push(" THEN ")
                .push_bind(claim.event_id.as_bytes().to_vec());
        }
        q.push(" END WHERE creation_event_id IS NULL AND id IN (");
        let mut list = q.separated(", ");
        for (id, _) in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        q.build().execute(&mut **tx).await?;
        let mut q =
            QueryBuilder::<MySql>::new("SELECT id, creation_event_id FROM chats WHERE id IN (");
        let mut list = q.separated(", ");
        for (id, _) in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        let owners: HashMap<u64, Option<Vec<u8>>> = q
            .build_query_as()
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
        for (id, claim) in chunk {
            if lost(owners.get(id), claim) {
                conflicts.push(claim.stream_sequence);
            }
        }
    }
    let messages: Vec<((u64, u64), &Claim)> = plan
        .claims
        .iter()
        .filter_map(|((chat, message), claim)| Some(((*ids.get(chat)?, (*message)?), claim)))
        .filter(|(row, _)| existing.contains(row))
        .collect();
    for chunk in messages.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT chat_id, number, creation_event_id FROM messages WHERE ",
        );
        db::push_pairs_in(
            &mut q,
            ("chat_id", "number"),
            chunk.iter().map(|(row, _)| *row),
        );
        let rows: Vec<(u64, u64, Option<Vec<u8>>)> =
            q.build_query_as().fetch_all(&mut **tx).await?;
        let owners: HashMap<(u64, u64), Option<Vec<u8>>> = rows
            .into_iter()
            .map(|(chat, number, owner)| ((chat, number), owner))
            .collect();
        for (row, claim) in chunk {
            if lost(owners.get(row), claim) {
                conflicts.push(claim.stream_sequence);
            }
        }
    }
    Ok(conflicts)
}

/// Whether a row's owner is another creation event than `claim`'s.
fn lost(owner: Option<&Option<Vec<u8>>>, claim: &Claim) -> bool {
    matches!(owner, Some(Some(owner)) if owner.as_slice() != claim.event_id.as_bytes())
}

/// Marks parents whose counts changed. `INSERT IGNORE` keeps the earliest mark (the counter lag
/// is measured from it); the table has no other constraint an `IGNORE` could hide.
async fn mark_dirty(
    tx: &mut Transaction<'_, MySql>,
    table: &str,
    column: &str,
    ids: &[u64],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now();
    for chunk in ids.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(format!(
            "INSERT IGNORE INTO {table} ({column}, dirty_since) "
        ));
        q.push_values(chunk, |mut row, id| {
            row.push_bind(*id).push_bind(now);
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The ids of the chats at `keys` that have rows; the keys of those that are deleted (tombstones)
/// are added to `deleted`, and each one's creation event (if it was claimed) to `owners`.
async fn chat_ids<'a>(
    tx: &mut Transaction<'_, MySql>,
    keys: impl Iterator<Item = &'a ChatKey>,
    deleted: &mut Vec<ChatKey>,
    owners: &mut HashMap<u64, Owner>,
) -> Result<HashMap<ChatKey, u64>, StoreError> {
    let keys: Vec<_> = keys.collect();
    let mut ids = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT id, application_id, number, deleted_at IS NOT NULL, creation_event_id \
             FROM chats WHERE ",
        );
        db::push_pairs_in(
            &mut q,
            ("application_id", "number"),
            chunk.iter().map(|key| (key.application_id, key.number)),
        );
        let rows: Vec<(u64, u64, u64, i64, Owner)> =
            q.build_query_as().fetch_all(&mut **tx).await?;
        for (id, application_id, number, tombstone, owner) in rows {
            let key = ChatKey {
                application_id,
                number,
            };
            if tombstone != 0 {
                deleted.push(key.clone());
            }
            ids.insert(key, id);
            owners.insert(id, owner);
        }
    }
    Ok(ids)
}

/// Inserts chats, each claimed by its creation event in `claims` if the batch has one (a chat
/// first named by a message write has none yet).
async fn insert_chats(
    tx: &mut Transaction<'_, MySql>,
    chats: &[(&ChatKey, &chrono::DateTime<chrono::Utc>)],
    claims: &BTreeMap<batch::Created, Claim>,
) -> Result<(), StoreError> {
    for chunk in chats.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO chats \
             (application_id, number, messages_count, created_at, updated_at, creation_event_id) ",
        );
        q.push_values(chunk, |mut row, (key, at)| {
            let claim = claims.get(&((*key).clone(), None));
            row.push_bind(key.application_id)
                .push_bind(key.number)
                .push_bind(0u64)
                .push_bind(**at)
                .push_bind(**at)
                .push_bind(claim.map(|claim| claim.event_id.as_bytes().to_vec()));
        });
        // Another replica may insert the same chat concurrently: keep the earliest time, and the
        // claim already made.
        q.push(
            " ON DUPLICATE KEY UPDATE created_at = LEAST(created_at, VALUES(created_at)), \
             creation_event_id = IFNULL(creation_event_id, VALUES(creation_event_id))",
        );
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes message rows: first as an `INSERT IGNORE`, which in the usual batch (new messages
/// only) inserts every row and is all there is to do (`true`). When some row already exists (a
/// replay, an update, a number written twice) or cannot be inserted, fewer rows are inserted and
/// the same rows are then upserted (`false`), which applies the versions and raises any error the
/// `IGNORE` turned into a warning. For a row that does not exist yet, both statements write the
/// same values, so the rows the first one inserted are unchanged by the second.
async fn write_messages(
    tx: &mut Transaction<'_, MySql>,
    rows: &[batch::MessageUpsert],
    ids: &HashMap<ChatKey, u64>,
) -> Result<bool, StoreError> {
    let inserted = message_rows("INSERT IGNORE INTO", rows, ids)
        .build()
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if inserted == rows.len() as u64 {
        return Ok(true);
    }
    let mut q = message_rows("INSERT INTO", rows, ids);
    // Last writer (highest stream sequence) wins. MySQL applies assignments left to right with
    // the updated values visible, so `version` must be assigned after the columns it guards. A
    // row keeps the creation event that made it; a different one is found by
    // `claim_conflicts` afterwards and the whole transaction rolled back. A deletion's version is
    // above every update's, so once deleted (empty body, `deleted_at` set) a row stays deleted.
    q.push(
        " ON DUPLICATE KEY UPDATE \
         body = IF(VALUES(version) > version, VALUES(body), body), \
         updated_at = IF(VALUES(version) > version, VALUES(updated_at), updated_at), \
         deleted_at = IF(VALUES(version) > version, VALUES(deleted_at), deleted_at), \
         created_at = LEAST(created_at, VALUES(created_at)), \
         version = GREATEST(version, VALUES(version)), \
         creation_event_id = IFNULL(creation_event_id, VALUES(creation_event_id))",
    );
    q.build().execute(&mut **tx).await?;
    Ok(false)
}

/// `<insert> messages (…) VALUES …` for `rows`.
fn message_rows<'a>(
    insert: &str,
    rows: &'a [batch::MessageUpsert],
    ids: &HashMap<ChatKey, u64>,
) -> QueryBuilder<'a, MySql> {
    let mut q = QueryBuilder::<MySql>::new(format!(
        "{insert} messages (chat_id, number, body, version, created_at, updated_at, \
         creation_event_id, deleted_at) "
    ));
    q.push_values(rows, |mut row, m| {
        // Every chat of the plan was resolved above (or the transaction failed).
        row.push_bind(ids.get(&m.chat).copied().unwrap_or_default())
            .push_bind(m.number)
            .push_bind(&m.body)
            .push_bind(m.version)
            .push_bind(m.at)
            .push_bind(m.at)
            .push_bind(m.creation.map(|id| id.as_bytes().to_vec()))
            .push_bind(m.deleted.then_some(m.at));
    });
    q
}
