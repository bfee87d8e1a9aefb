//! The counter reconciler keeps `applications.chats_count` and `chats.messages_count` equal to the
//! number of persisted rows, within seconds, doing work proportional to what changed.
//!
//! The persister marks changed parents in dirty tables in the same transaction as the rows it
//! writes (a transactional outbox, so a mark exists iff a change may not be counted yet). This
//! service claims marks with `FOR UPDATE SKIP LOCKED`, recounts exactly those parents, and deletes
//! the marks in the same transaction ([`reconcile`]). Replicas split the marks between them; a
//! crash at any point leaves the marks for the next run. `confab-counter-reconciler repair`
//! recomputes everything in bounded chunks ([`repair`]).

pub mod config;
pub mod purge;
pub mod reconcile;
pub mod repair;

use std::future::Future;
use std::time::Duration;

use confab_runtime::admin::{self, Readiness};
use confab_runtime::shutdown::{self, Shutdown};
use confab_runtime::{db, CommonConfig};
use sqlx::mysql::MySqlPool;
use tokio::net::TcpListener;

pub use config::ReconcilerConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("admin server: {0}")]
    Io(#[from] std::io::Error),
}

/// The reconciler's pool; like every Confab pool its sessions run at READ COMMITTED, which the
/// recount relies on.
pub fn pool(config: &CommonConfig) -> Result<MySqlPool, sqlx::Error> {
    db::pool(config)
}

/// MySQL's deadlock (1213) and lock wait timeout (1205).
fn is_lock_conflict(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|e| matches!(e.number(), 1213 | 1205))
}

/// Runs the reconcile loop until `shutdown` resolves; the run in progress is finished first.
pub async fn run(
    config: ReconcilerConfig,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown = Shutdown::new(shutdown);
    confab_runtime::metrics::initialize("confab-counter-reconciler");
    let pool = pool(&config.common)?;
    let readiness = Readiness::default().mysql(&pool);
    let admin = tokio::spawn(admin::serve(admin_listener, readiness, shutdown.wait()));
    tracing::info!(
        interval_ms = config.interval.as_millis() as u64,
        "counter reconciler running"
    );
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut failures = 0u32;
    loop {
        let pause = match reconcile::run_once(&pool, config.batch).await {
            Ok(stats) => {
                failures = 0;
                if stats != reconcile::RunStats::default() {
                    tracing::debug!(
                        chats = stats.chats_recounted,
                        applications = stats.applications_recounted,
                        "counts reconciled"
                    );
                }
                if let Err(error) = reconcile::observe_lag(&pool).await {
                    tracing::warn!(%error, "cannot read counter lag");
                }
                if let Err(error) = purge::purge_deleted(&pool, config.batch).await {
                    tracing::warn!(%error, "cannot purge deleted applications");
                }
                config.interval
            }
            // A deadlock or lock wait timeout is InnoDB resolving contention with the persister:
            // the transaction was rolled back whole, so retry at once.
            Err(error) if is_lock_conflict(&error) => {
                tracing::debug!(%error, "reconcile run lost a lock conflict; retrying");
                Duration::ZERO
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "reconcile run failed; retrying");
                (config.interval * 2u32.pow(failures.min(5))).min(Duration::from_secs(30))
            }
        };
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    shutdown::drain(&shutdown, None, vec![admin]).await?;
    tracing::info!("counter reconciler stopped");
    Ok(())
}
