//! The end-to-end harness: runs Confab's deployables in-process against the real MariaDB, Redis
//! and NATS, each test isolated by its own database, JetStream streams, subject prefix and Redis
//! key prefix, so tests run in parallel and clean up after themselves.
//!
//! Connection defaults match the local services; override with `CONFAB_TEST_MYSQL_URL` (server
//! URL without a database), `CONFAB_TEST_REDIS_URL` and `CONFAB_TEST_NATS_URL`.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod client;
pub mod live;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use confab_api::ApiConfig;
use confab_persister::PersisterConfig;
use confab_runtime::Env;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use client::Client;

pub fn mysql_server_url() -> String {
    std::env::var("CONFAB_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn redis_url() -> String {
    std::env::var("CONFAB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn nats_url() -> String {
    std::env::var("CONFAB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// One test's isolated slice of the backing services.
pub struct TestEnv {
    pub id: String,
    pub database: String,
    /// A pool on the test's database with full rights, for assertions.
    pub db: MySqlPool,
    env: Env,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A new environment; `customize` may change the environment every service gets.
    pub async fn with(customize: impl FnOnce(&mut Env)) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        // The creation time is in the name: a database another test just created (no tables
        // yet) must never look stale to a concurrent sweep.
        let born = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let database = format!("confab_test_{born}_{id}");
        let server = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&mysql_server_url())
            .await
            .expect("MariaDB must be reachable for the end-to-end tests");
        sweep_stale_databases(&server).await;
        sqlx::query(&format!("CREATE DATABASE `{database}`"))
            .execute(&server)
            .await
            .unwrap();
        server.close().await;
        let database_url = format!("{}/{database}", mysql_server_url());
        let db = MySqlPoolOptions::new()
            .max_connections(4)
            .connect(&database_url)
            .await
            .unwrap();
        confab_runtime::db::migrate(&db).await.unwrap();
        let mut env: Env = [
            ("DATABASE_URL", database_url.as_str()),
            ("REDIS_URL", redis_url().as_str()),
            ("NATS_URL", nats_url().as_str()),
            ("CONFAB_STREAM", &format!("T_{id}")),
            ("CONFAB_DLQ_STREAM", &format!("T_{id}_DLQ")),
            ("CONFAB_LIVE_STREAM", &format!("T_{id}_LIVE")),
            ("CONFAB_SUBJECT_PREFIX", &format!("t_{id}")),
            ("CONFAB_REDIS_PREFIX", &format!("t:{id}:")),
            ("CONFAB_STREAM_MAX_AGE_SECS", "3600"),
            ("CONFAB_MIGRATE", "false"),
            // Tests that write thousands of messages to one application as fast as they can
            // must not meet the default rate limit; the quota tests set their own quotas.
            ("CONFAB_DEFAULT_MESSAGES_PER_SECOND", "0"),
            // Likewise tests that create hundreds of applications from one address; the
            // tenancy test sets its own per-client limit.
            ("CONFAB_APPLICATION_CREATION_PER_MINUTE", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        customize(&mut env);
        Self {
            id,
            database,
            db,
            env,
        }
    }

    pub fn env(&self) -> Env {
        self.env.clone()
    }

    /// This environment plus `overrides`.
    fn env_with(&self, overrides: &[(&str, &str)]) -> Env {
        let mut env = self.env();
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }

    /// Starts an api instance with this environment.
    pub async fn spawn_api(&self) -> Service {
        self.spawn_api_with(&[]).await
    }

    /// Starts an api instance with this environment plus `overrides`.
    pub async fn spawn_api_with(&self, overrides: &[(&str, &str)]) -> Service {
        let config = ApiConfig::from_env(&self.env_with(overrides)).unwrap();
        let http = listener();
        let base = url(&http);
        let service = Service::start(base, |admin, stop| async move {
            let listeners = confab_api::Listeners {
                http: tokio_listener(http),
                admin,
            };
            confab_api::run(config, listeners, stop)
                .await
                .map_err(|e| e.to_string())
        });
        service.wait_ready().await;
        service
    }

    /// Starts a persister with this environment.
    pub async fn spawn_persister(&self) -> Service {
        self.spawn_persister_with(&[]).await
    }

    /// Starts a persister with this environment plus `overrides`.
    pub async fn spawn_persister_with(&self, overrides: &[(&str, &str)]) -> Service {
        let service = self.start_persister(overrides);
        service.wait_ready().await;
        service
    }

    /// Starts a persister without waiting for it to become ready.
    pub fn start_persister(&self, overrides: &[(&str, &str)]) -> Service {
        let config = PersisterConfig::from_env(&self.env_with(overrides)).unwrap();
        Service::start(String::new(), |admin, stop| async move {
            confab_persister::run(config, admin, stop)
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// This test's embedded index directory.
    pub fn index_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("confab-index-{}", self.id))
    }

    /// Starts an indexer (embedded backend in [`Self::index_dir`]); `base` is its search URL.
    pub async fn spawn_indexer_with(&self, overrides: &[(&str, &str)]) -> Service {
        let service = self.start_indexer(overrides);
        service.wait_ready().await;
        service
    }

    /// Starts an indexer without waiting for it to become ready.
    pub fn start_indexer(&self, overrides: &[(&str, &str)]) -> Service {
        let mut env = self.env_with(overrides);
        env.entry("CONFAB_INDEX_DIR".into())
            .or_insert_with(|| self.index_dir().display().to_string());
        let config = confab_indexer::IndexerConfig::from_env(&env).unwrap();
        let search = listener();
        Service::start(url(&search), |admin, stop| async move {
            let listeners = confab_indexer::Listeners {
                admin,
                search: tokio_listener(search),
            };
            confab_indexer::run(config, listeners, stop)
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// Starts a counter reconciler with this environment plus `overrides`.
    pub async fn spawn_reconciler_with(&self, overrides: &[(&str, &str)]) -> Service {
        let config =
            confab_counter_reconciler::ReconcilerConfig::from_env(&self.env_with(overrides))
                .unwrap();
        let service = Service::start(String::new(), |admin, stop| async move {
            confab_counter_reconciler::run(config, admin, stop)
                .await
                .map_err(|e| e.to_string())
        });
        service.wait_ready().await;
        service
    }

    /// The reconciler's kind of pool (READ COMMITTED sessions) on this test's database.
    pub fn reconciler_pool(&self) -> MySqlPool {
        let config = confab_runtime::CommonConfig::from_env(&self.env, 0).unwrap();
        confab_counter_reconciler::pool(&config).unwrap()
    }

    /// The internal id of the application a token belongs to.
    pub async fn application_id(&self, token: &str) -> u64 {
        sqlx::query_scalar("SELECT id FROM applications WHERE token = ?")
            .bind(token)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Whether every stored count of a live parent equals the real number of its live (not
    /// deleted) children. (A deleted chat's count is never shown again.)
    pub async fn counts_are_exact(&self) -> bool {
        self.count(
            "SELECT COUNT(*) FROM chats c WHERE c.deleted_at IS NULL AND c.messages_count <> \
             (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id AND m.deleted_at IS NULL)",
        )
        .await
            == 0
            && self
                .count(
                    "SELECT COUNT(*) FROM applications a WHERE a.chats_count <> \
                     (SELECT COUNT(*) FROM chats c WHERE c.application_id = a.id \
                      AND c.deleted_at IS NULL)",
                )
                .await
                == 0
    }

    /// Messages in this test's events stream now: it keeps an event only until its consumers
    /// ack it, so this falls as they do.
    pub async fn stream_messages(&self) -> u64 {
        self.stream_state().await.messages
    }

    /// The last sequence of this test's events stream: how many events were ever stored, which
    /// consumers' acks do not lower. What a "nothing was written" check compares.
    pub async fn stream_last_sequence(&self) -> u64 {
        self.stream_state().await.last_sequence
    }

    async fn stream_state(&self) -> async_nats::jetstream::stream::State {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        let mut stream = js.get_stream(format!("T_{}", self.id)).await.unwrap();
        stream.info().await.unwrap().state.clone()
    }

    /// Subjects the NATS server holds state for in each of this test's streams (events, live,
    /// dead letters, idempotency records), by stream name; a stream not created is left out.
    pub async fn retained_subjects(&self) -> BTreeMap<String, u64> {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        let mut out = BTreeMap::new();
        for suffix in ["", "_LIVE", "_DLQ", "_IDEMPOTENCY"] {
            let name = format!("T_{}{suffix}", self.id);
            if let Ok(mut stream) = js.get_stream(&name).await {
                let info = stream.info().await.unwrap();
                out.insert(name, info.state.subjects_count);
            }
        }
        out
    }

    /// Messages in this test's dead-letter stream.
    pub async fn dead_letters(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        let stream = js.get_stream(format!("T_{}_DLQ", self.id)).await.unwrap();
        let mut out = Vec::new();
        let mut seq = 1;
        while let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
            seq += 1;
        }
        out
    }

    /// The durable consumer `name`'s backlog: events not yet delivered plus delivered but not
    /// acknowledged. Fails the test when the consumer cannot be read.
    pub async fn consumer_backlog(&self, name: &str) -> u64 {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        let stream = js.get_stream(format!("T_{}", self.id)).await.unwrap();
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        info.num_pending + info.num_ack_pending as u64
    }

    /// Whether a durable consumer of this test's events stream has nothing left to deliver or ack.
    pub async fn consumer_drained(&self, name: &str) -> bool {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        let Ok(stream) = js.get_stream(format!("T_{}", self.id)).await else {
            return false;
        };
        let Ok(mut consumer) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
            .await
        else {
            return false;
        };
        consumer
            .info()
            .await
            .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db).await.unwrap()
    }

    /// Drops the database, the streams, the index and the Redis keys of this test.
    pub async fn cleanup(self) {
        let _ = std::fs::remove_dir_all(self.index_dir());
        let _ = sqlx::query(&format!("DROP DATABASE `{}`", self.database))
            .execute(&self.db)
            .await;
        self.db.close().await;
        if let Ok(client) = async_nats::connect(nats_url()).await {
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(format!("T_{}", self.id)).await;
            let _ = js.delete_stream(format!("T_{}_DLQ", self.id)).await;
            let _ = js.delete_stream(format!("T_{}_LIVE", self.id)).await;
            let _ = js.delete_stream(format!("T_{}_IDEMPOTENCY", self.id)).await;
        }
        if let Ok(client) = redis::Client::open(self.env["REDIS_URL"].as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("t:{}:*", self.id))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
            }
        }
    }
}

/// Whether database `name` has no table created in the last hour.
async fn untouched_for_an_hour(server: &MySqlPool, name: &str) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = ? AND CREATE_TIME > NOW() - INTERVAL 1 HOUR",
    )
    .bind(name)
    .fetch_one(server)
    .await
    .is_ok_and(|recent| recent == 0)
}

/// Drops test databases left behind by runs that crashed more than an hour ago, judged by the
/// creation time in their name (`confab_test_<unix seconds>_<id>`).
async fn sweep_stale_databases(server: &MySqlPool) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'confab\\_test\\_%'",
    )
    .fetch_all(server)
    .await
    .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for name in names {
        let born = name
            .strip_prefix("confab_test_")
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(secs, _)| secs.parse::<u64>().ok());
        let stale = match born {
            Some(born) => now.saturating_sub(born) > 3600,
            // A name without a time comes from a checkout before it was recorded, maybe running
            // right now against this server: stale only when it has no table younger than an
            // hour.
            None => untouched_for_an_hour(server, &name).await,
        };
        if stale {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .execute(server)
                .await;
        }
    }
}

/// A running service task.
pub struct Service {
    /// The tenant API's base URL (empty for services without one).
    pub base: String,
    /// The admin server's base URL.
    pub admin: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

/// A loopback listener on a free port (std, so it can be bound outside the runtime).
fn listener() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn url(listener: &std::net::TcpListener) -> String {
    format!("http://{}", listener.local_addr().unwrap())
}

fn tokio_listener(listener: std::net::TcpListener) -> TcpListener {
    TcpListener::from_std(listener).unwrap()
}

impl Service {
    /// Spawns `run(admin listener, shutdown future)` as a task.
    fn start<F, Fut>(base: String, run: F) -> Self
    where
        F: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let admin = listener();
        let admin_base = url(&admin);
        let (tx, rx) = oneshot::channel::<()>();
        let stop = Box::pin(async move {
            let _ = rx.await;
        });
        let task = tokio::spawn(run(tokio_listener(admin), stop));
        Self {
            base,
            admin: admin_base,
            stop: Some(tx),
            task,
        }
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.admin);
        eventually(Duration::from_secs(20), "service ready", || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// The value of one series (`name{label="value",...}` exactly as exposed, or a bare name)
    /// on this service's `/metrics`; fails when the service does not export it.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} is not exported by {}", self.admin))
            .trim()
            .parse()
            .unwrap()
    }

    /// Graceful shutdown (as on SIGTERM); returns how the service ended.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .map_err(|_| "service did not stop within 30s".to_owned())?
            .map_err(|e| e.to_string())?
    }

    /// Kills the service abruptly, mid-whatever it was doing.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Waits until `check` is true, polling; panics with `what` at the deadline.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A port free on the loopback interface a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Standard base64 (with or without padding), which is how DevTools sends binary data.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let digit = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("{c:?} is not a base64 digit"),
        }
    };
    let digits: Vec<u32> = text.bytes().filter(|c| *c != b'=').map(digit).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (*d << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}
