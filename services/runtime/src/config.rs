//! Configuration shared by every service, read once from an environment map.
//!
//! Loaders take the environment as a map ([`Env`]) so tests build configurations without touching
//! process environment variables. Every variable and default is listed in docs/operations.md.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use crate::Secret;

/// An environment: variable name to value.
pub type Env = HashMap<String, String>;

/// The process environment as an [`Env`].
pub fn process_env() -> Env {
    std::env::vars().collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} has an invalid value: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// An environment of the given pairs (tests and tools).
pub fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Reads `name` from `env`, falling back to `default`.
pub fn string(env: &Env, name: &str, default: &str) -> String {
    env.get(name)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

/// A secret setting: `None` when `name` is unset or empty.
pub fn secret(env: &Env, name: &str) -> Option<crate::Secret<String>> {
    env.get(name)
        .filter(|v| !v.is_empty())
        .map(|v| crate::Secret::new(v.clone()))
}

/// Reads and parses `name`, falling back to `default`. For numbers use [`parse_within`], which
/// also bounds them.
pub fn parse<T>(env: &Env, name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match env.get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e: T::Err| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }),
    }
}

/// Reads and parses a number, refused outside `range`: every numeric setting goes through this,
/// so a zero batch size or a negative delivery count stops the service at start-up with the
/// variable's name and allowed range, instead of a panic, a spin or a dead-lettered outage later.
pub fn parse_within<T>(
    env: &Env,
    name: &'static str,
    default: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display,
    T::Err: Display,
{
    let outside = |value: &dyn Display| ConfigError::Invalid {
        name,
        reason: format!("{value} is outside {}..={}", range.start(), range.end()),
    };
    let value = match env.get(name).filter(|v| !v.is_empty()) {
        None => default,
        Some(raw) => match raw.parse::<T>() {
            Ok(value) => value,
            // A whole number the type cannot hold (-1 for a count, 2^64 for a size) is simply
            // out of range.
            Err(_) if raw.parse::<i128>().is_ok() => return Err(outside(raw)),
            Err(e) => {
                return Err(ConfigError::Invalid {
                    name,
                    reason: format!(
                        "{raw:?} is not a number in {}..={} ({e})",
                        range.start(),
                        range.end()
                    ),
                })
            }
        },
    };
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(outside(&value))
    }
}

/// Reads a duration given in milliseconds, unbounded; prefer [`millis_within`].
pub fn millis(env: &Env, name: &'static str, default_ms: u64) -> Result<Duration, ConfigError> {
    parse(env, name, default_ms).map(Duration::from_millis)
}

/// A duration in milliseconds, refused outside `range_ms` ([`parse_within`]).
pub fn millis_within(
    env: &Env,
    name: &'static str,
    default_ms: u64,
    range_ms: RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    parse_within(env, name, default_ms, range_ms).map(Duration::from_millis)
}

/// A duration in whole seconds, refused outside `range_secs` ([`parse_within`]).
pub fn secs_within(
    env: &Env,
    name: &'static str,
    default_secs: u64,
    range_secs: RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    parse_within(env, name, default_secs, range_secs).map(Duration::from_secs)
}

/// A listening address. A configured port 0 (a random port nobody could find) is refused; the
/// default is the caller's (tests pass port 0 and bind their own listeners).
pub fn socket_addr(
    env: &Env,
    name: &'static str,
    default: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    let addr = parse(env, name, default)?;
    if addr.port() == 0 && env.get(name).is_some_and(|v| !v.is_empty()) {
        return Err(ConfigError::Invalid {
            name,
            reason: "port 0 is outside 1..=65535".into(),
        });
    }
    Ok(addr)
}

/// Reads a boolean (`true`/`false`/`1`/`0`).
pub fn boolean(env: &Env, name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match env.get(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v.is_empty() => Ok(default),
        Some(v) if v == "true" || v == "1" => Ok(true),
        Some(v) if v == "false" || v == "0" => Ok(false),
        Some(v) => Err(ConfigError::Invalid {
            name,
            reason: format!("expected true or false, got {v:?}"),
        }),
    }
}

/// Connections and JetStream topology every service shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `DATABASE_URL`, default `mysql://root@127.0.0.1:3306/confab`.
    pub database_url: Secret<String>,
    /// `CONFAB_DB_MAX_CONNECTIONS`, default 16 (1 to 1000).
    pub db_max_connections: u32,
    /// `REDIS_URL`, default `redis://127.0.0.1:6379`; with `CONFAB_REDIS_CLUSTER=true`, a
    /// comma-separated list of the cluster's nodes (any of them: the rest is discovered).
    pub redis_url: Secret<String>,
    /// `CONFAB_REDIS_CLUSTER`, default false: talk to a Redis Cluster.
    pub redis_cluster: bool,
    /// `CONFAB_REDIS_WAIT_REPLICAS`, default 0 (0 to 16): how many replicas must acknowledge the
    /// persister's sequence raises before it acks the events behind them (Redis `WAIT`); set it
    /// to the replicas of each master when Redis fails over to replicas.
    pub redis_wait_replicas: u32,
    /// `CONFAB_REDIS_PREFIX`, default `confab:` (no `{` or `}`: the keys' hash tags follow it).
    pub redis_prefix: String,
    /// `DATABASE_READ_URL`, unset by default: a MySQL read replica the api's reads may use.
    pub database_read_url: Option<Secret<String>>,
    /// `CONFAB_READ_REPLICA_MAX_LAG_MS`, default 1000 (10 to 60000): the api reads from the
    /// replica only while it is at most this far behind; the persister keeps a changed
    /// application's reads on the primary for this long (plus a margin) after the change.
    pub read_replica_max_lag: Duration,
    /// `NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `CONFAB_ADMIN_ADDR`: health and metrics; each service has its own default port (a
    /// configured port must be 1 to 65535).
    pub admin_addr: SocketAddr,
    pub stream: StreamConfig,
}

/// The JetStream topology. Every service declares the same streams, so any one can start first.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `CONFAB_STREAM`, default `CONFAB_EVENTS`.
    pub name: String,
    /// `CONFAB_DLQ_STREAM`, default `CONFAB_DEAD_LETTERS`.
    pub dlq_name: String,
    /// `CONFAB_SUBJECT_PREFIX`, default `confab`.
    pub subject_prefix: String,
    /// `CONFAB_STREAM_REPLICAS`, default 1 (production: 3; 1 to 5).
    pub replicas: usize,
    /// `CONFAB_STREAM_MAX_AGE_SECS`, default 604800 (7 days; 60 to 315360000).
    pub max_age: Duration,
    /// `CONFAB_DUPLICATE_WINDOW_SECS`, default 120 (1 to 86400, at most the maximum age).
    pub duplicate_window: Duration,
    /// `CONFAB_MAX_DELIVER`, default 1000: deliveries of an event that keeps failing for a
    /// transient reason before it is dead-lettered (with the jittered 30 s backoff cap, about 6 hours;
    /// 2 to 1000000).
    pub max_deliver: i64,
    /// `CONFAB_ACK_WAIT_SECS`, default 30 (1 to 3600).
    pub ack_wait: Duration,
    /// `CONFAB_PUBLISH_TIMEOUT_MS`, default 2000: how long one publish attempt waits for its
    /// acknowledgement before it is repeated (dedup makes repeating safe).
    pub publish_timeout: Duration,
    /// `CONFAB_PUBLISH_DEADLINE_MS`, default 8000: how long a publish keeps retrying (a JetStream
    /// leader election, a reconnect) before the request fails with 503. Keep it below the api's
    /// `CONFAB_REQUEST_TIMEOUT_MS`.
    pub publish_deadline: Duration,
    /// `CONFAB_CLOCK_SKEW_MS`, default 2000 (0 to 60000): how far the clocks of api hosts and NATS
    /// servers may differ. It widens the creation horizon ([`Self::creation_horizon`]).
    pub clock_skew: Duration,
    /// `CONFAB_PERSISTER_CONSUMER`, default `confab-persister`: the persister's durable consumer,
    /// shared by all its replicas. Every service makes sure it exists before anything is
    /// published: the events stream keeps an event only while a consumer still has to ack it.
    pub persister_consumer: String,
    /// `CONFAB_INDEXER_CONSUMER`, default `confab-indexer`; empty in a deployment without an
    /// indexer (an indexer consumer nobody reads would keep every message event until
    /// `CONFAB_STREAM_MAX_AGE_SECS`).
    pub indexer_consumer: Option<String>,
    /// `CONFAB_LIVE_STREAM`, default `<CONFAB_STREAM>_LIVE` (`CONFAB_EVENTS_LIVE`): the stream
    /// live delivery reads, sourced from the events stream with one subject per chat. Named after
    /// the events stream, so installations sharing a NATS server never share (and re-point) it.
    pub live_name: String,
    /// `CONFAB_LIVE_WINDOW_SECS`, default 3600 (60 to 604800): how long the live stream keeps a
    /// chat's events for resuming subscribers.
    pub live_window: Duration,
}

impl StreamConfig {
    /// How long after it was made a creation event can still have been acknowledged: the api
    /// answers `201` only for an acknowledgement within `CONFAB_PUBLISH_DEADLINE_MS`, and the
    /// event's `occurred_at` (api clock) and the stream's timestamp (NATS clock) may differ by
    /// the clock skew. A creation stored later was answered 503, and is dead-lettered rather
    /// than persisted ([`confab_core::sequence::creation_is_late`]).
    pub fn creation_horizon(&self) -> Duration {
        self.publish_deadline + self.clock_skew
    }

    /// How long after a Redis loss re-seeding waits before it reads the stream and MySQL: past
    /// it, every number the lost sequence handed out is either stored (and seen) or too late to
    /// be persisted ([`confab_core::sequence`]).
    pub fn reseed_quiescence(&self) -> Duration {
        self.creation_horizon() + self.clock_skew
    }
}

/// `CONFAB_REDIS_PREFIX`: a brace in it would become the keys' hash tag in a Redis Cluster and
/// put every application on one shard.
fn redis_prefix(env: &Env) -> Result<String, ConfigError> {
    let prefix = string(env, "CONFAB_REDIS_PREFIX", "confab:");
    if prefix.contains(['{', '}']) {
        return Err(ConfigError::Invalid {
            name: "CONFAB_REDIS_PREFIX",
            reason: "must not contain `{` or `}` (the keys' hash tags follow it)".into(),
        });
    }
    Ok(prefix)
}

impl CommonConfig {
    /// The Redis URLs `REDIS_URL` lists (one, or a cluster's nodes).
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis_url
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn from_env(env: &Env, default_admin_port: u16) -> Result<Self, ConfigError> {
        let admin_default = SocketAddr::from(([0, 0, 0, 0], default_admin_port));
        let stream = StreamConfig::from_env(env)?;
        Ok(Self {
            database_url: Secret::new(string(
                env,
                "DATABASE_URL",
                "mysql://root@127.0.0.1:3306/confab",
            )),
            // More than a thousand connections per process is far past what MySQL serves well.
            db_max_connections: parse_within(env, "CONFAB_DB_MAX_CONNECTIONS", 16, 1..=1000)?,
            redis_url: Secret::new(string(env, "REDIS_URL", "redis://127.0.0.1:6379")),
            redis_cluster: boolean(env, "CONFAB_REDIS_CLUSTER", false)?,
            redis_wait_replicas: parse_within(env, "CONFAB_REDIS_WAIT_REPLICAS", 0, 0..=16)?,
            redis_prefix: redis_prefix(env)?,
            database_read_url: env
                .get("DATABASE_READ_URL")
                .filter(|url| !url.is_empty())
                .map(|url| Secret::new(url.to_owned())),
            read_replica_max_lag: millis_within(
                env,
                "CONFAB_READ_REPLICA_MAX_LAG_MS",
                1_000,
                10..=60_000,
            )?,
            nats_url: string(env, "NATS_URL", "nats://127.0.0.1:4222"),
            admin_addr: socket_addr(env, "CONFAB_ADMIN_ADDR", admin_default)?,
            stream,
        })
    }
}

impl StreamConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        // 0 would mean "keep forever" to JetStream; ten years is the most we accept.
        let max_age = secs_within(env, "CONFAB_STREAM_MAX_AGE_SECS", 604_800, 60..=315_360_000)?;
        // 0 would fall back to JetStream's default; longer than a day only costs server memory.
        let duplicate_window = secs_within(env, "CONFAB_DUPLICATE_WINDOW_SECS", 120, 1..=86_400)?;
        // JetStream refuses a stream whose duplicate window exceeds its maximum age.
        if duplicate_window > max_age {
            return Err(ConfigError::Invalid {
                name: "CONFAB_DUPLICATE_WINDOW_SECS",
                reason: format!(
                    "{} is longer than CONFAB_STREAM_MAX_AGE_SECS ({})",
                    duplicate_window.as_secs(),
                    max_age.as_secs()
                ),
            });
        }
        let name = string(env, "CONFAB_STREAM", "CONFAB_EVENTS");
        Ok(Self {
            live_name: string(env, "CONFAB_LIVE_STREAM", &format!("{name}_LIVE")),
            name,
            dlq_name: string(env, "CONFAB_DLQ_STREAM", "CONFAB_DEAD_LETTERS"),
            subject_prefix: string(env, "CONFAB_SUBJECT_PREFIX", "confab"),
            // JetStream keeps at most five replicas of a stream.
            replicas: parse_within(env, "CONFAB_STREAM_REPLICAS", 1, 1..=5)?,
            max_age,
            duplicate_window,
            // 1 would dead-letter every transient failure at its first delivery.
            max_deliver: parse_within(env, "CONFAB_MAX_DELIVER", 1000, 2..=1_000_000)?,
            // 0 would fall back to JetStream's default.
            ack_wait: secs_within(env, "CONFAB_ACK_WAIT_SECS", 30, 1..=3600)?,
            // 0 would fail every publish.
            publish_timeout: millis_within(env, "CONFAB_PUBLISH_TIMEOUT_MS", 2000, 100..=60_000)?,
            publish_deadline: millis_within(
                env,
                "CONFAB_PUBLISH_DEADLINE_MS",
                8000,
                100..=600_000,
            )?,
            clock_skew: millis_within(env, "CONFAB_CLOCK_SKEW_MS", 2000, 0..=60_000)?,
            persister_consumer: string(env, "CONFAB_PERSISTER_CONSUMER", "confab-persister"),
            // Set and empty means "no indexer" (an unset one means the default).
            indexer_consumer: match env.get("CONFAB_INDEXER_CONSUMER") {
                Some(name) if name.trim().is_empty() => None,
                Some(name) => Some(name.clone()),
                None => Some("confab-indexer".to_owned()),
            },
            live_window: secs_within(env, "CONFAB_LIVE_WINDOW_SECS", 3600, 60..=604_800)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_unset() {
        let c = CommonConfig::from_env(&Env::new(), 9090).unwrap();
        assert_eq!(c.admin_addr.port(), 9090);
        assert_eq!(c.stream.name, "CONFAB_EVENTS");
        assert_eq!(c.stream.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.redis_prefix, "confab:");
        assert_eq!(c.stream.live_window, Duration::from_secs(3600));
        assert_eq!(c.stream.live_name, "CONFAB_EVENTS_LIVE");
        let other = CommonConfig::from_env(&env(&[("CONFAB_STREAM", "OTHER")]), 1).unwrap();
        assert_eq!(
            other.stream.live_name, "OTHER_LIVE",
            "named after its events stream"
        );
        assert_eq!(c.stream.creation_horizon(), Duration::from_secs(10));
        assert_eq!(c.stream.reseed_quiescence(), Duration::from_secs(12));
        assert_eq!(c.stream.indexer_consumer.as_deref(), Some("confab-indexer"));
        let without = CommonConfig::from_env(&env(&[("CONFAB_INDEXER_CONSUMER", "")]), 1).unwrap();
        assert_eq!(without.stream.indexer_consumer, None);
    }

    #[test]
    fn values_are_read_and_bad_ones_named() {
        let c = CommonConfig::from_env(&env(&[("CONFAB_STREAM_REPLICAS", "3")]), 1).unwrap();
        assert_eq!(c.stream.replicas, 3);
        let err = CommonConfig::from_env(&env(&[("CONFAB_MAX_DELIVER", "x")]), 1).unwrap_err();
        assert!(err.to_string().contains("CONFAB_MAX_DELIVER"));
        assert!(boolean(&env(&[("B", "maybe")]), "B", true).is_err());
        assert!(!boolean(&env(&[("B", "false")]), "B", true).unwrap());
    }

    #[test]
    fn parse_within_refuses_zero_negative_and_out_of_range_values_naming_the_range() {
        let read = |raw: &str| parse_within(&env(&[("N", raw)]), "N", 5u32, 1..=10);
        assert_eq!(read("").unwrap(), 5, "empty means the default");
        assert_eq!(read("10").unwrap(), 10);
        for (raw, reason) in [
            ("0", "0 is outside 1..=10"),
            ("-1", "-1 is outside 1..=10"),
            ("11", "11 is outside 1..=10"),
            (
                "99999999999999999999",
                "99999999999999999999 is outside 1..=10",
            ),
        ] {
            assert_eq!(
                read(raw).unwrap_err().to_string(),
                format!("environment variable N has an invalid value: {reason}")
            );
        }
        let error = read("ten").unwrap_err().to_string();
        assert!(error.contains("N has an invalid value"), "{error}");
        assert!(
            error.contains("\"ten\" is not a number in 1..=10"),
            "{error}"
        );
    }

    #[test]
    fn every_common_numeric_setting_is_bounded() {
        for (name, bad) in [
            ("CONFAB_DB_MAX_CONNECTIONS", "0"),
            ("CONFAB_DB_MAX_CONNECTIONS", "-4"),
            ("CONFAB_DB_MAX_CONNECTIONS", "1001"),
            ("CONFAB_STREAM_REPLICAS", "0"),
            ("CONFAB_STREAM_REPLICAS", "6"),
            ("CONFAB_STREAM_MAX_AGE_SECS", "0"),
            ("CONFAB_STREAM_MAX_AGE_SECS", "-1"),
            ("CONFAB_DUPLICATE_WINDOW_SECS", "0"),
            ("CONFAB_DUPLICATE_WINDOW_SECS", "86401"),
            ("CONFAB_MAX_DELIVER", "0"),
            ("CONFAB_MAX_DELIVER", "1"),
            ("CONFAB_MAX_DELIVER", "-1"),
            ("CONFAB_MAX_DELIVER", "1000001"),
            ("CONFAB_ACK_WAIT_SECS", "0"),
            ("CONFAB_ACK_WAIT_SECS", "3601"),
            ("CONFAB_PUBLISH_TIMEOUT_MS", "0"),
            ("CONFAB_PUBLISH_TIMEOUT_MS", "60001"),
            ("CONFAB_PUBLISH_DEADLINE_MS", "0"),
            ("CONFAB_ADMIN_ADDR", "0.0.0.0:0"),
        ] {
            let error = CommonConfig::from_env(&env(&[(name, bad)]), 1)
                .expect_err(name)
                .to_string();
            assert!(error.contains(name), "{name}={bad}: {error}");
            assert!(error.contains("is outside"), "{name}={bad}: {error}");
        }
        let c = CommonConfig::from_env(&env(&[("CONFAB_MAX_DELIVER", "2")]), 1).unwrap();
        assert_eq!(c.stream.max_deliver, 2);
    }

    #[test]
    fn the_duplicate_window_must_fit_in_the_maximum_age() {
        let error = CommonConfig::from_env(
            &env(&[
                ("CONFAB_STREAM_MAX_AGE_SECS", "60"),
                ("CONFAB_DUPLICATE_WINDOW_SECS", "120"),
            ]),
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("CONFAB_DUPLICATE_WINDOW_SECS"), "{error}");
    }
}
