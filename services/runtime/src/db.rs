//! MySQL/MariaDB connections and the schema migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::ConnectOptions;

use crate::CommonConfig;

/// The migrations in `migrations/`, embedded in every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A lazily connecting pool: services start (and report not-ready) while MySQL is down.
///
/// Every session runs at READ COMMITTED: each statement sees what other transactions committed
/// before it (a persister replica must see the chat another replica just inserted; a recount
/// must see the latest rows), and reads take no gap locks.
pub fn pool(config: &CommonConfig) -> Result<MySqlPool, sqlx::Error> {
    pool_with(config, |options| {
        options.after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlx::Executor::execute(
                    conn,
                    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                )
                .await?;
                Ok(())
            })
        })
    })
}

/// [`pool`], with the pool options adjusted by `customize` (e.g. session settings).
pub fn pool_with(
    config: &CommonConfig,
    customize: impl FnOnce(MySqlPoolOptions) -> MySqlPoolOptions,
) -> Result<MySqlPool, sqlx::Error> {
    let options = MySqlConnectOptions::from_str(config.database_url.expose())?
        .charset("utf8mb4")
        // Statements are logged at debug only, with placeholders, never bound values.
        .log_statements(log::LevelFilter::Debug)
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_millis(500));
    let pool_options = MySqlPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(5));
    Ok(customize(pool_options).connect_lazy_with(options))
}

/// Applies pending migrations.
pub async fn migrate(pool: &MySqlPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Cheap reachability check for `/readyz`.
pub async fn ping(pool: &MySqlPool) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(pool),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

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
