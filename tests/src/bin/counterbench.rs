//! `confab-counter-bench`: the cost of one reconcile run after N changes.
//!
//! Seeds a fresh database with 10,000 chats × 100 messages (1,000,000 rows), then for each N
//! applies N new messages spread evenly over the chats, marks their chats the way the persister
//! does, and times one `run_once`.
//!
//! ```text
//! confab-counter-bench [--mysql mysql://root@127.0.0.1:3306] [--changes 100,10000,1000000]
//! ```

use std::time::Instant;

use anyhow::Context;
use confab_counter_reconciler::reconcile;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::MySqlPool;

const CHATS: u64 = 10_000;
const PER_CHAT: u64 = 100;

async fn exec(db: &MySqlPool, sql: &str) -> anyhow::Result<()> {
    sqlx::query(sql)
        .execute(db)
        .await
        .with_context(|| sql.to_owned())?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut server = "mysql://root@127.0.0.1:3306".to_owned();
    let mut changes = vec![100u64, 10_000, 1_000_000];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().context("flag needs a value")?;
        match flag.as_str() {
            "--mysql" => server = value,
            "--changes" => {
                changes = value.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await?;
    exec(&admin, "DROP DATABASE IF EXISTS confab_counter_bench").await?;
    exec(&admin, "CREATE DATABASE confab_counter_bench").await?;
    let url = format!("{server}/confab_counter_bench");
    let db = MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    confab_runtime::db::migrate(&db).await?;
    let env = [("DATABASE_URL".to_owned(), url.clone())]
        .into_iter()
        .collect();
    let reconciler_db =
        confab_counter_reconciler::pool(&confab_runtime::CommonConfig::from_env(&env, 0)?)?;
    let metrics =
        confab_counter_reconciler::metrics::Metrics::register(&confab_runtime::metrics::registry());

    let seeded = Instant::now();
    for sql in [
        "INSERT INTO applications (name, token) VALUES ('bench', REPEAT('a', 48))".to_owned(),
        "CREATE TABLE digits (d INT NOT NULL PRIMARY KEY)".to_owned(),
        "INSERT INTO digits VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)".to_owned(),
        format!(
            "INSERT INTO chats (application_id, number, messages_count) \
             SELECT 1, a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 1, {PER_CHAT} \
             FROM digits a, digits b, digits c, digits e"
        ),
        "INSERT INTO messages (chat_id, number, body, version) \
         SELECT ch.id, a.d + 10 * b.d + 1, 'seeded', 0 FROM chats ch, digits a, digits b"
            .to_owned(),
        format!("UPDATE applications SET chats_count = {CHATS}"),
    ] {
        exec(&db, &sql).await?;
    }
    eprintln!(
        "seeded {CHATS} chats, {} messages in {:?}",
        CHATS * PER_CHAT,
        seeded.elapsed()
    );

    let mut next_number = PER_CHAT + 1;
    for n in changes {
        exec(&db, "DELETE FROM counter_dirty_chats").await?;
        exec(&db, "DELETE FROM counter_dirty_applications").await?;
        // n new messages, spread evenly over the chats: ceil(n / CHATS) per chat on min(n, CHATS)
        // chats, then the marks the persister would have written.
        let touched = n.min(CHATS);
        let per_chat = n.div_ceil(CHATS);
        exec(
            &db,
            &format!(
                "INSERT INTO messages (chat_id, number, body, version) \
                 SELECT ch.id, {next_number} + s.k, 'new', 1 FROM chats ch \
                 JOIN (SELECT a.d + 10 * b.d + 100 * c.d AS k FROM digits a, digits b, digits c) s \
                   ON s.k < {per_chat} \
                 WHERE ch.number <= {touched}"
            ),
        )
        .await?;
        next_number += per_chat;
        exec(
            &db,
            &format!(
                "INSERT INTO counter_dirty_chats (chat_id, dirty_since) \
                 SELECT id, NOW(6) FROM chats WHERE number <= {touched}"
            ),
        )
        .await?;
        let started = Instant::now();
        let stats = reconcile::run_once(&reconciler_db, &metrics, 500).await?;
        let took = started.elapsed();
        println!(
            "changes {n:>9}  chats recounted {:>6}  run {:>8.1} ms",
            stats.chats_recounted,
            took.as_secs_f64() * 1000.0
        );
    }
    exec(&admin, "DROP DATABASE confab_counter_bench").await?;
    Ok(())
}
