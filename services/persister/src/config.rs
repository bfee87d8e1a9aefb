//! The persister's configuration. Every variable is listed in the README with its default.

use std::time::Duration;

use confab_runtime::config::{millis, parse, string};
use confab_runtime::{CommonConfig, ConfigError, Env};

#[derive(Debug, Clone)]
pub struct PersisterConfig {
    pub common: CommonConfig,
    /// `CONFAB_PERSISTER_CONSUMER`, default `confab-persister`: the durable consumer's name,
    /// shared by all replicas (they split the work).
    pub consumer: String,
    /// `CONFAB_BATCH_SIZE`, default 500: most events written in one transaction.
    pub batch_size: usize,
    /// `CONFAB_BATCH_WAIT_MS`, default 20: longest wait for a batch to fill.
    pub batch_wait: Duration,
    /// `CONFAB_MAX_ACK_PENDING`, default 20000: events in flight per consumer.
    pub max_ack_pending: i64,
}

/// The admin port default of the persister.
pub const ADMIN_PORT: u16 = 9091;

impl PersisterConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env, ADMIN_PORT)?,
            consumer: string(env, "CONFAB_PERSISTER_CONSUMER", "confab-persister"),
            batch_size: parse(env, "CONFAB_BATCH_SIZE", 500)?,
            batch_wait: millis(env, "CONFAB_BATCH_WAIT_MS", 20)?,
            max_ack_pending: parse(env, "CONFAB_MAX_ACK_PENDING", 20_000)?,
        })
    }
}
