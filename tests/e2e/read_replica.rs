//! Reads from a MySQL read replica (`DATABASE_READ_URL`): a private MariaDB primary and a
//! replica on loopback (`tests/support/mariadb-pair`), binary logging and replication running.
//! GETs answer from the replica (its `Com_select` grows, the primary's does not); an application
//! whose items changed reads the primary while the replica may lack the change, so a deleted
//! message never comes back from a lagging replica; with the replica stopped, reads still answer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use confab_tests::{eventually, Client, Service, TestEnv};
use reqwest::StatusCode;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::MySqlPool;

/// The private pair; stopped (and its directory removed) when dropped.
struct Pair {
    dir: PathBuf,
    primary_port: u16,
    replica_port: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("support/mariadb-pair")
}

impl Pair {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "confab-mariadb-pair-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let (primary_port, replica_port) = (confab_tests::free_port(), confab_tests::free_port());
        let pair = Self {
            dir,
            primary_port,
            replica_port,
        };
        pair.run(&[
            "start",
            &pair.primary_port.to_string(),
            &pair.replica_port.to_string(),
        ]);
        pair
    }

    /// `mariadb-pair <command> <dir> [args]`; fails the test when it fails.
    fn run(&self, args: &[&str]) {
        let (command, rest) = args.split_first().unwrap();
        let out = Command::new(script())
            .arg(command)
            .arg(&self.dir)
            .args(rest)
            .output()
            .expect("tests/support/mariadb-pair runs");
        assert!(
            out.status.success(),
            "mariadb-pair {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(port: u16, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{port}/{database}")
    }

    async fn pool(port: u16) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&Self::url(port, "confab"))
            .await
            .unwrap()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server's `Com_select` (read with `SHOW`, which is not a select itself).
async fn selects(server: &MySqlPool) -> u64 {
    let (_, value): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_select'")
        .fetch_one(server)
        .await
        .unwrap();
    value.parse().unwrap()
}

async fn get_status(client: &Client, path: &str) -> StatusCode {
    client.get(path).await.0
}

/// An application with a chat of `messages` messages, persisted and replicated.
async fn application(client: &Client, replica: &MySqlPool, name: &str, messages: u64) -> String {
    let token = client.create_app(name).await;
    let chat = client.create_chat(&token).await;
    for i in 0..messages {
        client
            .create_message(&token, chat, &format!("message {i}"))
            .await;
    }
    eventually(
        Duration::from_secs(20),
        "messages on the replica",
        || async {
            let rows: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM messages m JOIN chats c ON m.chat_id = c.id \
             JOIN applications a ON c.application_id = a.id WHERE a.name = ?",
            )
            .bind(name)
            .fetch_one(replica)
            .await
            .unwrap();
            rows == i64::try_from(messages).unwrap()
        },
    )
    .await;
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_from_the_replica_never_bring_a_deletion_back_and_survive_its_loss() {
    let pair = Pair::start();
    let primary = Pair::pool(pair.primary_port).await;
    let replica = Pair::pool(pair.replica_port).await;
    confab_runtime::db::migrate(&primary).await.unwrap();
    // Redis keys, streams and subjects come from the usual isolated environment; MySQL is the
    // private pair's.
    let env = TestEnv::new().await;
    let primary_url = Pair::url(pair.primary_port, "confab");
    let replica_url = Pair::url(pair.replica_port, "confab");
    // A generous allowed lag: the replica stopped applying below stays "fresh" for a minute,
    // so only the change mark keeps the changed application's reads off it.
    let overrides = [
        ("DATABASE_URL", primary_url.as_str()),
        ("DATABASE_READ_URL", replica_url.as_str()),
        ("CONFAB_READ_REPLICA_MAX_LAG_MS", "60000"),
        ("CONFAB_INDEXER_CONSUMER", ""),
    ];
    let persister = env.spawn_persister_with(&overrides).await;
    let api: Service = env.spawn_api_with(&overrides).await;
    let client = Client::new(&api.base);

    let quiet = application(&client, &replica, "quiet", 20).await;
    let busy = application(&client, &replica, "busy", 20).await;
    let (quiet_list, busy_list) = (
        format!("/api/v1/applications/{quiet}/chats/1/messages"),
        format!("/api/v1/applications/{busy}/chats/1/messages"),
    );
    // Warm: the token lookups (always the primary's) are cached, and the replica's heartbeat
    // has been measured.
    eventually(
        Duration::from_secs(20),
        "a read from the replica",
        || async {
            get_status(&client, &quiet_list).await == StatusCode::OK
                && get_status(&client, &busy_list).await == StatusCode::OK
                && api
                    .metric("confab_db_reads_total{source=\"replica\"}")
                    .await
                    > 0.0
        },
    )
    .await;

    // 1. GETs answer from the replica.
    let (primary_before, replica_before) = (selects(&primary).await, selects(&replica).await);
    for i in 0..100u64 {
        let message = i % 20 + 1;
        for path in [
            quiet_list.clone(),
            format!("/api/v1/applications/{quiet}/chats/1"),
            format!("/api/v1/applications/{quiet}/chats/1/messages/{message}"),
        ] {
            let (status, body) = client.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
    }
    let (primary_after, replica_after) = (selects(&primary).await, selects(&replica).await);
    assert_eq!(
        primary_after - primary_before,
        0,
        "300 GETs must not select on the primary"
    );
    assert!(
        replica_after - replica_before >= 300,
        "300 GETs selected {} times on the replica",
        replica_after - replica_before
    );

    // 2. A deletion never comes back from a replica that lacks it. The replica stops applying
    //    (still within the allowed lag), the message is deleted and persisted on the primary.
    sqlx::query("STOP SLAVE SQL_THREAD")
        .execute(&replica)
        .await
        .unwrap();
    let deleted = format!("/api/v1/applications/{busy}/chats/1/messages/7");
    assert_eq!(
        client.raw(reqwest::Method::DELETE, &deleted, None).await.0,
        StatusCode::NO_CONTENT
    );
    eventually(
        Duration::from_secs(20),
        "the deletion persisted",
        || async {
            let deleted_at: Option<Option<chrono::NaiveDateTime>> = sqlx::query_scalar(
                "SELECT m.deleted_at FROM messages m JOIN chats c ON m.chat_id = c.id \
             JOIN applications a ON c.application_id = a.id WHERE a.name = 'busy' AND m.number = 7",
            )
            .fetch_optional(&primary)
            .await
            .unwrap();
            matches!(deleted_at, Some(Some(_)))
        },
    )
    .await;
    let replica_shows_it: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages m JOIN chats c ON m.chat_id = c.id \
         JOIN applications a ON c.application_id = a.id \
         WHERE a.name = 'busy' AND m.number = 7 AND m.deleted_at IS NULL",
    )
    .fetch_one(&replica)
    .await
    .unwrap();
    assert_eq!(
        replica_shows_it, 1,
        "the replica must still lack the deletion"
    );
    for _ in 0..50 {
        assert_eq!(get_status(&client, &deleted).await, StatusCode::NOT_FOUND);
        let (status, list) = client.get(&busy_list).await;
        assert_eq!(status, StatusCode::OK);
        let numbers: Vec<u64> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["number"].as_u64().unwrap())
            .collect();
        assert!(
            !numbers.contains(&7),
            "a deleted message came back: {numbers:?}"
        );
    }
    // The quiet application still reads from the replica meanwhile.
    let before = selects(&replica).await;
    assert_eq!(get_status(&client, &quiet_list).await, StatusCode::OK);
    assert!(selects(&replica).await > before);
    sqlx::query("START SLAVE SQL_THREAD")
        .execute(&replica)
        .await
        .unwrap();

    // 3. With the replica stopped, reads still answer (from the primary).
    pair.run(&["stop-replica"]);
    for path in [
        quiet_list.clone(),
        format!("/api/v1/applications/{quiet}/chats/1/messages/3"),
        busy_list.clone(),
    ] {
        let (status, body) = client.get(&path).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path} with the replica down: {body}"
        );
    }
    let (_, list) = client.get(&quiet_list).await;
    assert_eq!(list.as_array().unwrap().len(), 20);

    api.stop().await.unwrap();
    persister.stop().await.unwrap();
    env.cleanup().await;
    drop(pair);
}
