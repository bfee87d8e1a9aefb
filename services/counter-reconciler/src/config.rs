//! The counter reconciler's configuration. Every variable is listed in the README.

use std::time::Duration;

use confab_runtime::config::{millis, parse};
use confab_runtime::{CommonConfig, ConfigError, Env};

#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    pub common: CommonConfig,
    /// `CONFAB_RECONCILE_INTERVAL_MS`, default 500: pause between runs when nothing is dirty.
    pub interval: Duration,
    /// `CONFAB_RECONCILE_BATCH`, default 500: parents recounted per transaction.
    pub batch: u32,
    /// `CONFAB_REPAIR_CHUNK`, default 1000: id range per statement in `repair`.
    pub repair_chunk: u64,
}

/// The admin port default of the counter reconciler.
pub const ADMIN_PORT: u16 = 9093;

impl ReconcilerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env, ADMIN_PORT)?,
            interval: millis(env, "CONFAB_RECONCILE_INTERVAL_MS", 500)?,
            batch: parse(env, "CONFAB_RECONCILE_BATCH", 500)?,
            repair_chunk: parse(env, "CONFAB_REPAIR_CHUNK", 1000)?,
        })
    }
}
