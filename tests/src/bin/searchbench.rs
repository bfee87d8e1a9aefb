//! `confab-search-bench`: the embedded backend alone — indexing throughput into one chat of
//! 100,000 messages, in batches as the indexer sends them, then search latency over that chat.
//!
//! ```text
//! confab-search-bench [--messages 100000] [--batch 1000] [--queries 1000]
//! ```

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use confab_search::embedded::{Embedded, Shared};
use confab_search::{SearchBackend, SearchDoc, SearchRequest, Terms};

const WORDS: &[&str] = &[
    "hello", "world", "message", "chat", "platform", "search", "partial", "matching", "rust",
    "tokio", "redis", "stream", "persist", "number", "quick", "brown", "fox", "jumps", "lazy",
    "dog", "coffee", "morning", "evening", "meeting", "project", "deadline", "review", "deploy",
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut messages, mut batch, mut queries) = (100_000u64, 1000usize, 1000usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().context("flag needs a value")?;
        match flag.as_str() {
            "--messages" => messages = value.parse()?,
            "--batch" => batch = value.parse()?,
            "--queries" => queries = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let dir = std::env::temp_dir().join(format!("confab-search-bench-{}", std::process::id()));
    let backend = Shared(Arc::new(Embedded::open(&dir)?));
    // A deterministic pseudo-random mix of words per message.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let docs: Vec<SearchDoc> = (1..=messages)
        .map(|n| {
            let words: Vec<&str> = (0..8)
                .map(|_| WORDS[next() as usize % WORDS.len()])
                .collect();
            SearchDoc {
                application_id: 1,
                chat_number: 1,
                number: n,
                body: format!("{} #{n}", words.join(" ")),
                version: n,
            }
        })
        .collect();
    let started = Instant::now();
    for chunk in docs.chunks(batch) {
        backend.index(chunk).await?;
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "indexed            {messages} messages in {took:.1} s = {:.0} docs/s (batches of {batch})",
        messages as f64 / took
    );

    let mut latencies = Vec::with_capacity(queries);
    let mut total_hits = 0;
    for i in 0..queries {
        // Partial words: a 3-5 letter slice of one or two vocabulary words.
        let a = WORDS[next() as usize % WORDS.len()];
        let b = WORDS[next() as usize % WORDS.len()];
        let cut = |w: &str| w.chars().take(3 + (i % 3)).collect::<String>();
        let text = if i % 2 == 0 {
            cut(a)
        } else {
            format!("{} {}", cut(a), cut(b))
        };
        let request = SearchRequest {
            application_id: 1,
            chat_number: 1,
            terms: Terms::parse(&text)?,
            limit: 20,
            offset: 0,
        };
        let t = Instant::now();
        total_hits += backend.search(&request).await?.len();
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "search latency ms  p50 {:.2}  p99 {:.2}  max {:.2}  ({queries} queries, {total_hits} hits returned)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
