//! Numbers from Redis `INCR`, re-seeded when the sequence key is missing, with the quotas that
//! guard them decided in the same atomic step.
//!
//! Two Lua scripts keep each step atomic in Redis: "increment only if the key exists" (the hot
//! path, which decides a batch of concurrent requests in one call: [`batch`]), and "raise to at
//! least the seed, then increment". The seed is computed between them (highest
//! number in MySQL or in flight in JetStream, see [`confab_core::sequence`]) when the key is
//! missing or a number collided. Raising is a `max`, so concurrent re-seeders (and the persister,
//! which raises sequences after each commit) never move a sequence backwards.
//!
//! Both scripts first apply the [`Admission`] rules: a cap on the sequence (the chat limit is
//! exact under any concurrency, because no number past it is ever taken) and a GCRA rate limiter
//! whose state is one Redis key per application, so the rate holds across every api replica. A
//! rejected request changes nothing (but a raise, which any writer may make). Doing it inside
//! the numbering script costs no extra round trip on the hot path.
//!
//! The scripts live in `lua/`: the shared admission rules (`admission.lua`, which uses Redis
//! `TIME` as its clock) are joined in front of each script's body at compile time.
//!
//! Seeding is fenced and waits out a quiescence ([`confab_core::sequence`]): each application
//! has an epoch in Redis, when its sequences began. A seed is read only once the epoch is
//! `CONFAB_PUBLISH_DEADLINE_MS` plus twice `CONFAB_CLOCK_SKEW_MS` old (`503 sequence_recovering`
//! with `Retry-After` before then: only after Redis lost its data), and written only while the
//! epoch is still the one it was read under.

use std::future::Future;
use std::sync::LazyLock;

use confab_core::keys::Keys;
use confab_core::quota::{retry_after_secs, RateLimitState, RateParams};
use confab_runtime::cache::Redis;
use redis::Script;

use crate::error::{ApiError, Result};
use crate::metrics::Metrics;

static RAISE_THEN_INCR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/admission.lua"),
        include_str!("lua/raise_then_incr.lua")
    ))
});

/// What must hold before a number is taken.
static RATE_ONLY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/admission.lua"),
        include_str!("lua/rate_only.lua")
    ))
});

static EPOCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/epoch.lua")));

/// The name of the message-rate policy in the `RateLimit` headers.
const MESSAGES: &str = "messages";

/// A number taken, and the rate limiter's state after taking it (when the rate is limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered {
    pub number: u64,
    pub rate: Option<RateLimitState>,
}

#[derive(Debug, Clone)]
pub struct Admission {
    /// The sequence never goes past this (the chat limit); 0 means no cap.
    pub cap: u64,
    /// The rate limiter's key and parameters, if the rate is limited.
    pub rate: Option<(String, RateParams)>,
    /// The parent's deletion mark: no number is taken while it is set.
    pub gone: Option<String>,
    /// The application: seeding waits until its sequence epoch
    /// ([`confab_core::keys::Keys::sequence_epoch`]) is settled and is fenced by it. (An id, not
    /// the key: the key is built only on the rare seeding path, not on every request.)
    pub application_id: u64,
}

/// The raising script's status when it moved the key (otherwise it answers like the first one).
const SEEDED: u8 = 4;
/// The raising script's status when the epoch changed since the seed was read.
const FENCED: u8 = 6;

#[derive(Clone)]
pub struct Numbering {
    redis: Redis,
    /// The hot path's script calls, shared by concurrent requests ([`batch`]).
    batches: batch::Batches,
    metrics: Metrics,
    keys: Keys,
    /// How long after its epoch began an application's sequences may be seeded
    /// ([`confab_runtime::config::StreamConfig::reseed_quiescence`]).
    quiescence: std::time::Duration,
}

impl Numbering {
    pub fn new(
        redis: Redis,
        metrics: Metrics,
        keys: Keys,
        quiescence: std::time::Duration,
    ) -> Self {
        Self {
            batches: batch::Batches::new(redis.clone()),
            redis,
            metrics,
            keys,
            quiescence,
        }
    }

    fn quiescence_us(&self) -> u64 {
        u64::try_from(self.quiescence.as_micros()).unwrap_or(u64::MAX)
    }

    /// Starts a new application's epoch as already settled: none of its numbers was ever handed
    /// out, so none can be in flight, and its first chat need not wait out a quiescence. (Left
    /// unset, as when Redis is away now, it starts unsettled at its first chat.) It is dated
    /// the quiescence back, or `at_least` when longer (what the read replica's rule needs:
    /// [`crate::reads`]; a new application has no change a replica could lack).
    pub async fn settle_new_application(
        &self,
        application_id: u64,
        at_least: std::time::Duration,
    ) -> Result<()> {
        let back = u64::try_from(at_least.as_micros())
            .unwrap_or(u64::MAX)
            .max(self.quiescence_us());
        let _: (String, String) = EPOCH
            .key(self.keys.sequence_epoch(application_id))
            .arg(back)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// The application's epoch, once seeds may be read under it: `503 sequence_recovering` while
    /// it is younger than the quiescence (it starts now when missing: Redis lost its data).
    async fn settled_epoch(&self, epoch_key: &str) -> Result<String> {
        let (epoch, now): (String, String) = EPOCH
            .key(epoch_key)
            .arg(0)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let parse = |v: &str| v.parse::<u64>().unwrap_or(0);
        let settled_at = parse(&epoch).saturating_add(self.quiescence_us());
        match settled_at.checked_sub(parse(&now)) {
            Some(wait_us) if wait_us > 0 => Err(ApiError::Recovering {
                retry_after_secs: wait_us.div_ceil(1_000_000),
            }),
            _ => Ok(epoch),
        }
    }

    /// The next number of the sequence at `key`, if `admission` allows one. `seed` is called
    /// only when the key is missing, or always when `raise_first` (after a collision showed the
    /// sequence is behind the stream).
    pub async fn next<F>(
        &self,
        key: &str,
        kind: &'static str,
        admission: &Admission,
        raise_first: bool,
        seed: impl FnOnce() -> F,
    ) -> Result<Numbered>
    where
        F: Future<Output = Result<u64>>,
    {
        if !raise_first {
            let started = std::time::Instant::now();
            let answer = self
                .batches
                .incr_existing(key.to_owned(), admission.clone())
                .await?;
            self.metrics.dependencies.redis("next_number", started);
            if answer.0 != 1 {
                return decide(answer, kind, admission, &self.metrics);
            }
        }
        let epoch_key = self.keys.sequence_epoch(admission.application_id);
        let epoch = match self.settled_epoch(&epoch_key).await {
            Ok(epoch) => epoch,
            Err(recovering @ ApiError::Recovering { .. }) => {
                // Not yet: but a deleted parent is `404` now, not after the quiescence (its
                // mark went with Redis; the seed's reads find the deletion and mark it again).
                // What they read is not used.
                seed().await?;
                return Err(recovering);
            }
            Err(other) => return Err(other),
        };
        let seed = seed().await?;
        let answer: (u8, u64, i64) = raise_invocation(key, admission, &epoch_key)
            .arg(seed)
            .arg(&epoch)
            .invoke_async(&mut self.redis.clone())
            .await?;
        if answer.0 == FENCED {
            tracing::warn!(kind, "redis lost its data while a sequence was seeded");
            return Err(ApiError::Recovering {
                retry_after_secs: self.quiescence.as_secs().max(1),
            });
        }
        if answer.0 == SEEDED {
            // Only the replica whose value moved the key counts; the others found it at least as
            // high and incremented.
            self.metrics
                .sequence_reseeds
                .with_label_values(&[kind])
                .inc();
            tracing::info!(kind, seed, "sequence seeded");
            return decide((0, answer.1, answer.2), kind, admission, &self.metrics);
        }
        decide(answer, kind, admission, &self.metrics)
    }
}

impl Numbering {
    /// Admits one request of the GCRA limiter at `key` (no number taken): its state after the
    /// admission (named `policy` in the headers), or `429 rate_limited` saying `what` was
    /// exceeded (counted under `quota`).
    pub async fn admit(
        &self,
        key: &str,
        params: &RateParams,
        (policy, quota, what): (&'static str, &'static str, &'static str),
    ) -> Result<RateLimitState> {
        let started = std::time::Instant::now();
        let (status, value, ahead): (u8, u64, i64) = RATE_ONLY
            .key(key)
            .arg(params.emission_us)
            .arg(params.tolerance_us)
            .invoke_async(&mut self.redis.clone())
            .await?;
        self.metrics.dependencies.redis("admit", started);
        if status == 3 {
            self.metrics
                .quota_rejections
                .with_label_values(&[quota])
                .inc();
            return Err(ApiError::RateLimited {
                what,
                retry_after_secs: retry_after_secs(value),
                rate: Some(params.refused(policy, value)),
            });
        }
        Ok(params.admitted(policy, u64::try_from(ahead).unwrap_or(0)))
    }
}

/// The raising script's invocation: the request's keys and arguments as a batch of one lays them
/// out ([`batch::push`]), then the epoch it fences on.
fn raise_invocation(
    key: &str,
    admission: &Admission,
    fence: &str,
) -> redis::ScriptInvocation<'static> {
    let mut invocation = RAISE_THEN_INCR.prepare_invoke();
    batch::push(&mut invocation, key, admission);
    invocation.key(fence);
    invocation
}

/// The script's `{status, value}` answer as a number or a quota error.
fn decide(
    (status, value, ahead): (u8, u64, i64),
    kind: &'static str,
    admission: &Admission,
    metrics: &Metrics,
) -> Result<Numbered> {
    let params = admission.rate.as_ref().map(|(_, params)| params);
    match status {
        0 => Ok(Numbered {
            number: value,
            rate: params
                .zip(u64::try_from(ahead).ok())
                .map(|(params, ahead)| params.admitted(MESSAGES, ahead)),
        }),
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
                what: "the application's message rate is exceeded",
                retry_after_secs: retry_after_secs(value),
                rate: params.map(|params| params.refused(MESSAGES, value)),
            })
        }
        5 => Err(ApiError::NotFound("chat")),
        other => Err(ApiError::Unavailable(format!(
            "{kind} numbering answered an unknown status {other}"
        ))),
    }
}

mod batch;

#[cfg(test)]
mod tests;
