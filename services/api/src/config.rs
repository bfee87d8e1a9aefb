//! The api's configuration. Every variable is listed in the README with its default.

use std::net::SocketAddr;
use std::time::Duration;

use confab_core::quota::Quotas;
use confab_core::validation::Limits;
use confab_runtime::config::{boolean, millis, parse, string};
use confab_runtime::{CommonConfig, ConfigError, Env, Secret};

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
    /// `CONFAB_TOKEN_CACHE_TTL_MS`, default 5000: how long a token → application lookup (with
    /// its quotas) is reused before MySQL is asked again; quota changes, rotations' revocations
    /// and deletions reach every replica within it.
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
    /// `CONFAB_ADMIN_TOKEN`: the admin API's bearer credential. Unset or empty: the admin API
    /// answers 401 to everything.
    pub admin_token: Option<Secret<String>>,
    /// Quotas of applications that did not ask for their own: `CONFAB_DEFAULT_MAX_CHATS`
    /// (100000), `CONFAB_DEFAULT_MESSAGES_PER_SECOND` (1000), `CONFAB_DEFAULT_MESSAGE_BURST`
    /// (2000), `CONFAB_DEFAULT_MAX_BODY_BYTES` (65536; never above `CONFAB_MAX_BODY_BYTES`).
    /// 0 means no limit for chats and rate.
    pub quota_defaults: Quotas,
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
        let quotas = Quotas::default();
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
            token_cache_ttl: millis(env, "CONFAB_TOKEN_CACHE_TTL_MS", 5_000)?,
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
            admin_token: Some(string(env, "CONFAB_ADMIN_TOKEN", ""))
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            quota_defaults: Quotas {
                max_chats: parse(env, "CONFAB_DEFAULT_MAX_CHATS", quotas.max_chats)?,
                messages_per_second: parse(
                    env,
                    "CONFAB_DEFAULT_MESSAGES_PER_SECOND",
                    quotas.messages_per_second,
                )?,
                message_burst: parse(env, "CONFAB_DEFAULT_MESSAGE_BURST", quotas.message_burst)?
                    .max(1),
                max_body_bytes: parse(env, "CONFAB_DEFAULT_MAX_BODY_BYTES", quotas.max_body_bytes)?,
            },
        })
    }

    /// The server's hard limit on message bodies, as a quota value.
    pub fn hard_max_body_bytes(&self) -> u32 {
        u32::try_from(self.limits.max_body_bytes).unwrap_or(u32::MAX)
    }

    /// The largest HTTP request body accepted: room for a maximal message body even when every
    /// character is JSON-escaped.
    pub fn max_request_bytes(&self) -> usize {
        self.limits.max_body_bytes * 6 + 4096
    }
}
