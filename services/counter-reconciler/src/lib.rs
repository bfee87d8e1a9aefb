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
        let started = std::time::Instant::now();
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
                let took = started.elapsed();
                if let Err(error) = reconcile::observe_lag(&pool, &metrics).await {
                    tracing::warn!(%error, "cannot read counter lag");
                }
                pause_after(config.interval, took)
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

/// How many times a run's own duration the reconciler pauses after it (at least the interval).
/// A recount reads every row of each changed parent, so under a steady write load its cost
/// grows with the parents' sizes: measured over 1.16 million messages in 100 chats, recounting
/// every 500 ms doubled MariaDB's CPU per message and the persister fell 25–77 s behind. Pausing
/// in proportion keeps recounts to at most a fifth of the reconciler's time, so the counts lag
/// more (in proportion to what a recount costs) instead of the writes.
const PAUSE_PER_RUN_TIME: u32 = 4;

/// The pause after a run that took `took`: the interval, or longer after a long run.
fn pause_after(interval: Duration, took: Duration) -> Duration {
    interval.max(took.saturating_mul(PAUSE_PER_RUN_TIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_run_is_followed_by_a_proportionally_longer_pause() {
        let interval = Duration::from_millis(500);
        assert_eq!(pause_after(interval, Duration::ZERO), interval);
        assert_eq!(pause_after(interval, Duration::from_millis(100)), interval);
        assert_eq!(
            pause_after(interval, Duration::from_millis(300)),
            Duration::from_millis(1200)
        );
        assert_eq!(
            pause_after(interval, Duration::from_secs(2)),
            Duration::from_secs(8)
        );
    }
}
