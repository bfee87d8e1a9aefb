//! The per-application limit on concurrent live subscriptions, across every api replica.
//!
//! Each open subscription holds a lease: a member of the application's sorted set in Redis
//! ([`confab_core::keys::Keys::subscriptions`]) scored by when the lease ends. Opening one is a
//! single script: drop the expired leases, refuse when the set is at the limit, add. The
//! subscription renews its lease at every heartbeat and removes it when it ends, so the set counts
//! what is open; a replica that dies leaves leases that expire within three heartbeats.

use std::sync::LazyLock;
use std::time::Duration;

use confab_runtime::cache::Redis;

use super::Error;

/// KEYS[1]: the set; ARGV: limit (0: none), lease milliseconds, member. Returns 1 when the lease
/// is held, 0 at the limit. Time is Redis' own, the same for every replica.
const ACQUIRE: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
local limit = tonumber(ARGV[1])
if limit > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[3])
    and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ACQUIRE));

pub struct Lease {
    redis: Redis,
    key: String,
    member: String,
    length: Duration,
    /// When the lease is renewed next: at a third of its length, so two renewals can fail before
    /// it expires.
    renew_at: std::time::Instant,
}

impl Lease {
    /// A lease on one of `limit` subscriptions (`None` when the application has no limit).
    pub async fn acquire(
        redis: Redis,
        key: String,
        limit: u32,
        length: Duration,
    ) -> Result<Option<Self>, Error> {
        if limit == 0 {
            return Ok(None);
        }
        let lease = Self {
            redis,
            key,
            member: uuid::Uuid::new_v4().simple().to_string(),
            length,
            renew_at: std::time::Instant::now() + length / 3,
        };
        if lease.run(limit).await? {
            Ok(Some(lease))
        } else {
            Err(Error::Limit(limit))
        }
    }

    /// Extends the lease when a third of it has passed; a failure is logged (the lease then
    /// expires, and the limit counts the subscription a little less long).
    pub async fn renew_if_due(&mut self) {
        let now = std::time::Instant::now();
        if now < self.renew_at {
            return;
        }
        // A renewal that failed is tried again after a ninth of the lease (two more tries
        // before it expires), not at every check: Redis being away must not hold every
        // subscriber up at each of them.
        match self.run(0).await {
            Ok(_) => self.renew_at = now + self.length / 3,
            Err(error) => {
                self.renew_at = now + self.length / 9;
                tracing::warn!(%error, "renewing a live subscription's lease");
            }
        }
    }

    async fn run(&self, limit: u32) -> Result<bool, Error> {
        let held: i64 = SCRIPT
            .key(&self.key)
            .arg(limit)
            .arg(self.length.as_millis() as u64)
            .arg(&self.member)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(|e| Error::Unavailable(format!("redis: {e}")))?;
        Ok(held == 1)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut redis = self.redis.clone();
        let (key, member) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        tokio::spawn(async move {
            let removed: redis::RedisResult<i64> = redis::cmd("ZREM")
                .arg(&key)
                .arg(&member)
                .query_async(&mut redis)
                .await;
            if let Err(error) = removed {
                tracing::warn!(%error, "releasing a live subscription's lease");
            }
        });
    }
}
