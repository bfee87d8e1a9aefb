//! Configuration shared by every service, read once from an environment map.
//!
//! Loaders take the environment as a map ([`Env`]) so tests build configurations without touching
//! process environment variables. Every variable and default is listed in the README.

use std::collections::HashMap;
use std::net::SocketAddr;
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

/// Reads and parses `name`, falling back to `default`.
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

/// Reads a duration given in milliseconds.
pub fn millis(env: &Env, name: &'static str, default_ms: u64) -> Result<Duration, ConfigError> {
    parse(env, name, default_ms).map(Duration::from_millis)
}

/// [`millis`], refused outside `min_ms..=max_ms`.
pub fn millis_within(
    env: &Env,
    name: &'static str,
    default_ms: u64,
    min_ms: u64,
    max_ms: u64,
) -> Result<Duration, ConfigError> {
    let ms: u64 = parse(env, name, default_ms)?;
    if (min_ms..=max_ms).contains(&ms) {
        Ok(Duration::from_millis(ms))
    } else {
        Err(ConfigError::Invalid {
            name,
            reason: format!("{ms} ms is outside {min_ms}..={max_ms}"),
        })
    }
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
    /// `CONFAB_DB_MAX_CONNECTIONS`, default 16.
    pub db_max_connections: u32,
    /// `REDIS_URL`, default `redis://127.0.0.1:6379`.
    pub redis_url: Secret<String>,
    /// `CONFAB_REDIS_PREFIX`, default `confab:`.
    pub redis_prefix: String,
    /// `NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `CONFAB_ADMIN_ADDR`: health and metrics; each service has its own default port.
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
    /// `CONFAB_STREAM_REPLICAS`, default 1 (production: 3).
    pub replicas: usize,
    /// `CONFAB_STREAM_MAX_AGE_SECS`, default 604800 (7 days).
    pub max_age: Duration,
    /// `CONFAB_DUPLICATE_WINDOW_SECS`, default 120.
    pub duplicate_window: Duration,
    /// `CONFAB_MAX_DELIVER`, default 1000: deliveries of an event that keeps failing for a
    /// transient reason before it is dead-lettered (with the 30 s backoff cap, about 8 hours).
    pub max_deliver: i64,
    /// `CONFAB_ACK_WAIT_SECS`, default 30.
    pub ack_wait: Duration,
    /// `CONFAB_PUBLISH_TIMEOUT_MS`, default 5000.
    pub publish_timeout: Duration,
}

impl CommonConfig {
    pub fn from_env(env: &Env, default_admin_port: u16) -> Result<Self, ConfigError> {
        let admin_default = format!("0.0.0.0:{default_admin_port}");
        Ok(Self {
            database_url: Secret::new(string(
                env,
                "DATABASE_URL",
                "mysql://root@127.0.0.1:3306/confab",
            )),
            db_max_connections: parse(env, "CONFAB_DB_MAX_CONNECTIONS", 16)?,
            redis_url: Secret::new(string(env, "REDIS_URL", "redis://127.0.0.1:6379")),
            redis_prefix: string(env, "CONFAB_REDIS_PREFIX", "confab:"),
            nats_url: string(env, "NATS_URL", "nats://127.0.0.1:4222"),
            admin_addr: parse(
                env,
                "CONFAB_ADMIN_ADDR",
                admin_default.parse().expect("valid"),
            )?,
            stream: StreamConfig {
                name: string(env, "CONFAB_STREAM", "CONFAB_EVENTS"),
                dlq_name: string(env, "CONFAB_DLQ_STREAM", "CONFAB_DEAD_LETTERS"),
                subject_prefix: string(env, "CONFAB_SUBJECT_PREFIX", "confab"),
                replicas: parse(env, "CONFAB_STREAM_REPLICAS", 1)?,
                max_age: Duration::from_secs(parse(env, "CONFAB_STREAM_MAX_AGE_SECS", 604_800)?),
                duplicate_window: Duration::from_secs(parse(
                    env,
                    "CONFAB_DUPLICATE_WINDOW_SECS",
                    120,
                )?),
                max_deliver: parse(env, "CONFAB_MAX_DELIVER", 1000)?,
                ack_wait: Duration::from_secs(parse(env, "CONFAB_ACK_WAIT_SECS", 30)?),
                publish_timeout: millis(env, "CONFAB_PUBLISH_TIMEOUT_MS", 5000)?,
            },
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
}
