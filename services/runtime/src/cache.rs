//! Redis connections.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::CommonConfig;

/// A multiplexed, self-reconnecting connection. Concurrent commands are pipelined on it.
pub async fn connect(config: &CommonConfig) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(config.redis_url.expose().as_str())?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(3);
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
