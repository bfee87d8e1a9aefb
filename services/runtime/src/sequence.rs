//! Raising Redis sequences to numbers that exist (the persister's half of
//! [`confab_core::sequence`]'s argument).
//!
//! After the persister committed creations, it raises each parent's sequence to at least the
//! highest number it wrote. An event leaves the stream only after it was persisted, so from then
//! on the sequence is above it even if the stream no longer is there to refuse a second creation
//! of that number. The raise creates a missing key: an api replica that is re-seeding at the same
//! moment raises it too, and both writes are a `max`.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::Script;

static RAISE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/raise_sequence.lua")));

/// Raises each `(key, number)` sequence to at least `number`, in one pipelined round trip;
/// returns how many keys moved.
pub async fn raise(conn: &ConnectionManager, raises: &[(String, u64)]) -> redis::RedisResult<u64> {
    if raises.is_empty() {
        return Ok(0);
    }
    let mut conn = conn.clone();
    // EVALSHA in one pipeline (a script invocation is a round trip of its own); the script is
    // loaded only when Redis does not know it (first use, or after Redis restarted).
    let mut pipe = redis::pipe();
    for (key, number) in raises {
        pipe.cmd("EVALSHA")
            .arg(RAISE.get_hash())
            .arg(1)
            .arg(key)
            .arg(*number);
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
