//! The api's shared state, handed to axum as `State`.

use std::sync::Arc;
use std::time::Duration;

use confab_core::keys::Keys;
use confab_core::quota::Quotas;
use confab_core::validation::Limits;
use confab_runtime::cache::Redis;
use confab_runtime::Secret;
use moka::sync::Cache;
use sqlx::MySqlPool;

use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::numbering::Numbering;
use crate::publish::Publisher;

/// Chats known to exist are remembered in-process: chats are never deleted, so a positive answer
/// never goes stale, and posting messages to a busy chat costs no lookup.
const KNOWN_CHATS_CAPACITY: u64 = 1_000_000;
const TOKEN_CACHE_CAPACITY: u64 = 100_000;

/// Cheap to clone (one `Arc`), since axum clones the state for every request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    /// The primary: every write, and reads that must see the latest commit.
    pub db: MySqlPool,
    /// Reads of chats and messages, from the read replica when it may answer.
    pub reads: crate::reads::Reads,
    pub redis: Redis,
    pub keys: Keys,
    pub numbering: Numbering,
    pub publisher: Publisher,
    pub idempotency: Idempotency,
    pub limits: Limits,
    pub max_request_bytes: usize,
    /// Token → application and its quotas. Keyed by the token text, which never leaves this
    /// process.
    pub tokens: Cache<String, Tenant>,
    pub search: std::sync::Arc<dyn confab_search::SearchBackend>,
    /// `embedded` or `elasticsearch`, for metric labels.
    pub search_label: &'static str,
    pub list_tokens: bool,
    pub tenancy: crate::config::Tenancy,
    /// (application id, chat number) pairs known to exist.
    pub known_chats: Cache<(u64, u64), ()>,
    /// Application id → its client-token key and tenant ([`crate::access`]).
    pub client_apps: Cache<u64, crate::access::ClientApp>,
    /// Application id → the browser origins it allows ([`crate::cors`]).
    pub origins: Cache<u64, Arc<[String]>>,
    /// Origins allowed for every application (`CONFAB_CORS_ALLOWED_ORIGINS`).
    pub cors_origins: Vec<String>,
    /// The admin API's bearer credential; `None` locks the admin API.
    pub admin_token: Option<Secret<String>>,
    pub quota_defaults: Quotas,
    /// `CONFAB_MAX_BODY_BYTES` as a quota bound.
    pub hard_max_body_bytes: u32,
    pub metrics: Metrics,
    /// Live delivery: this replica's chat feeds.
    pub live: crate::live::Hub,
    /// How long a token lookup is reused (live streams re-check their token within it).
    pub token_cache_ttl: Duration,
}

/// An application as a tenant request sees it: its id and the quotas in force.
#[derive(Debug, Clone, Copy)]
pub struct Tenant {
    pub id: u64,
    pub quotas: Quotas,
}

pub struct StateParts {
    pub db: MySqlPool,
    pub reads: crate::reads::Reads,
    pub redis: Redis,
    pub publisher: Publisher,
    pub idempotency: Idempotency,
    pub keys: Keys,
    pub limits: Limits,
    pub max_request_bytes: usize,
    pub token_cache_ttl: Duration,
    pub search: std::sync::Arc<dyn confab_search::SearchBackend>,
    pub search_label: &'static str,
    pub list_tokens: bool,
    pub tenancy: crate::config::Tenancy,
    pub admin_token: Option<Secret<String>>,
    pub quota_defaults: Quotas,
    pub hard_max_body_bytes: u32,
    pub metrics: Metrics,
    pub live: crate::live::LiveConfig,
    pub cors_origins: Vec<String>,
}

impl AppState {
    pub fn new(parts: StateParts) -> Self {
        let live = crate::live::Hub::new(
            parts.publisher.jetstream().clone(),
            parts.redis.clone(),
            parts.keys.clone(),
            parts.live,
            parts.metrics.live.clone(),
        );
        Self(Arc::new(Shared {
            numbering: Numbering::new(
                parts.redis.clone(),
                parts.metrics.clone(),
                parts.keys.clone(),
                parts.publisher.jetstream().config.reseed_quiescence(),
            ),
            db: parts.db,
            reads: parts.reads,
            redis: parts.redis,
            keys: parts.keys,
            publisher: parts.publisher,
            idempotency: parts.idempotency,
            limits: parts.limits,
            max_request_bytes: parts.max_request_bytes,
            tokens: Cache::builder()
                .max_capacity(TOKEN_CACHE_CAPACITY)
                .time_to_live(parts.token_cache_ttl)
                .build(),
            search: parts.search,
            search_label: parts.search_label,
            list_tokens: parts.list_tokens,
            tenancy: parts.tenancy,
            known_chats: Cache::builder().max_capacity(KNOWN_CHATS_CAPACITY).build(),
            client_apps: Cache::builder()
                .max_capacity(TOKEN_CACHE_CAPACITY)
                .time_to_live(parts.token_cache_ttl)
                .build(),
            origins: Cache::builder()
                .max_capacity(TOKEN_CACHE_CAPACITY)
                .time_to_live(parts.token_cache_ttl)
                .build(),
            cors_origins: parts.cors_origins,
            admin_token: parts.admin_token,
            quota_defaults: parts.quota_defaults,
            hard_max_body_bytes: parts.hard_max_body_bytes,
            live,
            token_cache_ttl: parts.token_cache_ttl,
            metrics: parts.metrics,
        }))
    }
}
