//! MySQL/MariaDB connections and the schema migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::ConnectOptions;

use crate::CommonConfig;

/// The migrations in `migrations/`, embedded in every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// How often the persister rewrites the replication heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

/// Rewrites the replication heartbeat (`replication_heartbeat`) with the primary's clock every
/// [`HEARTBEAT_EVERY`] until `stop`: read on a replica, its age is the replica's lag. A failed
/// beat is logged and the next one tried; a stale heartbeat only sends reads to the primary. A
/// beat in flight when `stop` resolves is dropped.
pub async fn heartbeat(pool: MySqlPool, stop: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let beat = sqlx::query(
            "INSERT INTO replication_heartbeat (id, at) VALUES (1, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE at = VALUES(at)",
        )
        .execute(&pool);
        // Raced against `stop`: with MySQL down, a beat waits out the pool's acquire timeout,
        // and a shutdown must not wait for it.
        let beat = tokio::select! {
            () = &mut stop => return,
            beat = beat => beat,
        };
        if let Err(error) = beat {
            tracing::debug!(%error, "replication heartbeat");
        }
    }
}

/// How far `replica` is behind its primary: the age of the heartbeat it shows, by its own clock
/// (at most [`HEARTBEAT_EVERY`] more than the lag, plus the clocks' skew). `None` when there is
/// no heartbeat yet.
pub async fn replica_lag(replica: &MySqlPool) -> sqlx::Result<Option<Duration>> {
    let age: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, at, UTC_TIMESTAMP(6)) FROM replication_heartbeat \
         WHERE id = 1",
    )
    .fetch_optional(replica)
    .await?;
    Ok(age
        .flatten()
        .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
}

/// A lazily connecting pool: services start (and report not-ready) while MySQL is down.
///
/// Every session runs at READ COMMITTED: each statement sees what other transactions committed
/// before it (a persister replica must see the chat another replica just inserted; a recount
/// must see the latest rows), and reads take no gap locks.
pub fn pool(config: &CommonConfig) -> Result<MySqlPool, sqlx::Error> {
    pool_at(config, config.database_url.expose())
}

/// [`pool`] for another database of the same shape (a read replica, `DATABASE_READ_URL`).
pub fn pool_at(config: &CommonConfig, url: &str) -> Result<MySqlPool, sqlx::Error> {
    pool_with_at(config, url, |options| {
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
    pool_with_at(config, config.database_url.expose(), customize)
}

fn pool_with_at(
    config: &CommonConfig,
    url: &str,
    customize: impl FnOnce(MySqlPoolOptions) -> MySqlPoolOptions,
) -> Result<MySqlPool, sqlx::Error> {
    let options = MySqlConnectOptions::from_str(url)?
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

/// What a MySQL failure means to the caller: the one classification every service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The data can never be written as it is (a foreign key to a row that is gone, data too
    /// long, a bad string, a value out of range, a missing value): retrying cannot help.
    Rejected,
    /// A deadlock or lock wait timeout: InnoDB rolled the transaction back whole; retry it now.
    LockConflict,
    /// The database cannot be reached or is overloaded: retry later.
    Unavailable,
    /// Anything else (a bug, a schema mismatch).
    Other,
}

impl Failure {
    /// Whether the same statement may succeed later.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::LockConflict | Self::Unavailable)
    }
}

/// Classifies a MySQL/MariaDB error by its kind and server error number.
pub fn classify(error: &sqlx::Error) -> Failure {
    // Foreign key, data too long, bad string value, out of range, column cannot be null.
    const REJECTED: &[u16] = &[1452, 1406, 1366, 1264, 1048];
    // Deadlock, lock wait timeout.
    const LOCK_CONFLICT: &[u16] = &[1213, 1205];
    // Too many connections, server shutting down, read-only (a failover in progress).
    const UNAVAILABLE: &[u16] = &[1040, 1053, 1290, 1836];
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Failure::Unavailable,
        sqlx::Error::Database(db) => {
            let Some(number) = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(sqlx::mysql::MySqlDatabaseError::number)
            else {
                return Failure::Other;
            };
            if REJECTED.contains(&number) {
                Failure::Rejected
            } else if LOCK_CONFLICT.contains(&number) {
                Failure::LockConflict
            } else if UNAVAILABLE.contains(&number) {
                Failure::Unavailable
            } else {
                Failure::Other
            }
        }
        _ => Failure::Other,
    }
}

/// Appends `(first, second) IN ((?, ?), …)` over `pairs` (which must not be empty) to `query`.
///
/// A row-constructor `IN` list is looked up key by key (an `eq_ref` join over the list in
/// MariaDB, a range per pair in MySQL) and each row read is checked against the list with a
/// binary search. The same condition written as `(a = ? AND b = ?) OR …` makes the server
/// evaluate the whole chain against every row read: quadratic in the batch (it was a fifth of
/// MariaDB's CPU under the create-path benchmark at 500 pairs).
pub fn push_pairs_in<'args>(
    query: &mut sqlx::QueryBuilder<'args, sqlx::MySql>,
    (first, second): (&str, &str),
    pairs: impl IntoIterator<Item = (u64, u64)>,
) {
    query.push(format_args!("({first}, {second}) IN ("));
    for (i, (a, b)) in pairs.into_iter().enumerate() {
        query.push(if i == 0 { "(" } else { ", (" });
        query.push_bind(a).push(", ").push_bind(b).push(")");
    }
    query.push(")");
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::config::env;

    /// With MySQL down, a beat waits out the pool's acquire timeout (5 s). A shutdown meanwhile
    /// must not wait for it: the persister once took 10 s to stop so, the likely reason a test's
    /// 30 s limit on its stop once ran out on a loaded machine.
    #[tokio::test]
    async fn a_heartbeat_with_mysql_down_stops_as_soon_as_asked() {
        // Nothing listens on port 1: every connection attempt is refused.
        let config = CommonConfig::from_env(
            &env(&[("DATABASE_URL", "mysql://root@127.0.0.1:1/confab")]),
            9090,
        )
        .unwrap();
        let pool = pool(&config).unwrap();
        let asked = Duration::from_millis(500);
        let started = Instant::now();
        heartbeat(pool, tokio::time::sleep(asked)).await;
        let stopped_after = started.elapsed() - asked;
        assert!(
            stopped_after < Duration::from_secs(1),
            "the heartbeat stopped {stopped_after:?} after it was asked to"
        );
    }
}
