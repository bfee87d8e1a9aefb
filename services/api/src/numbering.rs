//! Numbers from Redis `INCR`, re-seeded when the sequence key is missing.
//!
//! Two Lua scripts keep each step atomic in Redis: "increment only if the key exists", and
//! "seed if still missing, then increment". The seed is computed between them (highest number in
//! MySQL or in flight in JetStream, see [`confab_core::sequence`]); if two api replicas re-seed at
//! once, the first `SET` wins and the other simply increments, so no number is handed out twice.

use std::future::Future;
use std::sync::LazyLock;

use confab_runtime::metrics;
use redis::aio::ConnectionManager;
use redis::Script;

use crate::error::Result;

static INCR_EXISTING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 1 then
            return redis.call('INCR', KEYS[1])
          end
          return false",
    )
});

static SEED_THEN_INCR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 0 then
            redis.call('SET', KEYS[1], ARGV[1])
          end
          return redis.call('INCR', KEYS[1])",
    )
});

#[derive(Clone)]
pub struct Numbering {
    redis: ConnectionManager,
}

impl Numbering {
    pub fn new(redis: ConnectionManager) -> Self {
        Self { redis }
    }

    /// The next number of the sequence at `key`. `seed` is awaited only when the key is missing.
    pub async fn next<F>(&self, key: &str, kind: &'static str, seed: F) -> Result<u64>
    where
        F: Future<Output = Result<u64>>,
    {
        let mut conn = self.redis.clone();
        let existing: Option<u64> = INCR_EXISTING.key(key).invoke_async(&mut conn).await?;
        if let Some(n) = existing {
            return Ok(n);
        }
        let seed = seed.await?;
        metrics::SEQUENCE_RESEEDS.with_label_values(&[kind]).inc();
        tracing::info!(kind, seed, "sequence seeded");
        let n: u64 = SEED_THEN_INCR
            .key(key)
            .arg(seed)
            .invoke_async(&mut conn)
            .await?;
        Ok(n)
    }

    /// The last number handed out by a sequence, if Redis has it.
    pub async fn current(&self, key: &str) -> Result<Option<u64>> {
        let mut conn = self.redis.clone();
        let value: Option<u64> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        Ok(value)
    }
}
