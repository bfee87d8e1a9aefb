//! Numbering in batches: the requests of one replica that wait for a number at the same time
//! share one call of the numbering script, as a group commit shares one flush.
//!
//! A script call costs Redis far more than the commands it runs (its setup, and each
//! `redis.call`), and a round trip costs both ends a write and a read. So a request that finds
//! no call of its group in flight sends one at once, alone (no waiting at a light load); requests
//! that arrive while it is in flight queue, and the next call takes them all (at most
//! [`MAX_BATCH`]). The script decides them one after the other, each as its own call would
//! (later requests see the TAT and sequences earlier ones wrote), so a batch answers what the
//! same requests sent one by one in that order would.
//!
//! A group is every request on one Redis, and one application on a Redis Cluster: a script's keys
//! must share a slot, and an application's keys share its hash tag.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use confab_runtime::cache::Redis;
use redis::Script;
use tokio::sync::oneshot;

use super::Admission;

/// The hot path's script: "increment only if the key exists", for each request of a batch.
pub(super) static INCR_EXISTING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/admission.lua"),
        include_str!("../lua/incr_existing.lua")
    ))
});

/// At most this many requests per script call: Redis runs a script alone, so a call is kept to
/// well under a millisecond (each request costs it a few µs).
const MAX_BATCH: usize = 128;

/// One request's answer: the script's `(status, value, ahead)`, or why the call failed.
pub type Answer = std::result::Result<(u8, u64, i64), Failed>;

/// A failed script call, for every request of its batch.
#[derive(Debug, Clone)]
pub struct Failed {
    /// Redis away, a cluster between states: the request may be retried (`503`).
    pub transient: bool,
    pub message: String,
}

impl From<Failed> for crate::error::ApiError {
    fn from(failed: Failed) -> Self {
        if failed.transient {
            Self::Unavailable(failed.message)
        } else {
            Self::Internal(crate::error::Internal::Other(failed.message))
        }
    }
}

struct Waiting {
    key: String,
    admission: Admission,
    answer: oneshot::Sender<Answer>,
}

/// The queues of requests waiting for a call, by group; a group is present while its call is in
/// flight.
type Queues = Arc<Mutex<HashMap<u64, Vec<Waiting>>>>;

/// The queues, locked. A panic while they were held leaves them as they were (every change under
/// the lock is one push, insert, drain or remove), so a poisoned lock is taken as it is.
fn lock(queues: &Queues) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Waiting>>> {
    queues.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The hot path's script calls, shared by the concurrent requests of one replica.
#[derive(Clone)]
pub struct Batches {
    redis: Redis,
    queues: Queues,
}

impl Batches {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            queues: Arc::default(),
        }
    }

    /// Takes the next number of the sequence at `key` if it exists and `admission` allows it:
    /// the increment-existing script's answer for this request.
    pub async fn incr_existing(&self, key: String, admission: Admission) -> Answer {
        let group = if self.redis.is_cluster() {
            admission.application_id
        } else {
            0
        };
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            key,
            admission,
            answer,
        };
        let start = {
            let mut queues = lock(&self.queues);
            match queues.get_mut(&group) {
                Some(queue) => {
                    queue.push(waiting);
                    false
                }
                None => {
                    queues.insert(group, vec![waiting]);
                    true
                }
            }
        };
        if start {
            // A task of its own: a request that gives up (its client left, its timeout) must not
            // leave the others of its batch unanswered.
            tokio::spawn(self.clone().drain(group));
        }
        answered.await.unwrap_or_else(|_| {
            Err(Failed {
                transient: true,
                message: "the numbering call was dropped".to_owned(),
            })
        })
    }

    /// Sends the group's queued requests, a batch at a time, until none is left.
    async fn drain(self, group: u64) {
        let mut draining = Draining {
            queues: self.queues.clone(),
            group,
            armed: true,
        };
        loop {
            let batch: Vec<Waiting> = {
                let mut queues = lock(&self.queues);
                let queue = queues.entry(group).or_default();
                if queue.is_empty() {
                    queues.remove(&group);
                    draining.armed = false;
                    return;
                }
                let take = queue.len().min(MAX_BATCH);
                queue.drain(..take).collect()
            };
            let mut invocation = INCR_EXISTING.prepare_invoke();
            for waiting in &batch {
                push(&mut invocation, &waiting.key, &waiting.admission);
            }
            let answers: redis::RedisResult<Vec<i64>> =
                invocation.invoke_async(&mut self.redis.clone()).await;
            match answers {
                Ok(values) if values.len() == 3 * batch.len() => {
                    for (waiting, answer) in batch.into_iter().zip(values.chunks_exact(3)) {
                        let status = u8::try_from(answer[0]).unwrap_or(u8::MAX);
                        let value = u64::try_from(answer[1]).unwrap_or(0);
                        let _ = waiting.answer.send(Ok((status, value, answer[2])));
                    }
                }
                Ok(values) => {
                    let message = format!(
                        "the numbering script answered {} values for {} requests",
                        values.len(),
                        batch.len()
                    );
                    fail(
                        batch,
                        Failed {
                            transient: false,
                            message,
                        },
                    );
                }
                Err(error) => {
                    let failed = Failed {
                        transient: confab_runtime::cache::is_transient(&error),
                        message: format!("redis: {error}"),
                    };
                    fail(batch, failed);
                }
            }
        }
    }
}

/// Ends a group's drain however its task ends. A drain that stops abnormally (a panic, or its
/// task dropped as the runtime shuts down) would otherwise leave its group looking in flight,
/// with nobody to send what queues behind it: its queue is failed and the group removed, so the
/// next request starts a drain of its own. Disarmed when the drain removes its group itself.
struct Draining {
    queues: Queues,
    group: u64,
    armed: bool,
}

impl Drop for Draining {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let queued = lock(&self.queues).remove(&self.group);
        if let Some(queued) = queued {
            fail(
                queued,
                Failed {
                    transient: true,
                    message: "the numbering call ended before it answered".to_owned(),
                },
            );
        }
    }
}

fn fail(batch: Vec<Waiting>, failed: Failed) {
    for waiting in batch {
        let _ = waiting.answer.send(Err(failed.clone()));
    }
}

/// One request's three keys and four arguments ([`INCR_EXISTING`]'s layout; the raising script
/// starts with the same).
pub fn push(invocation: &mut redis::ScriptInvocation<'_>, key: &str, admission: &Admission) {
    // Without a rate limit the sequence stands in for the rate key, with emission 0.
    let (rate_key, emission_us, tolerance_us) = match &admission.rate {
        Some((rate_key, params)) => (rate_key.as_str(), params.emission_us, params.tolerance_us),
        None => (key, 0, 0),
    };
    invocation
        .key(key)
        .key(rate_key)
        .key(admission.gone.as_deref().unwrap_or(key))
        .arg(admission.cap)
        .arg(emission_us)
        .arg(tolerance_us)
        .arg(u8::from(admission.gone.is_some()));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn queued(queues: &Queues, group: u64) -> oneshot::Receiver<Answer> {
        let (answer, answered) = oneshot::channel();
        let admission = Admission {
            cap: 0,
            rate: None,
            gone: None,
            application_id: group,
        };
        queues
            .lock()
            .unwrap()
            .entry(group)
            .or_default()
            .push(Waiting {
                key: "k".to_owned(),
                admission,
                answer,
            });
        answered
    }

    /// A drain that ends without removing its group (a panic, a dropped task) fails what queued
    /// behind it and frees the group for the next request; one that removed its group itself
    /// leaves alone whatever a newer drain of that group holds.
    #[tokio::test]
    async fn a_drain_that_ends_abnormally_fails_its_queue_and_frees_its_group() {
        let queues = Queues::default();
        let waiting = queued(&queues, 7);
        drop(Draining {
            queues: queues.clone(),
            group: 7,
            armed: true,
        });
        let failed = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("the queued request is answered")
            .unwrap()
            .unwrap_err();
        assert!(failed.transient);
        assert!(
            !queues.lock().unwrap().contains_key(&7),
            "the group is free again"
        );

        let newer = queued(&queues, 7);
        drop(Draining {
            queues: queues.clone(),
            group: 7,
            armed: false,
        });
        assert_eq!(
            queues.lock().unwrap()[&7].len(),
            1,
            "a newer drain's queue is left alone"
        );
        drop(queues);
        assert!(
            newer.await.is_err(),
            "only dropping the queue itself drops its senders"
        );
    }
}
