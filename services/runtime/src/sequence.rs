//! Raising Redis sequences to numbers that exist (the persister's half of
//! [`confab_core::sequence`]'s argument).
//!
//! After the persister committed creations, and before it acks them (after which the events
//! stream drops them), it raises each parent's sequence to at least the highest number it wrote,
//! so the sequence is above them even once the stream no longer refuses a second creation. The
//! raise moves existing keys only: a missing key means Redis lost its data, and only the api's
//! fenced re-seed, which reads MySQL after the quiescence, may create it.

use std::sync::LazyLock;

use redis::RedisResult;

use crate::cache::{hash_tag, Redis};
use redis::Script;

static RAISE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/raise_sequence.lua")));

/// Keys per script call (Lua's `unpack` has a bound on how many values it spreads).
const KEYS_PER_CALL: usize = 500;

/// How long a raise waits for replicas to acknowledge it (Redis `WAIT`).
const WAIT_FOR_REPLICAS_MS: u64 = 2_000;

/// Raises each `(key, number)` sequence to at least `number`; returns how many keys moved.
///
/// One pipelined round trip of one script call per 500 keys (on a cluster, one per hash tag,
/// all at once). With `wait_replicas` > 0 each pipeline ends with `WAIT`: the raise is not
/// done until that many replicas of the master hold it, and with it every increment the
/// master had acknowledged before (replication is in order). A failover to one of them then
/// cannot bring back a sequence below a number whose event the persister is about to ack;
/// fewer acknowledgements is an error, and the events stay unacked.
pub async fn raise(conn: &Redis, raises: &[(String, u64)], wait_replicas: u32) -> RedisResult<u64> {
    if raises.is_empty() {
        return Ok(0);
    }
    let mut groups: Vec<(&str, Vec<&(String, u64)>)> = Vec::new();
    for raise in raises {
        let tag = if conn.is_cluster() {
            hash_tag(&raise.0)
        } else {
            ""
        };
        match groups.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, members)) => members.push(raise),
            None => groups.push((tag, vec![raise])),
        }
    }
    let moved = futures::future::try_join_all(
        groups
            .iter()
            .map(|(_, members)| raise_on_one_slot(conn, members, wait_replicas)),
    )
    .await?;
    Ok(moved.into_iter().sum())
}

async fn raise_on_one_slot(
    conn: &Redis,
    raises: &[&(String, u64)],
    wait_replicas: u32,
) -> RedisResult<u64> {
    let mut conn = conn.clone();
    // EVALSHA in one pipeline; the script is loaded only when Redis does not know it (first
    // use, or after Redis restarted or failed over).
    let touch = u8::from(wait_replicas > 0);
    let mut pipe = redis::pipe();
    for chunk in raises.chunks(KEYS_PER_CALL) {
        let call = pipe.cmd("EVALSHA").arg(RAISE.get_hash()).arg(chunk.len());
        for (key, _) in chunk {
            call.arg(key);
        }
        for (_, number) in chunk {
            call.arg(*number);
        }
        call.arg(touch);
    }
    if wait_replicas > 0 {
        pipe.cmd("WAIT")
            .arg(wait_replicas)
            .arg(WAIT_FOR_REPLICAS_MS);
    }
    let replies: Vec<u64> = match pipe.query_async(&mut conn).await {
        Err(error) if error.kind() == redis::ErrorKind::NoScriptError => {
            RAISE.prepare_invoke().load_async(&mut conn).await?;
            pipe.query_async(&mut conn).await?
        }
        other => other?,
    };
    let calls = raises.len().div_ceil(KEYS_PER_CALL);
    if wait_replicas > 0 {
        let acknowledged = replies.get(calls).copied().unwrap_or(0);
        if acknowledged < u64::from(wait_replicas) {
            return Err((
                redis::ErrorKind::TryAgain,
                "sequence raise not acknowledged by enough replicas",
                format!(
                    "{acknowledged} of {wait_replicas} replicas within {WAIT_FOR_REPLICAS_MS} ms"
                ),
            )
                .into());
        }
    }
    Ok(replies.iter().take(calls).sum())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use redis::AsyncCommands;

    use super::*;

    /// Against the real Redis (`CONFAB_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`).
    #[tokio::test]
    async fn raising_moves_only_the_keys_behind_never_creates_one_in_any_number() {
        let url = std::env::var("CONFAB_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let mut conn = Redis::single(&url)
            .await
            .expect("Redis must be reachable for the sequence tests");
        let prefix = format!("t:raise:{}:", std::process::id());
        let key = |name: &str| format!("{prefix}{name}");
        let () = conn.set(key("ahead"), 10).await.unwrap();
        let () = conn.set(key("behind"), 3).await.unwrap();
        let raises = [(key("missing"), 5), (key("ahead"), 7), (key("behind"), 9)];
        assert_eq!(raise(&conn, &raises, 0).await.unwrap(), 1);
        let values: Vec<Option<u64>> = conn
            .mget(&[key("missing"), key("ahead"), key("behind")])
            .await
            .unwrap();
        assert_eq!(values, [None, Some(10), Some(9)]);
        assert_eq!(
            raise(&conn, &raises, 0).await.unwrap(),
            0,
            "a second raise is a no-op"
        );

        // More keys than one script call takes.
        let many: Vec<(String, u64)> = (0..1_234).map(|i| (key(&format!("m{i}")), i + 1)).collect();
        for (k, _) in &many {
            let () = conn.set(k, 0).await.unwrap();
        }
        assert_eq!(raise(&conn, &many, 0).await.unwrap(), 1_234);
        let last: u64 = conn.get(key("m1233")).await.unwrap();
        assert_eq!(last, 1_234);

        let mut keys: Vec<String> = many.into_iter().map(|(k, _)| k).collect();
        keys.extend(raises.into_iter().map(|(k, _)| k));
        let () = conn.del(keys).await.unwrap();
    }
}
