//! The api's configuration. Every variable is listed in docs/operations.md with its default.

use std::net::SocketAddr;
use std::time::Duration;

use confab_core::quota::{Quotas, RateParams, MAX_SUBSCRIPTIONS_LIMIT};
use confab_core::validation::Limits;
use confab_runtime::config::{
    boolean, millis_within, parse_within, secret, secs_within, socket_addr, string,
};
use confab_runtime::{CommonConfig, ConfigError, Env, Secret};
use confab_search::config::ElasticsearchConfig;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub common: CommonConfig,
    /// `CONFAB_HTTP_ADDR`, default `0.0.0.0:8080` (port 1 to 65535).
    pub http_addr: SocketAddr,
    /// `CONFAB_MIGRATE`, default true: apply migrations at start-up.
    pub migrate: bool,
    /// `CONFAB_MAX_BODY_BYTES` (default 65536, 1 to 8388608) and `CONFAB_MAX_PER_PAGE` (default
    /// 500, 1 to 10000; the default page size, 50, never exceeds it).
    pub limits: Limits,
    /// `CONFAB_REQUEST_TIMEOUT_MS`, default 10000 (100 to 600000).
    pub request_timeout: Duration,
    /// `CONFAB_TOKEN_CACHE_TTL_MS`, default 5000 (0, no cache, to 3600000): how long a token → application lookup (with
    /// its quotas) is reused before MySQL is asked again; quota changes, rotations' revocations
    /// and deletions reach every replica within it.
    pub token_cache_ttl: Duration,
    /// `CONFAB_LIVE_*`: live delivery ([`crate::live::LiveConfig`]).
    pub live: crate::live::LiveConfig,
    pub search: SearchConfig,
    /// `CONFAB_LIST_TOKENS`, default false: whether `GET /applications` shows every token. The
    /// list needs no credential, so by default it does not hand out every tenant's secret.
    pub list_tokens: bool,
    /// The multi-tenant switches of `/applications`, for an api anyone can reach:
    /// `CONFAB_OPEN_APPLICATION_CREATION` (default true; false: `POST /applications` is 403,
    /// applications come from the operator and the admin API only), `CONFAB_LIST_APPLICATIONS`
    /// (default true; false: `GET /applications` is 403), and while creation is open a limit per
    /// client: `CONFAB_APPLICATION_CREATION_PER_MINUTE` (default 60, 0 to 1000000; 0: none) with
    /// a burst of `CONFAB_APPLICATION_CREATION_BURST` (default 10, 1 to 1000000). A client is the
    /// peer address, or the last address of the header `CONFAB_CLIENT_IP_HEADER` names (e.g.
    /// `X-Forwarded-For`: the entry the proxy in front of the api appended).
    pub tenancy: Tenancy,
    /// `CONFAB_SEARCH_TIMEOUT_MS`, default 2000 (100 to 600000): bounds each search, whether it
    /// goes to the indexer's endpoint or to Elasticsearch.
    pub search_timeout: Duration,
    /// `CONFAB_ADMIN_TOKEN`: the admin API's bearer credential. Unset or empty: the admin API
    /// answers 401 to everything.
    pub admin_token: Option<Secret<String>>,
    /// `CONFAB_CORS_ALLOWED_ORIGINS`, default none: browser origins allowed for every
    /// application (comma-separated, e.g. `http://localhost:5173`), beside each application's own
    /// allowed origins. Meant for development.
    pub cors_origins: Vec<String>,
    /// `CONFAB_COMPRESS`, default true: gzip answers over 1 KiB for clients that accept it
    /// (false: leave it to a proxy in front).
    pub compress: bool,
    /// Quotas of applications that did not ask for their own: `CONFAB_DEFAULT_MAX_CHATS`
    /// (100000, 0 to 2^53 - 1), `CONFAB_DEFAULT_MESSAGES_PER_SECOND` (1000, 0 to 10000000),
    /// `CONFAB_DEFAULT_MESSAGE_BURST` (2000, 1 to 10000000), `CONFAB_DEFAULT_MAX_BODY_BYTES`
    /// (65536, 1 to 8388608; never above `CONFAB_MAX_BODY_BYTES`),
    /// `CONFAB_DEFAULT_MAX_SUBSCRIPTIONS` (1000, 0 to 1000000). 0 means no limit for chats, rate
    /// and subscriptions.
    pub quota_defaults: Quotas,
    /// `CONFAB_IDEMPOTENCY_STREAM`, default `<CONFAB_STREAM>_IDEMPOTENCY`: the JetStream stream
    /// of `Idempotency-Key` records.
    pub idempotency_stream: String,
    /// `CONFAB_IDEMPOTENCY_TTL_SECS`, default 86400 (1 to 2592000): how long a key is remembered.
    pub idempotency_ttl: Duration,
    /// `CONFAB_INTERNAL_TOKEN`, default unset: the bearer token sent to the indexer's internal
    /// endpoint, which refuses queries without it when it has one (the same value on both).
    pub internal_token: Option<Secret<String>>,
}

/// Who may create and list applications (see [`ApiConfig::tenancy`]).
#[derive(Debug, Clone)]
pub struct Tenancy {
    pub open_creation: bool,
    pub list_applications: bool,
    /// The per-client limit on `POST /applications` while it is open; `None`: no limit.
    pub creation_rate: Option<RateParams>,
    pub client_ip_header: Option<String>,
}

/// Where search queries go.
#[derive(Debug, Clone)]
pub enum SearchConfig {
    /// `ELASTICSEARCH_URL` and `CONFAB_ELASTICSEARCH_INDEX` (default `confab-messages`).
    Elasticsearch(ElasticsearchConfig),
    /// Otherwise the indexer's internal endpoint, `CONFAB_SEARCH_URL` (default
    /// `http://127.0.0.1:8081`), which serves the embedded index.
    Indexer { url: String },
}

/// The admin port default of the api.
pub const ADMIN_PORT: u16 = 9090;

/// The most `CONFAB_MAX_BODY_BYTES` and `CONFAB_DEFAULT_MAX_BODY_BYTES` may say: an event carries
/// the whole body, and 8 MiB is the largest `max_payload` NATS advises.
pub const BODY_BYTES_LIMIT: u32 = 8 * 1024 * 1024;

/// `CONFAB_CORS_ALLOWED_ORIGINS`: a comma-separated list of origins, each checked.
fn cors_origins(env: &Env) -> Result<Vec<String>, ConfigError> {
    let raw = env
        .get("CONFAB_CORS_ALLOWED_ORIGINS")
        .map(String::as_str)
        .unwrap_or_default();
    let origins: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = origins
        .iter()
        .find(|origin| !confab_core::admin::valid_origin(origin))
    {
        return Err(ConfigError::Invalid {
            name: "CONFAB_CORS_ALLOWED_ORIGINS",
            reason: format!("{bad:?} is not an origin (scheme://host[:port], lowercase, no path)"),
        });
    }
    Ok(origins)
}

impl ApiConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Limits::default();
        let quotas = Quotas::default();
        let common = CommonConfig::from_env(env, ADMIN_PORT)?;
        // 0 would refuse every list; more than 10000 rows is past the search result window.
        let max_per_page = parse_within(
            env,
            "CONFAB_MAX_PER_PAGE",
            defaults.max_per_page,
            1..=10_000,
        )?;
        Ok(Self {
            internal_token: secret(env, "CONFAB_INTERNAL_TOKEN"),
            idempotency_stream: string(
                env,
                "CONFAB_IDEMPOTENCY_STREAM",
                &format!("{}_IDEMPOTENCY", common.stream.name),
            ),
            idempotency_ttl: secs_within(
                env,
                "CONFAB_IDEMPOTENCY_TTL_SECS",
                86_400,
                1..=2_592_000,
            )?,
            common,
            http_addr: socket_addr(
                env,
                "CONFAB_HTTP_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 8080)),
            )?,
            migrate: boolean(env, "CONFAB_MIGRATE", true)?,
            limits: Limits {
                max_body_bytes: parse_within(
                    env,
                    "CONFAB_MAX_BODY_BYTES",
                    defaults.max_body_bytes,
                    1..=BODY_BYTES_LIMIT as usize,
                )?,
                max_per_page,
                // A maximum below the default page size caps the default too.
                default_per_page: defaults.default_per_page.min(max_per_page),
                ..defaults
            },
            // 0 would time every request out.
            request_timeout: millis_within(
                env,
                "CONFAB_REQUEST_TIMEOUT_MS",
                10_000,
                100..=600_000,
            )?,
            // 0 turns the cache off; the cache refuses a TTL of a thousand years and more.
            token_cache_ttl: millis_within(env, "CONFAB_TOKEN_CACHE_TTL_MS", 5_000, 0..=3_600_000)?,
            live: crate::live::LiveConfig::from_env(env)?,
            search: match ElasticsearchConfig::from_env(env) {
                Some(elasticsearch) => SearchConfig::Elasticsearch(elasticsearch),
                None => SearchConfig::Indexer {
                    url: string(env, "CONFAB_SEARCH_URL", "http://127.0.0.1:8081"),
                },
            },
            // Bounds every query, to the indexer's endpoint or to Elasticsearch alike.
            search_timeout: millis_within(env, "CONFAB_SEARCH_TIMEOUT_MS", 2000, 100..=600_000)?,
            list_tokens: boolean(env, "CONFAB_LIST_TOKENS", false)?,
            tenancy: Tenancy {
                open_creation: boolean(env, "CONFAB_OPEN_APPLICATION_CREATION", true)?,
                list_applications: boolean(env, "CONFAB_LIST_APPLICATIONS", true)?,
                creation_rate: {
                    let per_minute: u64 = parse_within(
                        env,
                        "CONFAB_APPLICATION_CREATION_PER_MINUTE",
                        60,
                        0..=1_000_000,
                    )?;
                    let burst: u64 =
                        parse_within(env, "CONFAB_APPLICATION_CREATION_BURST", 10, 1..=1_000_000)?;
                    (per_minute > 0).then(|| {
                        let emission_us = (60_000_000 / per_minute).max(1);
                        RateParams {
                            emission_us,
                            tolerance_us: emission_us * (burst - 1),
                        }
                    })
                },
                client_ip_header: Some(string(env, "CONFAB_CLIENT_IP_HEADER", ""))
                    .filter(|h| !h.is_empty()),
            },
            admin_token: secret(env, "CONFAB_ADMIN_TOKEN"),
            cors_origins: cors_origins(env)?,
            compress: boolean(env, "CONFAB_COMPRESS", true)?,
            quota_defaults: Quotas {
                // The numbering script compares in Lua numbers, exact up to 2^53.
                max_chats: parse_within(
                    env,
                    "CONFAB_DEFAULT_MAX_CHATS",
                    quotas.max_chats,
                    0..=(1 << 53) - 1,
                )?,
                messages_per_second: parse_within(
                    env,
                    "CONFAB_DEFAULT_MESSAGES_PER_SECOND",
                    quotas.messages_per_second,
                    0..=10_000_000,
                )?,
                message_burst: parse_within(
                    env,
                    "CONFAB_DEFAULT_MESSAGE_BURST",
                    quotas.message_burst,
                    1..=10_000_000,
                )?,
                // Capped by `CONFAB_MAX_BODY_BYTES` where quotas are resolved.
                max_body_bytes: parse_within(
                    env,
                    "CONFAB_DEFAULT_MAX_BODY_BYTES",
                    quotas.max_body_bytes,
                    1..=BODY_BYTES_LIMIT,
                )?,
                max_subscriptions: parse_within(
                    env,
                    "CONFAB_DEFAULT_MAX_SUBSCRIPTIONS",
                    quotas.max_subscriptions,
                    0..=MAX_SUBSCRIPTIONS_LIMIT,
                )?,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use confab_runtime::config::env;

    #[test]
    fn numeric_settings_refuse_zero_negative_and_out_of_range_values() {
        for (name, bad) in [
            ("CONFAB_MAX_BODY_BYTES", "0"),
            ("CONFAB_MAX_BODY_BYTES", "-1"),
            ("CONFAB_MAX_BODY_BYTES", "8388609"),
            ("CONFAB_MAX_PER_PAGE", "0"),
            ("CONFAB_MAX_PER_PAGE", "10001"),
            ("CONFAB_REQUEST_TIMEOUT_MS", "0"),
            ("CONFAB_REQUEST_TIMEOUT_MS", "-10"),
            ("CONFAB_TOKEN_CACHE_TTL_MS", "-1"),
            ("CONFAB_TOKEN_CACHE_TTL_MS", "3600001"),
            ("CONFAB_SEARCH_TIMEOUT_MS", "0"),
            ("CONFAB_SEARCH_TIMEOUT_MS", "600001"),
            ("CONFAB_IDEMPOTENCY_TTL_SECS", "0"),
            ("CONFAB_DEFAULT_MAX_CHATS", "-1"),
            ("CONFAB_DEFAULT_MAX_CHATS", "9007199254740992"),
            ("CONFAB_DEFAULT_MESSAGES_PER_SECOND", "-1"),
            ("CONFAB_DEFAULT_MESSAGES_PER_SECOND", "10000001"),
            ("CONFAB_DEFAULT_MESSAGE_BURST", "0"),
            ("CONFAB_DEFAULT_MAX_BODY_BYTES", "0"),
            ("CONFAB_DEFAULT_MAX_SUBSCRIPTIONS", "-1"),
            ("CONFAB_DEFAULT_MAX_SUBSCRIPTIONS", "1000001"),
            ("CONFAB_HTTP_ADDR", "0.0.0.0:0"),
            ("CONFAB_MAX_DELIVER", "0"),
        ] {
            let error = ApiConfig::from_env(&env(&[(name, bad)]))
                .expect_err(name)
                .to_string();
            assert!(error.contains(name), "{name}={bad}: {error}");
            assert!(error.contains("is outside"), "{name}={bad}: {error}");
        }
        assert_eq!(
            ApiConfig::from_env(&env(&[("CONFAB_MAX_PER_PAGE", "0")]))
                .unwrap_err()
                .to_string(),
            "environment variable CONFAB_MAX_PER_PAGE has an invalid value: 0 is outside 1..=10000"
        );
    }

    #[test]
    fn zero_means_no_limit_where_documented_and_a_small_page_maximum_caps_the_default() {
        let c = ApiConfig::from_env(&env(&[
            ("CONFAB_DEFAULT_MAX_CHATS", "0"),
            ("CONFAB_DEFAULT_MESSAGES_PER_SECOND", "0"),
            ("CONFAB_DEFAULT_MAX_SUBSCRIPTIONS", "0"),
            ("CONFAB_TOKEN_CACHE_TTL_MS", "0"),
            ("CONFAB_MAX_PER_PAGE", "20"),
        ]))
        .unwrap();
        assert_eq!(c.quota_defaults.max_chats, 0);
        assert_eq!(c.quota_defaults.messages_per_second, 0);
        assert_eq!(c.quota_defaults.max_subscriptions, 0);
        assert_eq!(c.token_cache_ttl, Duration::ZERO);
        assert_eq!(c.limits.page(None, None).unwrap(), (20, 0));
        let defaults = ApiConfig::from_env(&env(&[])).unwrap();
        assert_eq!(defaults.limits.page(None, None).unwrap(), (50, 0));
        assert_eq!(defaults.search_timeout, Duration::from_secs(2));
        assert_eq!(defaults.quota_defaults.max_subscriptions, 1_000);
        assert!(defaults.internal_token.is_none());
        let with_token = ApiConfig::from_env(&env(&[("CONFAB_INTERNAL_TOKEN", "s3cret")])).unwrap();
        assert_eq!(with_token.internal_token.unwrap().expose(), "s3cret");
    }
}
