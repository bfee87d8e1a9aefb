//! Redis connections.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::CommonConfig;

/// A multiplexed, self-reconnecting connection. Concurrent commands are pipelined on it.
pub async fn connect(config: &CommonConfig) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(config.redis_url.expose().as_str())?;
    // Reconnecting: every command waits on the one reconnect in progress, so its pauses must be
    // short. redis-rs hands `factor` to backon as the growth of each pause, from a first pause
    // of 1 s: its default (100) made the second pause the 60 s maximum, and after a Redis
    // restart every request hung until its timeout. Two retries 200 ms apart, then the commands
    // fail (a 503) and the next command starts a fresh reconnect.
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2)
        .set_factor(2)
        .set_max_delay(200);
    ConnectionManager::new_with_config(client, manager_config).await
}

/// Cheap reachability check for `/readyz`.
pub async fn ping(conn: &ConnectionManager) -> bool {
    let mut conn = conn.clone();
    let reply: Result<Result<String, _>, _> = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("PING").query_async(&mut conn),
    )
    .await;
    matches!(reply, Ok(Ok(ref s)) if s == "PONG")
}
