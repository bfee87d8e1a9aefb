//! Numbers from Redis `INCR`, re-seeded when the sequence key is missing, with the quotas that
//! guard them decided in the same atomic step.
//!
//! Two Lua scripts keep each step atomic in Redis: "increment only if the key exists", and
//! "raise to at least the seed, then increment". The seed is computed between them (highest
//! number in MySQL or in flight in JetStream, see [`confab_core::sequence`]) when the key is
//! missing or a number collided. Raising is a `max`, so concurrent re-seeders (and the persister,
//! which raises sequences after each commit) never move a sequence backwards.
//!
//! Both scripts first apply the [`Admission`] rules: a cap on the sequence (the chat limit is
//! exact under any concurrency, because no number past it is ever taken) and a GCRA rate limiter
//! whose state is one Redis key per application, so the rate holds across every api replica. A
//! rejected request changes nothing. Doing it inside the numbering script costs no extra round
//! trip on the hot path.

use std::future::Future;
use std::sync::LazyLock;

use confab_core::quota::{retry_after_secs, RateParams};
use redis::aio::ConnectionManager;
use redis::Script;

use crate::error::{ApiError, Result};
use crate::metrics::Metrics;

/// Shared by both scripts: `check()` returns a rejection `{2, 0}` (cap reached) or `{3, wait_us}`
/// (rate exceeded), or nil after recording the admission. KEYS[1] is the sequence, KEYS[2] the
/// rate state; ARGV[1] the cap (0: none), ARGV[2] the emission interval in µs (0: no rate limit),
/// ARGV[3] the tolerance in µs.
const ADMISSION: &str = r"
local function check()
  local cap = tonumber(ARGV[1])
  if cap > 0 and tonumber(redis.call('GET', KEYS[1])) >= cap then
    return {2, 0}
  end
  local emission = tonumber(ARGV[2])
  if emission == 0 then return nil end
  local tolerance = tonumber(ARGV[3])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tat = tonumber(redis.call('GET', KEYS[2]) or now)
  if tat < now then tat = now end
  local wait = tat - now - tolerance
  if wait > 0 then return {3, wait} end
  local next_tat = tat + emission
  redis.call('SET', KEYS[2], string.format('%d', next_tat),
    'PX', math.floor((next_tat - now) / 1000) + 1000)
  return nil
end
";

static INCR_EXISTING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{ADMISSION}
        if redis.call('EXISTS', KEYS[1]) == 0 then return {{1, 0}} end
        local rejected = check()
        if rejected then return rejected end
        return {{0, redis.call('INCR', KEYS[1])}}"
    ))
});

static RAISE_THEN_INCR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{ADMISSION}
        local seeded = 0
        local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
        if current < tonumber(ARGV[4]) then
          redis.call('SET', KEYS[1], ARGV[4])
          seeded = 4
        end
        local rejected = check()
        if rejected then return rejected end
        return {{seeded, redis.call('INCR', KEYS[1])}}"
    ))
});

/// What must hold before a number is taken.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The sequence never goes past this (the chat limit); 0 means no cap.
    pub cap: u64,
    /// The rate limiter's key and parameters, if the rate is limited.
    pub rate: Option<(String, RateParams)>,
}

/// The raising script's status when it moved the key (otherwise it answers like the first one).
const SEEDED: u8 = 4;

#[derive(Clone)]
pub struct Numbering {
    redis: ConnectionManager,
    metrics: Metrics,
}

impl Numbering {
    pub fn new(redis: ConnectionManager, metrics: Metrics) -> Self {
        Self { redis, metrics }
    }

    /// The next number of the sequence at `key`, if `admission` allows one. `seed` is awaited
    /// only when the key is missing, or always when `raise_first` (after a collision showed the
    /// sequence is behind the stream).
    pub async fn next<F>(
        &self,
        key: &str,
        kind: &'static str,
        admission: &Admission,
        raise_first: bool,
        seed: F,
    ) -> Result<u64>
    where
        F: Future<Output = Result<u64>>,
    {
        let mut conn = self.redis.clone();
        if !raise_first {
            let started = std::time::Instant::now();
            let answer: (u8, u64) = invocation(&INCR_EXISTING, key, admission)
                .invoke_async(&mut conn)
                .await?;
            self.metrics.dependencies.redis("next_number", started);
            if answer.0 != 1 {
                return decide(answer, kind, admission, &self.metrics);
            }
        }
        let seed = seed.await?;
        let answer: (u8, u64) = invocation(&RAISE_THEN_INCR, key, admission)
            .arg(seed)
            .invoke_async(&mut conn)
            .await?;
        if answer.0 == SEEDED {
            // Only the replica whose value moved the key counts; the others found it at least as
            // high and incremented.
            self.metrics
                .sequence_reseeds
                .with_label_values(&[kind])
                .inc();
            tracing::info!(kind, seed, "sequence seeded");
            return Ok(answer.1);
        }
        decide(answer, kind, admission, &self.metrics)
    }
}

fn invocation<'a>(
    script: &'a Script,
    key: &str,
    admission: &Admission,
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.key(key);
    match &admission.rate {
        Some((rate_key, params)) => {
            invocation
                .key(rate_key)
                .arg(admission.cap)
                .arg(params.emission_us)
                .arg(params.tolerance_us);
        }
        None => {
            invocation.key(key).arg(admission.cap).arg(0).arg(0);
        }
    }
    invocation
}

/// The script's `{status, value}` answer as a number or a quota error.
fn decide(
    (status, value): (u8, u64),
    kind: &'static str,
    admission: &Admission,
    metrics: &Metrics,
) -> Result<u64> {
    match status {
        0 => Ok(value),
        2 => {
            metrics.quota_rejections.with_label_values(&["chats"]).inc();
            Err(ApiError::ChatLimit(admission.cap))
        }
        3 => {
            metrics
                .quota_rejections
                .with_label_values(&["message_rate"])
                .inc();
            Err(ApiError::RateLimited {
                retry_after_secs: retry_after_secs(value),
            })
        }
        other => Err(ApiError::Unavailable(format!(
            "{kind} numbering answered an unknown status {other}"
        ))),
    }
}
