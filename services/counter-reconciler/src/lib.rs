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
pub mod metrics;
pub mod purge;
pub mod reconcile;
pub mod repair;

use std::future::Future;
use std::time::Duration;

use confab_runtime::admin::{self, Readiness};
use confab_runtime::backoff::Backoff;
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

/// Runs the reconcile loop until `shutdown` resolves; the run in progress is finished first.
pub async fn run(
    config: ReconcilerConfig,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown = Shutdown::new(shutdown);
    let registry = confab_runtime::metrics::registry();
    let metrics = metrics::Metrics::register(&registry);
    let pool = pool(&config.common)?;
    let readiness = Readiness::default().mysql(&pool);
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        readiness,
        registry,
        shutdown.wait(),
    ));
    let purge = tokio::spawn(purge::run(
        pool.clone(),
        metrics.clone(),
        config.purge_interval,
        config.purge_chunk,
        shutdown.wait(),
    ));
    tracing::info!(
        interval_ms = config.interval.as_millis() as u64,
        "counter reconciler running"
    );
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut failures = 0u32;
    loop {
        let pause = match reconcile::run_once(&pool, &metrics, config.batch).await {
            Ok(stats) => {
                failures = 0;
                if stats != reconcile::RunStats::default() {
                    tracing::debug!(
                        chats = stats.chats_recounted,
                        applications = stats.applications_recounted,
                        "counts reconciled"
                    );
                }
                if let Err(error) = reconcile::observe_lag(&pool, &metrics).await {
                    tracing::warn!(%error, "cannot read counter lag");
                }
                config.interval
            }
            // A deadlock or lock wait timeout is InnoDB resolving contention with the persister:
            // the transaction was rolled back whole, so retry at once.
            Err(error) if db::classify(&error) == db::Failure::LockConflict => {
                tracing::debug!(%error, "reconcile run lost a lock conflict; retrying");
                Duration::ZERO
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "reconcile run failed; retrying");
                Backoff::new(config.interval, Duration::from_secs(30)).delay(failures)
            }
        };
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    if let Err(error) = purge.await {
        tracing::warn!(%error, "purge task failed");
    }
    shutdown::drain(&shutdown, None, vec![admin]).await?;
    tracing::info!("counter reconciler stopped");
    Ok(())
}
