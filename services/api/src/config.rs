//! The api's configuration. Every variable is listed in the README with its default.

use std::net::SocketAddr;
use std::time::Duration;

use confab_core::validation::Limits;
use confab_runtime::config::{boolean, millis, parse, string};
use confab_runtime::{CommonConfig, ConfigError, Env};

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub common: CommonConfig,
    /// `CONFAB_HTTP_ADDR`, default `0.0.0.0:8080`.
    pub http_addr: SocketAddr,
    /// `CONFAB_MIGRATE`, default true: apply migrations at start-up.
    pub migrate: bool,
    /// `CONFAB_MAX_BODY_BYTES` (default 65536) and `CONFAB_MAX_PER_PAGE` (default 500).
    pub limits: Limits,
    /// `CONFAB_REQUEST_TIMEOUT_MS`, default 10000.
    pub request_timeout: Duration,
    /// `CONFAB_TOKEN_CACHE_TTL_MS`, default 30000: how long a token → application lookup is
    /// reused before MySQL is asked again.
    pub token_cache_ttl: Duration,
    /// `CONFAB_IN_FLIGHT_TTL_SECS`, default 3600: how long Redis remembers a chat whose creation
    /// is acknowledged but maybe not yet persisted.
    pub in_flight_ttl: Duration,
    pub search: SearchConfig,
    /// `CONFAB_LIST_TOKENS`, default false: whether `GET /applications` shows every token. The
    /// list needs no credential, so by default it does not hand out every tenant's secret.
    pub list_tokens: bool,
    /// `CONFAB_SEARCH_TIMEOUT_MS`, default 2000.
    pub search_timeout: Duration,
}

/// Where search queries go.
#[derive(Debug, Clone)]
pub enum SearchConfig {
    /// `ELASTICSEARCH_URL` and `CONFAB_ELASTICSEARCH_INDEX` (default `confab-messages`).
    Elasticsearch { url: String, index: String },
    /// Otherwise the indexer's internal endpoint, `CONFAB_SEARCH_URL` (default
    /// `http://127.0.0.1:8081`), which serves the embedded index.
    Indexer { url: String },
}

/// The admin port default of the api.
pub const ADMIN_PORT: u16 = 9090;

impl ApiConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Limits::default();
        Ok(Self {
            common: CommonConfig::from_env(env, ADMIN_PORT)?,
            http_addr: parse(
                env,
                "CONFAB_HTTP_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 8080)),
            )?,
            migrate: boolean(env, "CONFAB_MIGRATE", true)?,
            limits: Limits {
                max_body_bytes: parse(env, "CONFAB_MAX_BODY_BYTES", defaults.max_body_bytes)?,
                max_per_page: parse(env, "CONFAB_MAX_PER_PAGE", defaults.max_per_page)?,
                ..defaults
            },
            request_timeout: millis(env, "CONFAB_REQUEST_TIMEOUT_MS", 10_000)?,
            token_cache_ttl: millis(env, "CONFAB_TOKEN_CACHE_TTL_MS", 30_000)?,
            in_flight_ttl: Duration::from_secs(parse(env, "CONFAB_IN_FLIGHT_TTL_SECS", 3600)?),
            search: match env.get("ELASTICSEARCH_URL").filter(|u| !u.is_empty()) {
                Some(url) => SearchConfig::Elasticsearch {
                    url: url.clone(),
                    index: string(env, "CONFAB_ELASTICSEARCH_INDEX", "confab-messages"),
                },
                None => SearchConfig::Indexer {
                    url: string(env, "CONFAB_SEARCH_URL", "http://127.0.0.1:8081"),
                },
            },
            search_timeout: millis(env, "CONFAB_SEARCH_TIMEOUT_MS", 2000)?,
            list_tokens: boolean(env, "CONFAB_LIST_TOKENS", false)?,
        })
    }

    /// The largest HTTP request body accepted: room for a maximal message body even when every
    /// character is JSON-escaped.
    pub fn max_request_bytes(&self) -> usize {
        self.limits.max_body_bytes * 6 + 4096
    }
}
