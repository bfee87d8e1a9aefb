//! Deleting an application, a chat or a message, end to end. One place states the lifecycles;
//! each step lives with the service that runs it.
//!
//! An application:
//!
//! 1. the admin API (`confab-api`, or the operator through it) turns the application's row into
//!    a tombstone (`deleted_at` set, token revoked) and answers at once;
//! 2. consumers drop events of tombstoned applications ([`deleted_applications`]): the persister
//!    inside its batch transaction, the indexer before it indexes, so nothing comes back;
//! 3. the counter reconciler's purge task deletes the MySQL rows in bounded chunks, on its own
//!    schedule (`CONFAB_MYSQL_PURGE_INTERVAL_MS`, `CONFAB_MYSQL_PURGE_CHUNK`), apart from counting;
//! 4. the indexer's purge deletes the documents, repeated for a grace period.
//!
//! A chat (`DELETE …/chats/{n}`):
//! 1. the api marks it deleted in Redis (the message numbering script refuses new numbers in it,
//!    atomically with taking one) and publishes `chat.deleted`; no MySQL write;
//! 2. the persister tombstones the chat's row (`deleted_at`) and drops every message write to a
//!    deleted chat (it reads the tombstones with the chats' ids), in the same transaction; the
//!    reconciler recounts `chats_count` without it;
//! 3. the counter reconciler's purge deletes the chat's messages in bounded chunks; the row stays
//!    a tombstone, so the number is never reused and late events stay dropped;
//! 4. the indexer drops events of deleted chats and purges the chat's documents, repeated for the
//!    grace period, as for applications.
//!
//! A message (`DELETE …/messages/{n}`): the api publishes `message.deleted`; the persister and the
//! indexer apply it as a write with an empty body whose version outranks every update
//! ([`confab_core::event::write_version`]): the row and the document stay as tombstones that no
//! update, redelivery or reordering can bring back, and nothing matches an empty body.

/// Which of `apps` are deleted (tombstones left by the admin API). Consumers drop events of
/// these: their data is being purged and must not come back.
pub async fn deleted_applications<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::MySql>,
    apps: &[u64],
) -> sqlx::Result<Vec<u64>> {
    if apps.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = sqlx::QueryBuilder::new(
        "SELECT id FROM applications WHERE deleted_at IS NOT NULL AND id IN (",
    );
    let mut list = q.separated(", ");
    for id in apps {
        list.push_bind(*id);
    }
    list.push_unseparated(")");
    q.build_query_scalar().fetch_all(executor).await
}

/// Which of `chats` (application id, chat number) are tombstoned. Consumers drop message writes
/// to these: the chat's messages are being purged and must not come back.
pub async fn deleted_chats<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::MySql>,
    chats: &[(u64, u64)],
) -> sqlx::Result<Vec<(u64, u64)>> {
    if chats.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = sqlx::QueryBuilder::new(
        "SELECT application_id, number FROM chats WHERE deleted_at IS NOT NULL AND ",
    );
    crate::db::push_pairs_in(&mut q, ("application_id", "number"), chats.iter().copied());
    q.build_query_as().fetch_all(executor).await
}
