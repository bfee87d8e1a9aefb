//! Where the api's reads of chats and messages go: a MySQL read replica (`DATABASE_READ_URL`)
//! when it cannot show an item going backwards, else the primary.
//!
//! A replica answers a read of an application only when all three hold:
//! - its lag, the age of the heartbeat the persister rewrites on the primary every 250 ms
//!   ([`confab_runtime::db::heartbeat`]), looked at every 200 ms, is at most
//!   `CONFAB_READ_REPLICA_MAX_LAG_MS`;
//! - the application is not marked changed ([`confab_core::keys::Keys::recent_change`]): the
//!   persister marks it before and after committing an edit or a deletion, for the allowed lag
//!   and a 2 s margin, so by the time the mark expires a replica within the lag shows the
//!   change;
//! - its sequence epoch is in Redis and older than the mark lasts: an epoch is created when
//!   Redis lost the application's keys, the marks with them.
//!
//! A deleted item or an edit therefore never comes back from a replica. A creation is not
//! marked: a lookup of one item that the replica does not show reads the stream, then the
//! primary ([`crate::resolve`]), and a list may miss the items of the last second. A failed read
//! on the replica is read again on the primary, and the replica is left alone until its
//! heartbeat is fresh again.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_core::keys::Keys;
use confab_runtime::cache::Redis;
use sqlx::MySqlPool;

use crate::metrics::Metrics;

/// How often the replica's heartbeat is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// What an application's change mark outlasts the allowed lag by (the persister's margin).
const MARK_MARGIN: Duration = Duration::from_secs(2);

/// The primary, and the replica when one is configured.
#[derive(Clone)]
pub struct Reads {
    pub primary: MySqlPool,
    replica: Option<Arc<Replica>>,
    /// Where each read was answered (`confab_db_reads_total`).
    metrics: Metrics,
}

struct Replica {
    pool: MySqlPool,
    /// Where the applications' change marks and epochs are.
    redis: Redis,
    keys: Keys,
    /// The lag the last look measured, µs; `u64::MAX` while unknown or unreachable.
    lag_us: AtomicU64,
    max_lag: Duration,
    /// How old an application's epoch must be before its reads may go to the replica.
    settle: Duration,
}

impl Reads {
    /// Reads from the primary only.
    pub fn primary(primary: MySqlPool, metrics: Metrics) -> Self {
        Self {
            primary,
            replica: None,
            metrics,
        }
    }

    /// [`Self::primary`], and `replica` when it may answer (lag at most `max_lag`;
    /// `clock_skew` between Redis's and this host's clocks, whose `redis` and `keys` hold the
    /// marks); starts watching its lag (the task ends when the last clone of the returned value
    /// is dropped).
    pub fn with_replica(
        self,
        replica: MySqlPool,
        (redis, keys): (Redis, Keys),
        max_lag: Duration,
        clock_skew: Duration,
    ) -> Self {
        let replica = Arc::new(Replica {
            pool: replica,
            redis,
            keys,
            lag_us: AtomicU64::new(u64::MAX),
            max_lag,
            settle: max_lag + MARK_MARGIN + clock_skew,
        });
        tokio::spawn(watch(
            Arc::downgrade(&replica),
            self.metrics.read_replica_lag.clone(),
        ));
        Self {
            replica: Some(replica),
            ..self
        }
    }

    /// How old an application's sequence epoch must be before the replica may answer for it
    /// (zero without a replica).
    pub fn settle(&self) -> Duration {
        self.replica
            .as_ref()
            .map_or(Duration::ZERO, |replica| replica.settle)
    }

    /// Runs `read` on the replica when it may answer for `application_id`, else (or when it
    /// fails there) on the primary.
    pub async fn read<T, F, Fut>(&self, application_id: u64, read: F) -> sqlx::Result<T>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = sqlx::Result<T>>,
    {
        self.read_where(application_id, read, |_| true).await
    }

    /// [`Self::read`] of one item: what the replica does not show (yet) is looked for on the
    /// primary too, so an item once found is never missing from a later lookup.
    pub async fn read_one<T, F, Fut>(&self, application_id: u64, read: F) -> sqlx::Result<Option<T>>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = sqlx::Result<Option<T>>>,
    {
        self.read_where(application_id, read, Option::is_some).await
    }

    /// `read` on the replica when it may answer and its answer is `final_answer`, else on the
    /// primary.
    async fn read_where<T, F, Fut>(
        &self,
        application_id: u64,
        read: F,
        final_answer: impl Fn(&T) -> bool,
    ) -> sqlx::Result<T>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = sqlx::Result<T>>,
    {
        if let Some(replica) = self.usable(application_id).await {
            match read(replica.pool.clone()).await {
                Ok(found) if final_answer(&found) => {
                    self.metrics.reads.with_label_values(&["replica"]).inc();
                    return Ok(found);
                }
                Ok(_) => {}
                Err(error) => replica.failed(&error),
            }
        }
        self.metrics.reads.with_label_values(&["primary"]).inc();
        read(self.primary.clone()).await
    }

    /// The replica, when it may answer a read of `application_id`.
    async fn usable(&self, application_id: u64) -> Option<&Replica> {
        let replica = self.replica.as_deref()?;
        (replica.fresh() && replica.settled(application_id).await).then_some(replica)
    }
}

impl Replica {
    /// A read failed here: the primary answers until the next look finds the replica fresh.
    fn failed(&self, error: &sqlx::Error) {
        tracing::warn!(%error, "read replica failed; reading the primary");
        self.lag_us.store(u64::MAX, Ordering::Relaxed);
    }

    fn fresh(&self) -> bool {
        let lag = self.lag_us.load(Ordering::Relaxed);
        u128::from(lag) <= self.max_lag.as_micros()
    }

    /// Whether the application has no change the replica may still lack, and Redis has kept its
    /// marks long enough to tell (see the module's note). Any doubt, a Redis error included, is a no.
    async fn settled(&self, application_id: u64) -> bool {
        let (keys, settle) = (&self.keys, self.settle);
        let mut redis = self.redis.clone();
        let mut both = redis::cmd("MGET");
        both.arg(keys.recent_change(application_id))
            .arg(keys.sequence_epoch(application_id));
        let Ok((changed, epoch)): Result<(Option<String>, Option<u64>), _> =
            both.query_async(&mut redis).await
        else {
            return false;
        };
        let Some(epoch_us) = epoch else {
            return false;
        };
        let now_us = chrono::Utc::now().timestamp_micros();
        let settled_for = u128::try_from(now_us)
            .unwrap_or(0)
            .saturating_sub(u128::from(epoch_us));
        changed.is_none() && settled_for > settle.as_micros()
    }
}

/// Measures the replica's lag every [`WATCH_EVERY`] while the replica is in use.
async fn watch(replica: std::sync::Weak<Replica>, lag_gauge: confab_runtime::metrics::Gauge) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(replica) = replica.upgrade() else {
            return;
        };
        let lag = tokio::time::timeout(
            WATCH_EVERY * 5,
            confab_runtime::db::replica_lag(&replica.pool),
        )
        .await;
        let lag_us = match lag {
            Ok(Ok(Some(lag))) => u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            Ok(Ok(None)) => u64::MAX,
            Ok(Err(error)) => {
                tracing::debug!(%error, "read replica's heartbeat");
                u64::MAX
            }
            Err(_) => u64::MAX,
        };
        replica.lag_us.store(lag_us, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        lag_gauge.set(if lag_us == u64::MAX {
            -1.0
        } else {
            lag_us as f64 / 1e6
        });
    }
}
