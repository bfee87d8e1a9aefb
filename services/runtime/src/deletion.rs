//! Deleting an application, end to end. One place states the lifecycle; each step lives with the
//! service that runs it:
//!
//! 1. the admin API (`confab-api`, or the operator through it) turns the application's row into
//!    a tombstone (`deleted_at` set, token revoked) and answers at once;
//! 2. consumers drop events of tombstoned applications ([`deleted_applications`]): the persister
//!    inside its batch transaction, the indexer before it indexes, so nothing comes back;
//! 3. the counter reconciler's purge task deletes the MySQL rows in bounded chunks, on its own
//!    schedule (`CONFAB_MYSQL_PURGE_INTERVAL_MS`, `CONFAB_MYSQL_PURGE_CHUNK`), apart from counting;
//! 4. the indexer's purge deletes the documents, repeated for a grace period.

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
