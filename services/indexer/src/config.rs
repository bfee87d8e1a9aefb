//! The indexer's configuration. Every variable is listed in docs/operations.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use confab_runtime::config::{millis_within, parse_within, secret, socket_addr, string};
use confab_runtime::{CommonConfig, ConfigError, Env, Secret};
use confab_search::config::ElasticsearchConfig;

#[derive(Debug, Clone)]
pub struct IndexerConfig {
    pub common: CommonConfig,
    /// `CONFAB_INDEXER_CONSUMER`, default `confab-indexer`.
    pub consumer: String,
    /// `CONFAB_INDEX_BATCH_SIZE`, default 5000 (1 to 10000): most documents per bulk/commit.
    pub batch_size: usize,
    /// `CONFAB_INDEX_BATCH_WAIT_MS`, default 250 (1 to 60000): pause before the next pull after
    /// one that did not fill a batch. What a commit of the embedded index costs is mostly per
    /// commit (a new segment, its files written and synced), so the pause sets how many
    /// commits a second the indexer makes under load: at about 5,800 messages a second, 50 ms
    /// cost about 0.5 CPU-seconds per 10,000 messages, 250 ms about 0.3 (docs/benchmarks.md,
    /// *The whole pipeline*).
    pub batch_wait: Duration,
    /// `CONFAB_MAX_ACK_PENDING`, default 20000 (1 to 1000000).
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
    /// `CONFAB_INTERNAL_TOKEN`, default unset: the bearer token `/internal/*` (search and
    /// reindex) requires, shared with the api and `confab-indexer reindex`. A second lock behind
    /// the network policy: the endpoint addresses chats by internal ids. Unset: no check.
    pub internal_token: Option<Secret<String>>,
}

#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// `CONFAB_INDEX_DIR`, default `./confab-index`, when `ELASTICSEARCH_URL` is unset.
    Embedded { dir: PathBuf },
    /// `ELASTICSEARCH_URL` and `CONFAB_ELASTICSEARCH_INDEX` (default `confab-messages`);
    /// `CONFAB_ELASTICSEARCH_TIMEOUT_MS` (default 10000, 100 to 600000) bounds every request
    /// (bulk, delete by query, refresh, index creation), so a hung cluster fails the batch,
    /// which is handed back, instead of stalling the indexer.
    Elasticsearch {
        target: ElasticsearchConfig,
        timeout: Duration,
    },
}

/// The admin port default of the indexer.
pub const ADMIN_PORT: u16 = 9092;

impl BackendConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let Some(target) = ElasticsearchConfig::from_env(env) else {
            return Ok(Self::Embedded {
                dir: PathBuf::from(string(env, "CONFAB_INDEX_DIR", "./confab-index")),
            });
        };
        Ok(Self::Elasticsearch {
            target,
            // Below the default ack wait (30 s), so a timed-out batch is handed back before
            // JetStream redelivers it.
            timeout: millis_within(
                env,
                "CONFAB_ELASTICSEARCH_TIMEOUT_MS",
                10_000,
                100..=600_000,
            )?,
        })
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
        let common = CommonConfig::from_env(env, ADMIN_PORT)?;
        Ok(Self {
            consumer: common
                .stream
                .indexer_consumer
                .clone()
                .ok_or(ConfigError::Invalid {
                    name: "CONFAB_INDEXER_CONSUMER",
                    reason:
                        "empty, which means no indexer runs; the indexer needs its consumer's name"
                            .to_owned(),
                })?,
            common,
            // 0 would panic in the batching loop; above 10000 one bulk request grows unwieldy.
            batch_size: parse_within(env, "CONFAB_INDEX_BATCH_SIZE", 5000, 1..=10_000)?,
            // 0 would hand over batches as fast as the loop turns.
            batch_wait: millis_within(env, "CONFAB_INDEX_BATCH_WAIT_MS", 250, 1..=60_000)?,
            max_ack_pending: confab_runtime::jetstream::max_ack_pending(env)?,
            backend: BackendConfig::from_env(env)?,
            search_addr: socket_addr(
                env,
                "CONFAB_SEARCH_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 8081)),
            )?,
            purge_interval: millis_within(
                env,
                "CONFAB_SEARCH_PURGE_INTERVAL_MS",
                10_000,
                100..=3_600_000,
            )?,
            purge_grace: millis_within(
                env,
                "CONFAB_SEARCH_PURGE_GRACE_MS",
                60_000,
                0..=86_400_000,
            )?,
            internal_token: secret(env, "CONFAB_INTERNAL_TOKEN"),
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

    #[test]
    fn numeric_settings_refuse_zero_negative_and_out_of_range_values() {
        let config = IndexerConfig::from_env(&env(&[])).unwrap();
        assert_eq!(config.batch_size, 5000);
        assert_eq!(config.batch_wait, Duration::from_millis(250));
        assert_eq!(config.max_ack_pending, 20_000);
        for (name, bad) in [
            ("CONFAB_INDEX_BATCH_SIZE", "0"),
            ("CONFAB_INDEX_BATCH_SIZE", "-1"),
            ("CONFAB_INDEX_BATCH_SIZE", "10001"),
            ("CONFAB_INDEX_BATCH_WAIT_MS", "0"),
            ("CONFAB_INDEX_BATCH_WAIT_MS", "60001"),
            ("CONFAB_MAX_ACK_PENDING", "0"),
            ("CONFAB_MAX_ACK_PENDING", "-1"),
            ("CONFAB_MAX_ACK_PENDING", "1000001"),
            ("CONFAB_SEARCH_ADDR", "127.0.0.1:0"),
            ("CONFAB_MAX_DELIVER", "1"),
        ] {
            let error = IndexerConfig::from_env(&env(&[(name, bad)]))
                .expect_err(name)
                .to_string();
            assert!(error.contains(name), "{name}={bad}: {error}");
            assert!(error.contains("is outside"), "{name}={bad}: {error}");
        }
        assert_eq!(
            IndexerConfig::from_env(&env(&[("CONFAB_INDEX_BATCH_SIZE", "0")]))
                .unwrap_err()
                .to_string(),
            "environment variable CONFAB_INDEX_BATCH_SIZE has an invalid value: 0 is outside \
             1..=10000"
        );
    }

    #[test]
    fn the_internal_token_is_optional() {
        assert!(IndexerConfig::from_env(&env(&[]))
            .unwrap()
            .internal_token
            .is_none());
        let config = IndexerConfig::from_env(&env(&[("CONFAB_INTERNAL_TOKEN", "s3cret")])).unwrap();
        assert_eq!(config.internal_token.unwrap().expose(), "s3cret");
    }

    #[test]
    fn the_elasticsearch_timeout_defaults_and_is_bounded() {
        let es = |extra: &[(&str, &str)]| {
            let mut pairs = vec![("ELASTICSEARCH_URL", "http://127.0.0.1:9200")];
            pairs.extend_from_slice(extra);
            BackendConfig::from_env(&env(&pairs))
        };
        let BackendConfig::Elasticsearch { timeout, .. } = es(&[]).unwrap() else {
            panic!("ELASTICSEARCH_URL selects Elasticsearch");
        };
        assert_eq!(timeout, Duration::from_secs(10));
        for bad in ["0", "-1", "600001"] {
            let error = es(&[("CONFAB_ELASTICSEARCH_TIMEOUT_MS", bad)])
                .expect_err(bad)
                .to_string();
            assert!(error.contains("CONFAB_ELASTICSEARCH_TIMEOUT_MS"), "{error}");
        }
    }
}
