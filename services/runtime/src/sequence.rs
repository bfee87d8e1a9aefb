//! Raising Redis sequences to numbers that exist (the persister's half of
//! [`confab_core::sequence`]'s argument).
//!
//! After the persister committed creations, and before it acks them (after which the events
//! stream drops them), it raises each parent's sequence to at least the highest number it wrote,
//! so the sequence is above them even once the stream no longer refuses a second creation. The
//! raise moves existing keys only: a missing key means Redis lost its data, and only the api's
//! fenced re-seed, which reads MySQL after the quiescence, may create it.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::Script;

static RAISE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/raise_sequence.lua")));

/// Keys per script call (Lua's `unpack` has a bound on how many values it spreads).
const KEYS_PER_CALL: usize = 500;

/// Raises each `(key, number)` sequence to at least `number`, in one pipelined round trip of
/// one script call per 500 keys; returns how many keys moved.
pub async fn raise(conn: &ConnectionManager, raises: &[(String, u64)]) -> redis::RedisResult<u64> {
    if raises.is_empty() {
        return Ok(0);
    }
    let mut conn = conn.clone();
    // EVALSHA in one pipeline; the script is loaded only when Redis does not know it (first
    // use, or after Redis restarted).
    let mut pipe = redis::pipe();
    for chunk in raises.chunks(KEYS_PER_CALL) {
        let call = pipe.cmd("EVALSHA").arg(RAISE.get_hash()).arg(chunk.len());
        for (key, _) in chunk {
            call.arg(key);
        }
        for (_, number) in chunk {
            call.arg(*number);
        }
    }
    let moved: Vec<u64> = match pipe.query_async(&mut conn).await {
        Err(error) if error.kind() == redis::ErrorKind::NoScriptError => {
            RAISE.prepare_invoke().load_async(&mut conn).await?;
            pipe.query_async(&mut conn).await?
        }
        other => other?,
    };
    Ok(moved.into_iter().sum())
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
        let mut conn = ConnectionManager::new(redis::Client::open(url).unwrap())
            .await
            .expect("Redis must be reachable for the sequence tests");
        let prefix = format!("t:raise:{}:", std::process::id());
        let key = |name: &str| format!("{prefix}{name}");
        let () = conn.set(key("ahead"), 10).await.unwrap();
        let () = conn.set(key("behind"), 3).await.unwrap();
        let raises = [(key("missing"), 5), (key("ahead"), 7), (key("behind"), 9)];
        assert_eq!(raise(&conn, &raises).await.unwrap(), 1);
        let values: Vec<Option<u64>> = conn
            .mget(&[key("missing"), key("ahead"), key("behind")])
            .await
            .unwrap();
        assert_eq!(values, [None, Some(10), Some(9)]);
        assert_eq!(
            raise(&conn, &raises).await.unwrap(),
            0,
            "a second raise is a no-op"
        );

        // More keys than one script call takes.
        let many: Vec<(String, u64)> = (0..1_234).map(|i| (key(&format!("m{i}")), i + 1)).collect();
        for (k, _) in &many {
            let () = conn.set(k, 0).await.unwrap();
        }
        assert_eq!(raise(&conn, &many).await.unwrap(), 1_234);
        let last: u64 = conn.get(key("m1233")).await.unwrap();
        assert_eq!(last, 1_234);

        let mut keys: Vec<String> = many.into_iter().map(|(k, _)| k).collect();
        keys.extend(raises.into_iter().map(|(k, _)| k));
        let () = conn.del(keys).await.unwrap();
    }
}
