//! The counter reconciler's configuration. Every variable is listed in docs/operations.md.

use std::time::Duration;

use confab_runtime::config::{millis_within, parse_within};
use confab_runtime::{CommonConfig, ConfigError, Env};

#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    pub common: CommonConfig,
    /// `CONFAB_RECONCILE_INTERVAL_MS`, default 500 (10 to 3600000): pause between runs when
    /// nothing is dirty (at least: four times a run's duration after a long run).
    pub interval: Duration,
    /// `CONFAB_RECONCILE_BATCH`, default 500 (1 to 10000): parents recounted per transaction.
    pub batch: u32,
    /// `CONFAB_REPAIR_CHUNK`, default 1000 (1 to 1000000): id range per statement in `repair`.
    pub repair_chunk: u64,
    /// `CONFAB_MYSQL_PURGE_INTERVAL_MS`, default 5000 (100 to 3600000): pause between passes of
    /// the purge task, which deletes the rows of deleted applications.
    pub purge_interval: Duration,
    /// `CONFAB_MYSQL_PURGE_CHUNK`, default 1000 (1 to 100000): rows deleted per statement by the
    /// purge task.
    pub purge_chunk: u32,
}

/// The admin port default of the counter reconciler.
pub const ADMIN_PORT: u16 = 9093;

impl ReconcilerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env, ADMIN_PORT)?,
            // Below 10 ms an idle reconciler would all but spin on MySQL.
            interval: millis_within(env, "CONFAB_RECONCILE_INTERVAL_MS", 500, 10..=3_600_000)?,
            // 0 would claim nothing, forever (a run loops until a batch comes back short); the
            // upper bound keeps one transaction's locks and run time bounded.
            batch: parse_within(env, "CONFAB_RECONCILE_BATCH", 500, 1..=10_000)?,
            // Each chunk is one statement; a million ids at once is already a long one.
            repair_chunk: parse_within(env, "CONFAB_REPAIR_CHUNK", 1000, 1..=1_000_000)?,
            purge_interval: millis_within(
                env,
                "CONFAB_MYSQL_PURGE_INTERVAL_MS",
                5000,
                100..=3_600_000,
            )?,
            // Each chunk is one statement holding its locks: bounded, so counting and the
            // persister never wait behind a million-row delete.
            purge_chunk: parse_within(env, "CONFAB_MYSQL_PURGE_CHUNK", 1000, 1..=100_000)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_runtime::config::env;

    #[test]
    fn numeric_settings_default_and_refuse_zero_negative_and_out_of_range_values() {
        let config = ReconcilerConfig::from_env(&env(&[])).unwrap();
        assert_eq!(config.interval, Duration::from_millis(500));
        assert_eq!(config.batch, 500);
        assert_eq!(config.repair_chunk, 1000);
        assert_eq!(config.purge_interval, Duration::from_secs(5));
        assert_eq!(config.purge_chunk, 1000);
        for (name, bad) in [
            ("CONFAB_RECONCILE_BATCH", "0"),
            ("CONFAB_RECONCILE_BATCH", "-1"),
            ("CONFAB_RECONCILE_BATCH", "10001"),
            ("CONFAB_RECONCILE_INTERVAL_MS", "0"),
            ("CONFAB_RECONCILE_INTERVAL_MS", "-5"),
            ("CONFAB_RECONCILE_INTERVAL_MS", "3600001"),
            ("CONFAB_REPAIR_CHUNK", "0"),
            ("CONFAB_REPAIR_CHUNK", "-1000"),
            ("CONFAB_MYSQL_PURGE_CHUNK", "0"),
            ("CONFAB_MYSQL_PURGE_CHUNK", "100001"),
            ("CONFAB_MYSQL_PURGE_INTERVAL_MS", "99"),
            ("CONFAB_MAX_DELIVER", "0"),
        ] {
            let error = ReconcilerConfig::from_env(&env(&[(name, bad)]))
                .expect_err(name)
                .to_string();
            assert!(error.contains(name), "{name}={bad}: {error}");
            assert!(error.contains("is outside"), "{name}={bad}: {error}");
        }
        assert_eq!(
            ReconcilerConfig::from_env(&env(&[("CONFAB_RECONCILE_BATCH", "0")]))
                .unwrap_err()
                .to_string(),
            "environment variable CONFAB_RECONCILE_BATCH has an invalid value: 0 is outside \
             1..=10000"
        );
    }
}
