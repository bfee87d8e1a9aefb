//! The numbering scripts against the real Redis (`CONFAB_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`): the GCRA rate limiter's edges, the exact cap, and that a
//! rejection writes nothing. Every test uses keys under a prefix of its own, so they run in
//! parallel, and deletes them at the end.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use confab_core::quota::RateParams;
use confab_runtime::cache::Redis;
use redis::AsyncCommands;

use super::batch::INCR_EXISTING;
use super::*;

/// Emission interval of 1/s: long enough that no test's own latency can earn an extra admission.
const ONE_PER_SECOND: u64 = 1_000_000;

struct Fixture {
    conn: Redis,
    prefix: String,
}

impl Fixture {
    async fn new() -> Self {
        Self {
            conn: connection().await,
            prefix: format!("t:numbering:{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The key layout under this fixture's prefix (application 1's epoch is `key("epoch:{1}")`).
    fn keys(&self) -> Keys {
        Keys::new(self.prefix.clone())
    }

    /// A sequence key that exists at `value`.
    async fn sequence(&self, name: &str, value: u64) -> String {
        let key = self.key(name);
        let () = self.conn.clone().set(&key, value).await.unwrap();
        key
    }

    async fn get(&self, key: &str) -> Option<String> {
        self.conn.clone().get(key).await.unwrap()
    }

    /// Redis's clock, in µs.
    async fn redis_now_us(&self) -> u64 {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        secs * 1_000_000 + micros
    }

    async fn cleanup(self) {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = conn.keys(format!("{}*", self.prefix)).await.unwrap();
        if !keys.is_empty() {
            let () = conn.del(keys).await.unwrap();
        }
    }
}

async fn connection() -> Redis {
    let url = std::env::var("CONFAB_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    Redis::single(&url)
        .await
        .expect("Redis must be reachable for the numbering tests")
}

fn rate_limited(rate_key: &str, per_second: u32, burst: u32) -> Admission {
    let quotas = confab_core::quota::Quotas {
        messages_per_second: per_second,
        message_burst: burst,
        ..confab_core::quota::Quotas::default()
    };
    Admission {
        cap: 0,
        rate: Some((rate_key.to_owned(), quotas.rate().unwrap())),
        gone: None,
        application_id: 1,
    }
}

/// One "increment an existing key" call on `conn`: the script's raw `{status, value}`.
async fn take(conn: &Redis, key: &str, admission: &Admission) -> (u8, u64) {
    let mut invocation = INCR_EXISTING.prepare_invoke();
    batch::push(&mut invocation, key, admission);
    let answer: Vec<i64> = invocation.invoke_async(&mut conn.clone()).await.unwrap();
    assert_eq!(answer.len(), 3, "one request, three fields");
    (answer[0] as u8, answer[1] as u64)
}

const ADMITTED: u8 = 0;
const CAPPED: u8 = 2;
const RATE_LIMITED: u8 = 3;

/// One call of the script for several requests ([`batch`]) decides each as its own call would,
/// in order: later requests see the sequences and the rate state earlier ones moved, a refused
/// or unseeded request takes nothing, and the rate state is written once for the batch.
#[tokio::test]
async fn a_batch_decides_each_request_as_its_own_call_would_in_order() {
    let f = Fixture::new().await;
    let a = f.sequence("a", 10).await;
    let b = f.sequence("b", 0).await;
    let missing = f.key("missing");
    let gone = f.key("gone");
    let () = f.conn.clone().set(&gone, 1).await.unwrap();
    let rate = f.key("rate");
    let rated = rate_limited(&rate, 1, 2);
    let in_deleted_chat = Admission {
        gone: Some(gone),
        ..rated.clone()
    };
    let capped = Admission {
        cap: 1,
        rate: None,
        gone: None,
        application_id: 1,
    };
    let requests = [
        (&a, &rated),
        (&missing, &rated),
        (&b, &in_deleted_chat),
        (&a, &rated),
        (&b, &capped),
        (&b, &capped),
        (&a, &rated),
    ];
    let mut invocation = INCR_EXISTING.prepare_invoke();
    for (key, admission) in requests {
        batch::push(&mut invocation, key, admission);
    }
    let answer: Vec<i64> = invocation.invoke_async(&mut f.conn.clone()).await.unwrap();
    let decided: Vec<(i64, i64)> = answer.chunks_exact(3).map(|r| (r[0], r[1])).collect();
    assert_eq!(decided.len(), requests.len());
    assert_eq!(decided[0], (ADMITTED.into(), 11));
    assert_eq!(
        decided[1],
        (1, 0),
        "a missing sequence is left to the seeding path"
    );
    assert_eq!(decided[2], (5, 0), "no number in a deleted chat");
    assert_eq!(
        decided[3],
        (ADMITTED.into(), 12),
        "the second of a burst of two"
    );
    assert_eq!(decided[4], (ADMITTED.into(), 1));
    assert_eq!(decided[5], (CAPPED.into(), 0));
    assert_eq!(
        decided[6].0,
        i64::from(RATE_LIMITED),
        "the burst ran out within the batch"
    );
    assert!(decided[6].1 > 0 && decided[6].1 as u64 <= ONE_PER_SECOND);
    assert_eq!(f.get(&a).await.as_deref(), Some("12"));
    assert_eq!(f.get(&b).await.as_deref(), Some("1"));
    assert_eq!(
        f.get(&missing).await,
        None,
        "nothing creates a missing sequence"
    );
    // The state two admissions left: the TAT two emissions past the batch's instant.
    let tat: u64 = f.get(&rate).await.unwrap().parse().unwrap();
    let now = f.redis_now_us().await;
    assert!(
        tat > now + ONE_PER_SECOND && tat <= now + 2 * ONE_PER_SECOND,
        "{tat} vs {now}"
    );
    f.cleanup().await;
}

#[tokio::test]
async fn a_burst_up_to_the_tolerance_is_admitted_and_the_next_waits_one_emission() {
    let f = Fixture::new().await;
    let seq = f.sequence("seq", 0).await;
    let admission = rate_limited(&f.key("rate"), 1, 5);
    let started = Instant::now();
    for n in 1..=5 {
        assert_eq!(take(&f.conn, &seq, &admission).await, (ADMITTED, n));
    }
    let (status, wait_us) = take(&f.conn, &seq, &admission).await;
    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap();
    assert_eq!(status, RATE_LIMITED);
    // Five admissions moved the TAT five emissions past the first call; the sixth may go once
    // the TAT is within the tolerance (four emissions) of the clock: one emission after the
    // first call, less the time the calls took.
    assert!(
        wait_us <= ONE_PER_SECOND && wait_us + elapsed_us + 2_000 >= ONE_PER_SECOND,
        "wait {wait_us} µs after {elapsed_us} µs"
    );
    assert_eq!(retry_after_secs(wait_us), 1);
    f.cleanup().await;
}

#[tokio::test]
async fn after_idling_the_full_burst_is_available_again_and_not_more() {
    let f = Fixture::new().await;
    let seq = f.sequence("seq", 0).await;
    let rate = f.key("rate");
    // 2/s, burst 3: emission 500 ms, tolerance 1 s.
    let admission = rate_limited(&rate, 2, 3);
    let exhaust = |expected_from: u64| {
        let (f, seq, admission) = (&f, &seq, &admission);
        async move {
            for n in expected_from..expected_from + 3 {
                assert_eq!(take(&f.conn, seq, admission).await, (ADMITTED, n));
            }
            assert_eq!(take(&f.conn, seq, admission).await.0, RATE_LIMITED);
        }
    };
    exhaust(1).await;

    // Idle until Redis's clock reaches the stored TAT: the bucket is full again.
    let tat: u64 = f.get(&rate).await.unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.redis_now_us().await < tat {
        assert!(
            Instant::now() < deadline,
            "Redis's clock never reached the TAT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exhaust(4).await;

    // A much longer idle (the TAT an hour in the past, as if the key had not expired) earns no
    // more than the burst: the TAT never falls behind the clock.
    let an_hour_ago = f.redis_now_us().await - 3_600 * 1_000_000;
    let () = f
        .conn
        .clone()
        .set(&rate, an_hour_ago.to_string())
        .await
        .unwrap();
    exhaust(7).await;
    // And so does a key that expired.
    let () = f.conn.clone().del(&rate).await.unwrap();
    exhaust(10).await;
    f.cleanup().await;
}

#[tokio::test]
async fn one_applications_rate_does_not_touch_anothers() {
    let f = Fixture::new().await;
    let (seq_a, seq_b) = (f.sequence("seq:a", 0).await, f.sequence("seq:b", 0).await);
    let (rate_a, rate_b) = (f.key("rate:a"), f.key("rate:b"));
    let (a, b) = (rate_limited(&rate_a, 1, 2), rate_limited(&rate_b, 1, 2));
    for n in 1..=2 {
        assert_eq!(take(&f.conn, &seq_a, &a).await, (ADMITTED, n));
    }
    assert_eq!(take(&f.conn, &seq_a, &a).await.0, RATE_LIMITED);
    let state_a = f.get(&rate_a).await;
    assert_eq!(f.get(&rate_b).await, None, "b has no state yet");
    for n in 1..=2 {
        assert_eq!(take(&f.conn, &seq_b, &b).await, (ADMITTED, n));
    }
    assert_eq!(take(&f.conn, &seq_b, &b).await.0, RATE_LIMITED);
    assert_eq!(f.get(&rate_a).await, state_a, "b's requests left a's state");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_is_exact_under_concurrency_on_both_paths() {
    let f = Fixture::new().await;
    let metrics = crate::metrics::Metrics::register(&confab_runtime::metrics::registry());
    let numbering = Numbering::new(f.conn.clone(), metrics.clone(), f.keys(), Duration::ZERO);
    let capped = Admission {
        cap: 5,
        rate: None,
        gone: None,
        application_id: 1,
    };
    let no_seed = || async { unreachable!("the key exists") };
    let seq = f.sequence("seq", 0).await;
    let answers = futures::future::join_all(
        (0..40).map(|_| numbering.next(&seq, "chat", &capped, false, no_seed)),
    )
    .await;
    let mut taken: Vec<u64> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|numbered| numbered.number)
        .collect();
    taken.sort_unstable();
    assert_eq!(taken, vec![1, 2, 3, 4, 5]);
    assert!(answers
        .iter()
        .filter(|a| a.is_err())
        .all(|a| matches!(a, Err(ApiError::ChatLimit(5)))));
    assert_eq!(f.get(&seq).await.as_deref(), Some("5"));

    // The seeding path: a missing key seeded at 3 leaves exactly two numbers under the cap.
    let missing = f.key("missing");
    let answers = futures::future::join_all(
        (0..10).map(|_| numbering.next(&missing, "chat", &capped, false, || async { Ok(3) })),
    )
    .await;
    let mut taken: Vec<u64> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|numbered| numbered.number)
        .collect();
    taken.sort_unstable();
    assert_eq!(taken, vec![4, 5]);
    assert_eq!(f.get(&missing).await.as_deref(), Some("5"));
    // Every refusal was counted as the chat quota: 35 + 8.
    let refused = metrics.quota_rejections.with_label_values(&["chats"]).get();
    assert_eq!(refused, 43);
    f.cleanup().await;
}

#[tokio::test]
async fn a_rejected_request_changes_neither_the_sequence_nor_the_rate_state() {
    let f = Fixture::new().await;
    let seq = f.sequence("seq", 0).await;
    let rate = f.key("rate");
    let mut admission = rate_limited(&rate, 1, 1);
    assert_eq!(take(&f.conn, &seq, &admission).await, (ADMITTED, 1));
    let before = (f.get(&seq).await, f.get(&rate).await);
    for _ in 0..3 {
        assert_eq!(take(&f.conn, &seq, &admission).await.0, RATE_LIMITED);
    }
    assert_eq!((f.get(&seq).await, f.get(&rate).await), before);

    // Refused by the cap: the rate state is not charged either.
    admission.cap = 1;
    let () = f.conn.clone().del(&rate).await.unwrap();
    assert_eq!(take(&f.conn, &seq, &admission).await, (CAPPED, 0));
    assert_eq!(f.get(&seq).await.as_deref(), Some("1"));
    assert_eq!(f.get(&rate).await, None);
    f.cleanup().await;
}

/// "Clock skew between replicas" cannot change a decision: the script reads the time with Redis
/// `TIME`, inside the same atomic step that reads and writes the limiter's state, and the caller
/// passes no time at all (only the cap, the emission interval and the tolerance). Every replica
/// therefore decides by one clock, Redis's. This test plays two replicas with two independent
/// connections: they share one burst between them, agree on the refusal that follows, and the
/// state they leave is in Redis's time frame.
#[tokio::test]
async fn replicas_decide_by_redis_time_not_their_own_clock() {
    let f = Fixture::new().await;
    let other_replica = connection().await;
    let seq = f.sequence("seq", 0).await;
    let rate = f.key("rate");
    let admission = rate_limited(&rate, 1, 4);
    let replicas = [&f.conn, &other_replica];
    for n in 1..=4 {
        let replica = replicas[n as usize % 2];
        assert_eq!(take(replica, &seq, &admission).await, (ADMITTED, n));
    }
    let (status_a, _) = take(&f.conn, &seq, &admission).await;
    let (status_b, _) = take(&other_replica, &seq, &admission).await;
    assert_eq!((status_a, status_b), (RATE_LIMITED, RATE_LIMITED));

    // The TAT is four emissions past Redis's clock at the first admission, give or take the
    // time the calls took: measured by Redis, not by this process.
    let tat: u64 = f.get(&rate).await.unwrap().parse().unwrap();
    let now = f.redis_now_us().await;
    assert!(
        tat > now && tat <= now + 4 * ONE_PER_SECOND,
        "TAT {tat} µs against Redis TIME {now} µs"
    );
    let RateParams { emission_us, .. } = admission.rate.as_ref().unwrap().1;
    assert_eq!(emission_us, ONE_PER_SECOND);
    f.cleanup().await;
}

#[tokio::test]
async fn no_number_is_taken_in_a_parent_marked_deleted_on_either_path() {
    let f = Fixture::new().await;
    let metrics = crate::metrics::Metrics::register(&confab_runtime::metrics::registry());
    let numbering = Numbering::new(f.conn.clone(), metrics, f.keys(), Duration::ZERO);
    let mark = f.key("deleted");
    let admission = Admission {
        gone: Some(mark.clone()),
        ..rate_limited(&f.key("rate"), 1, 5)
    };
    let seq = f.sequence("seq", 7).await;
    let no_seed = || async { unreachable!("the key exists") };
    let first = numbering
        .next(&seq, "message", &admission, false, no_seed)
        .await;
    assert_eq!(
        first.map(|n| n.number).ok(),
        Some(8),
        "not marked: admitted"
    );
    let mut conn = f.conn.clone();
    let () = conn.set(&mark, 1u8).await.unwrap();
    let refused = numbering
        .next(&seq, "message", &admission, false, no_seed)
        .await;
    assert!(
        matches!(refused, Err(ApiError::NotFound("chat"))),
        "{refused:?}"
    );
    // The seeding path refuses too, and a refusal leaves the sequence where it was.
    let raised = numbering
        .next(&seq, "message", &admission, true, || async { Ok(20) })
        .await;
    assert!(
        matches!(raised, Err(ApiError::NotFound("chat"))),
        "{raised:?}"
    );
    assert_eq!(
        f.get(&seq).await.as_deref(),
        Some("20"),
        "the raise stays, no number taken"
    );
    f.cleanup().await;
}

#[tokio::test]
async fn seeding_waits_out_the_quiescence_of_a_new_epoch_and_is_fenced_by_it() {
    let f = Fixture::new().await;
    let metrics = crate::metrics::Metrics::register(&confab_runtime::metrics::registry());
    let quiescence = Duration::from_secs(30);
    let numbering = Numbering::new(f.conn.clone(), metrics, f.keys(), quiescence);
    let admission = Admission {
        cap: 0,
        rate: None,
        gone: None,
        application_id: 1,
    };
    let missing = f.key("seq");
    let seeds = std::sync::atomic::AtomicU32::new(0);
    let seed = || async {
        seeds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(41)
    };

    // No epoch (Redis lost its data): it starts now, and no seed is read before it settles.
    let recovering = numbering
        .next(&missing, "chat", &admission, false, seed)
        .await;
    match recovering {
        Err(ApiError::Recovering { retry_after_secs }) => {
            assert!((29..=30).contains(&retry_after_secs), "{retry_after_secs}");
        }
        other => panic!("expected sequence_recovering, got {other:?}"),
    }
    // The seed's reads ran (they find a deleted parent), but nothing was written.
    assert_eq!(seeds.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(f.get(&missing).await, None, "nothing written");
    let deleted = numbering
        .next(&missing, "message", &admission, false, || async {
            Err(ApiError::NotFound("chat"))
        })
        .await;
    assert!(
        matches!(deleted, Err(ApiError::NotFound("chat"))),
        "{deleted:?}"
    );

    // A settled epoch (as a new application's is): seeded at once.
    let epoch_key = f.key("epoch:{1}");
    let () = f.conn.clone().del(&epoch_key).await.unwrap();
    numbering
        .settle_new_application(admission.application_id, Duration::ZERO)
        .await
        .unwrap();
    let numbered = numbering
        .next(&missing, "chat", &admission, false, seed)
        .await
        .unwrap();
    assert_eq!(numbered.number, 42);

    // The fence: a seed read under one epoch is not written under another.
    let () = f.conn.clone().del(&missing).await.unwrap();
    let epoch: String = f.conn.clone().get(&epoch_key).await.unwrap();
    let (status, _, _): (u8, u64, i64) = raise_invocation(&missing, &admission, &epoch_key)
        .arg(7)
        .arg(format!("{epoch}0"))
        .invoke_async(&mut f.conn.clone())
        .await
        .unwrap();
    assert_eq!(status, FENCED);
    assert_eq!(f.get(&missing).await, None, "a fenced seed writes nothing");
    f.cleanup().await;
}
