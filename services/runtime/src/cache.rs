//! Redis connections: one Redis, or a Redis Cluster (`CONFAB_REDIS_CLUSTER=true`).
//!
//! Every key a script or a pipeline touches together carries one hash tag, the application's id
//! ([`confab_core::keys::Keys`]), so a cluster runs each script on one shard. What the services
//! send as one pipeline across applications goes through [`Redis::query_grouped`], which a
//! cluster splits by hash tag.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

use crate::CommonConfig;

/// A multiplexed, self-reconnecting connection to one Redis or to a cluster. Cheap to clone;
/// concurrent commands are pipelined on it.
#[derive(Clone)]
pub enum Redis {
    Single(ConnectionManager),
    /// Learns the slot map from the listed nodes, follows `MOVED`/`ASK` and rides through a
    /// failover (it retries a command while the cluster elects a replica).
    Cluster(ClusterConnection),
}

/// Connects as configured: `REDIS_URL` is one URL, or with `CONFAB_REDIS_CLUSTER=true` a
/// comma-separated list of any of the cluster's nodes.
pub async fn connect(config: &CommonConfig) -> RedisResult<Redis> {
    let urls = config.redis_urls();
    if !config.redis_cluster {
        let [url] = urls.as_slice() else {
            return Err((
                redis::ErrorKind::InvalidClientConfig,
                "REDIS_URL lists several nodes: set CONFAB_REDIS_CLUSTER=true for a cluster",
            )
                .into());
        };
        return Ok(Redis::Single(single(url).await?));
    }
    // A command is retried while the cluster fails over (a replica is elected after the node
    // timeout, a few seconds): up to 8 tries, 50 ms to 1 s apart, each answer within 2 s.
    let client = ClusterClientBuilder::new(urls)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .retries(8)
        .min_retry_wait(50)
        .max_retry_wait(1_000)
        .retry_wait_formula(50, 2)
        .build()?;
    Ok(Redis::Cluster(client.get_async_connection().await?))
}

async fn single(url: &str) -> RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
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

impl Redis {
    /// A connection to one Redis at `url` (tests and tools).
    pub async fn single(url: &str) -> RedisResult<Self> {
        Ok(Self::Single(single(url).await?))
    }

    /// Whether this is a cluster connection (pipelines must then stay on one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs `commands` and answers their replies in order. Each command comes with a key it
    /// touches: one Redis gets them as one pipeline; a cluster gets one pipeline per hash tag
    /// (a pipeline must stay on one slot there), all at once.
    pub async fn query_grouped<T: FromRedisValue>(
        &self,
        commands: Vec<(String, Cmd)>,
    ) -> RedisResult<Vec<T>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        if let Self::Single(_) = self {
            let mut pipe = redis::pipe();
            for (_, cmd) in commands {
                pipe.add_command(cmd);
            }
            return pipe.query_async(&mut self.clone()).await;
        }
        // Group by hash tag, remembering each command's place.
        let mut groups: Vec<(String, Pipeline, Vec<usize>)> = Vec::new();
        for (place, (key, cmd)) in commands.into_iter().enumerate() {
            let tag = hash_tag(&key);
            let at = match groups.iter().position(|(t, _, _)| t == tag) {
                Some(at) => at,
                None => {
                    groups.push((tag.to_owned(), redis::pipe(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[at].1.add_command(cmd);
            groups[at].2.push(place);
        }
        let total = groups.iter().map(|(_, _, places)| places.len()).sum();
        let replies = futures::future::try_join_all(groups.iter().map(|(_, pipe, _)| {
            let mut conn = self.clone();
            async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
        }))
        .await?;
        let mut ordered: Vec<Option<Value>> = vec![None; total];
        for ((_, _, places), values) in groups.iter().zip(replies) {
            for (place, value) in places.iter().zip(values) {
                ordered[*place] = Some(value);
            }
        }
        ordered
            .into_iter()
            .map(|value| T::from_redis_value(&value.unwrap_or(Value::Nil)))
            .collect()
    }
}

/// The part of a key Redis Cluster hashes: what stands between the first `{` and the next `}`
/// when that is not empty, else the whole key. Keys with one hash tag live on one slot.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Whether a command that failed so may succeed if tried again soon: Redis unreachable or
/// slow, or a cluster between two states (a failover, slots moving, a replica promoted). The
/// cluster client retries these itself for a few seconds; what is left is the caller's `503`.
pub fn is_transient(error: &redis::RedisError) -> bool {
    use redis::ErrorKind::{
        Ask, BusyLoadingError, ClusterConnectionNotFound, ClusterDown, MasterDown, Moved, ReadOnly,
        TryAgain,
    };
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            Moved
                | Ask
                | TryAgain
                | ClusterDown
                | MasterDown
                | BusyLoadingError
                | ReadOnly
                | ClusterConnectionNotFound
        )
}

/// Cheap reachability check for `/readyz`.
pub async fn ping(conn: &Redis) -> bool {
    let mut conn = conn.clone();
    let reply: Result<Result<String, _>, _> = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("PING").query_async(&mut conn),
    )
    .await;
    matches!(reply, Ok(Ok(ref s)) if s == "PONG")
}

#[cfg(test)]
mod tests {
    use super::hash_tag;

    #[test]
    fn a_cluster_between_two_states_is_transient_a_script_error_is_not() {
        use redis::ErrorKind;
        let error = |kind| redis::RedisError::from((kind, "test"));
        for kind in [
            ErrorKind::Moved,
            ErrorKind::ClusterDown,
            ErrorKind::TryAgain,
            ErrorKind::ReadOnly,
        ] {
            assert!(super::is_transient(&error(kind)), "{kind:?}");
        }
        for kind in [
            ErrorKind::ResponseError,
            ErrorKind::CrossSlot,
            ErrorKind::NoScriptError,
        ] {
            assert!(!super::is_transient(&error(kind)), "{kind:?}");
        }
        let io =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(super::is_transient(&io));
    }

    #[test]
    fn the_hash_tag_is_what_redis_cluster_hashes() {
        assert_eq!(hash_tag("confab:seq:messages:{42}:7"), "42");
        assert_eq!(hash_tag("confab:epoch:{42}"), "42");
        assert_eq!(
            hash_tag("a{}b{c}"),
            "a{}b{c}",
            "an empty first tag: the whole key"
        );
        assert_eq!(hash_tag("no-tag"), "no-tag");
        assert_eq!(hash_tag("{open"), "{open");
        assert_eq!(hash_tag("x{1}{2}"), "1", "the first tag counts");
    }
}
