//! The indexer's configuration. Every variable is listed in the README.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use confab_runtime::config::{millis, millis_within, parse, string};
use confab_runtime::{CommonConfig, ConfigError, Env};

#[derive(Debug, Clone)]
pub struct IndexerConfig {
    pub common: CommonConfig,
    /// `CONFAB_INDEXER_CONSUMER`, default `confab-indexer`.
    pub consumer: String,
    /// `CONFAB_INDEX_BATCH_SIZE`, default 1000: most documents per bulk/commit.
    pub batch_size: usize,
    /// `CONFAB_INDEX_BATCH_WAIT_MS`, default 50.
    pub batch_wait: Duration,
    /// `CONFAB_MAX_ACK_PENDING`, default 20000.
    pub max_ack_pending: i64,
    pub backend: BackendConfig,
    /// `CONFAB_SEARCH_ADDR`, default `0.0.0.0:8081`: the internal search endpoint (embedded).
    pub search_addr: SocketAddr,
    /// `CONFAB_SEARCH_PURGE_INTERVAL_MS`, default 10000 (100 to 3600000): how often deleted
    /// applications are looked for and removed from the index.
    pub purge_interval: Duration,
    /// `CONFAB_SEARCH_PURGE_GRACE_MS`, default 60000 (at most a day): a deleted application is
    /// purged again until one purge began this long after its deletion (longer than the
    /// backend takes to make a write visible, plus clock skew between api and indexer).
    pub purge_grace: Duration,
}

#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// `CONFAB_INDEX_DIR`, default `./confab-index`, when `ELASTICSEARCH_URL` is unset.
    Embedded { dir: PathBuf },
    /// `ELASTICSEARCH_URL` and `CONFAB_ELASTICSEARCH_INDEX` (default `confab-messages`).
    Elasticsearch { url: String, index: String },
}

/// The admin port default of the indexer.
pub const ADMIN_PORT: u16 = 9092;

impl BackendConfig {
    pub fn from_env(env: &Env) -> Self {
        match env.get("ELASTICSEARCH_URL").filter(|u| !u.is_empty()) {
            Some(url) => Self::Elasticsearch {
                url: url.clone(),
                index: string(env, "CONFAB_ELASTICSEARCH_INDEX", "confab-messages"),
            },
            None => Self::Embedded {
                dir: PathBuf::from(string(env, "CONFAB_INDEX_DIR", "./confab-index")),
            },
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Embedded { .. } => "embedded",
            Self::Elasticsearch { .. } => "elasticsearch",
        }
    }
}

impl IndexerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env, ADMIN_PORT)?,
            consumer: string(env, "CONFAB_INDEXER_CONSUMER", "confab-indexer"),
            batch_size: parse(env, "CONFAB_INDEX_BATCH_SIZE", 1000)?,
            batch_wait: millis(env, "CONFAB_INDEX_BATCH_WAIT_MS", 50)?,
            max_ack_pending: parse(env, "CONFAB_MAX_ACK_PENDING", 20_000)?,
            backend: BackendConfig::from_env(env),
            search_addr: parse(
                env,
                "CONFAB_SEARCH_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 8081)),
            )?,
            purge_interval: millis_within(
                env,
                "CONFAB_SEARCH_PURGE_INTERVAL_MS",
                10_000,
                100,
                3_600_000,
            )?,
            purge_grace: millis_within(env, "CONFAB_SEARCH_PURGE_GRACE_MS", 60_000, 0, 86_400_000)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_runtime::config::env;

    #[test]
    fn purge_settings_default_and_are_bounded() {
        let config = IndexerConfig::from_env(&env(&[])).unwrap();
        assert_eq!(config.purge_interval, Duration::from_secs(10));
        assert_eq!(config.purge_grace, Duration::from_secs(60));
        for (name, bad) in [
            ("CONFAB_SEARCH_PURGE_INTERVAL_MS", "0"),
            ("CONFAB_SEARCH_PURGE_INTERVAL_MS", "99"),
            ("CONFAB_SEARCH_PURGE_GRACE_MS", "86400001"),
            ("CONFAB_SEARCH_PURGE_GRACE_MS", "soon"),
        ] {
            let error = IndexerConfig::from_env(&env(&[(name, bad)])).unwrap_err();
            assert!(error.to_string().contains(name), "{error}");
        }
    }
}
