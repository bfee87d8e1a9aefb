//! The persister's configuration. Every variable is listed in docs/operations.md with its default.

use std::time::Duration;

use confab_runtime::config::{millis_within, parse_within};
use confab_runtime::{CommonConfig, ConfigError, Env};

#[derive(Debug, Clone)]
pub struct PersisterConfig {
    pub common: CommonConfig,
    /// The durable consumer's name, shared by all replicas (they split the work):
    /// `CONFAB_PERSISTER_CONSUMER` of the shared [`confab_runtime::config::StreamConfig`].
    pub consumer: String,
    /// `CONFAB_BATCH_SIZE`, default 500 (1 to 10000): most events written in one transaction.
    pub batch_size: usize,
    /// `CONFAB_BATCH_WAIT_MS`, default 20 (1 to 60000): pause before the next pull after one
    /// that did not fill a batch.
    pub batch_wait: Duration,
    /// `CONFAB_MAX_ACK_PENDING`, default 20000 (1 to 1000000): events in flight per consumer.
    pub max_ack_pending: i64,
}

/// The admin port default of the persister.
pub const ADMIN_PORT: u16 = 9091;

impl PersisterConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env, ADMIN_PORT)?;
        Ok(Self {
            consumer: common.stream.persister_consumer.clone(),
            common,
            // 0 would panic in the batching loop; above 10000 one transaction grows unwieldy.
            batch_size: parse_within(env, "CONFAB_BATCH_SIZE", 500, 1..=10_000)?,
            // 0 would hand over batches as fast as the loop turns.
            batch_wait: millis_within(env, "CONFAB_BATCH_WAIT_MS", 20, 1..=60_000)?,
            max_ack_pending: confab_runtime::jetstream::max_ack_pending(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_runtime::config::env;

    #[test]
    fn numeric_settings_refuse_zero_negative_and_out_of_range_values() {
        let config = PersisterConfig::from_env(&env(&[])).unwrap();
        assert_eq!(config.batch_size, 500);
        assert_eq!(config.batch_wait, Duration::from_millis(20));
        assert_eq!(config.max_ack_pending, 20_000);
        for (name, bad) in [
            ("CONFAB_BATCH_SIZE", "0"),
            ("CONFAB_BATCH_SIZE", "-1"),
            ("CONFAB_BATCH_SIZE", "10001"),
            ("CONFAB_BATCH_WAIT_MS", "0"),
            ("CONFAB_BATCH_WAIT_MS", "60001"),
            ("CONFAB_MAX_ACK_PENDING", "0"),
            ("CONFAB_MAX_ACK_PENDING", "-1"),
            ("CONFAB_MAX_ACK_PENDING", "1000001"),
            ("CONFAB_MAX_DELIVER", "1"),
        ] {
            let error = PersisterConfig::from_env(&env(&[(name, bad)]))
                .expect_err(name)
                .to_string();
            assert!(error.contains(name), "{name}={bad}: {error}");
            assert!(error.contains("is outside"), "{name}={bad}: {error}");
        }
        assert_eq!(
            PersisterConfig::from_env(&env(&[("CONFAB_BATCH_SIZE", "0")]))
                .unwrap_err()
                .to_string(),
            "environment variable CONFAB_BATCH_SIZE has an invalid value: 0 is outside 1..=10000"
        );
    }
}
