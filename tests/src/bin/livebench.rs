//! `confab-live-bench`: opens N live subscribers (SSE) over C chats of one application on a
//! running api, writes messages at a steady rate, and reports the end-to-end delivery latency
//! (POST sent → event read by a subscriber), the api's CPU and resident memory, and the memory
//! each idle subscriber costs.
//!
//! ```text
//! confab-live-bench [--url URL] [--metrics URL] [--admin-token T] [--subscribers N] [--chats C]
//!                   [--rate MSG_PER_S] [--duration SECS]
//! ```
//! Defaults: `http://127.0.0.1:8080`, the api's `/metrics` at `http://127.0.0.1:9090/metrics`,
//! 1,000 subscribers, 100 chats, 1,000 msg/s, 20 s. With `--admin-token` the application is
//! registered through the admin API with a subscription limit of N; otherwise the api's default
//! limit (`CONFAB_DEFAULT_MAX_SUBSCRIPTIONS`) must allow N. Every message body carries the time it
//! was sent, so latency needs no bookkeeping; both ends share this machine's clock. Raise the
//! open-files limit of both processes for thousands of subscribers (`ulimit -n 65536`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use confab_tests::live::LiveClient;
use confab_tests::Client;
use reqwest::Method;
use serde_json::json;

struct Args {
    url: String,
    metrics: String,
    admin_token: Option<String>,
    subscribers: usize,
    chats: u64,
    rate: u64,
    duration: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        metrics: "http://127.0.0.1:9090/metrics".into(),
        admin_token: None,
        subscribers: 1_000,
        chats: 100,
        rate: 1_000,
        duration: Duration::from_secs(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = value,
            "--metrics" => a.metrics = value,
            "--admin-token" => a.admin_token = Some(value),
            "--subscribers" => a.subscribers = value.parse()?,
            "--chats" => a.chats = value.parse()?,
            "--rate" => a.rate = value.parse()?,
            "--duration" => a.duration = Duration::from_secs(value.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The api's CPU seconds and resident bytes, from its `/metrics`.
async fn process(metrics: &str) -> anyhow::Result<(f64, f64)> {
    let text = reqwest::get(metrics).await?.text().await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("{name} not in {metrics}"))
    };
    Ok((
        value("process_cpu_seconds_total")?,
        value("process_resident_memory_bytes")?,
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn application(a: &Args, client: &Client) -> anyhow::Result<String> {
    let name = format!("live-bench-{}", now_micros());
    let Some(admin_token) = &a.admin_token else {
        return Ok(client.create_app(&name).await);
    };
    let admin = Client::with_bearer(&a.url, admin_token);
    let (status, body) = admin
        .send(
            Method::PUT,
            &format!("/admin/v1/applications/{name}"),
            Some(json!({"name": name, "quotas": {
                "max_subscriptions": a.subscribers,
                "messages_per_second": 0,
            }})),
        )
        .await;
    if !status.is_success() {
        bail!("registering the application: {status} {body}");
    }
    Ok(body["token"].as_str().context("token")?.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let client = Client::new(&a.url);
    let token = application(&a, &client).await?;
    let mut chats = Vec::new();
    for _ in 0..a.chats {
        let chat = client.create_chat(&token).await;
        // A chat's first message seeds its Redis sequence (lookups in MySQL and the stream): a
        // one-time cost per chat, not what is measured here.
        client.create_message(&token, chat, "warm-up").await;
        chats.push(chat);
    }
    let (_, rss_before) = process(&a.metrics).await?;

    // Subscribers: each reads its stream and records the latency of every message event.
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let received = Arc::new(AtomicU64::new(0));
    let opened = Instant::now();
    let mut readers = Vec::new();
    let half = a.subscribers / 2;
    let mut rss_half = rss_before;
    for i in 0..a.subscribers {
        if i == half && half > 0 {
            // Memory with half of them open, so the second half shows what one more idle
            // subscriber costs (the first half also paid for one feed per chat, the runtime's
            // and the allocator's growth).
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_half = process(&a.metrics).await?.1;
        }
        let chat = chats[i % chats.len()];
        let mut live = LiveClient::sse(&a.url, &token, chat, None)
            .await
            .map_err(|e| anyhow::anyhow!("subscriber {i}: {e:?}"))?;
        let (latencies, received) = (latencies.clone(), received.clone());
        readers.push(tokio::spawn(async move {
            while let Some(event) = live.next(Duration::from_secs(3600)).await {
                if event.kind != "message.created" {
                    continue;
                }
                let sent = event.data["body"]
                    .as_str()
                    .and_then(|b| b.strip_prefix("t="))
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(sent) = sent {
                    let latency = now_micros().saturating_sub(sent) as f64 / 1000.0;
                    latencies.lock().expect("not poisoned").push(latency);
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    println!(
        "{} subscribers open over {} chats in {:.1} s",
        a.subscribers,
        chats.len(),
        opened.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu_idle, rss_idle) = process(&a.metrics).await?;

    // Writers: `rate` messages per second spread over the chats, each body the send time.
    let writers = 32u64;
    let per_writer = Duration::from_secs_f64(writers as f64 / a.rate as f64);
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let posts = Arc::new(Mutex::new(Vec::<f64>::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, token, chats) = (client.clone(), token.clone(), chats.clone());
        let (sent, failed, duration) = (sent.clone(), failed.clone(), a.duration);
        let posts = posts.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_writer);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = w;
            while started.elapsed() < duration {
                tick.tick().await;
                let chat = chats[(n % chats.len() as u64) as usize];
                n += writers;
                let body = format!("t={}", now_micros());
                let posted = Instant::now();
                let answer = client.try_create_message(&token, chat, &body).await;
                let took = posted.elapsed().as_secs_f64() * 1000.0;
                posts.lock().expect("not poisoned").push(took);
                match answer {
                    (status, _) if status.is_success() => sent.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let written = started.elapsed().as_secs_f64();
    let (cpu_end, rss_end) = process(&a.metrics).await?;
    let sent = sent.load(Ordering::Relaxed);
    let expected = (0..sent)
        .map(|i| {
            let chat = i % chats.len() as u64;
            (0..a.subscribers as u64)
                .filter(|s| s % chats.len() as u64 == chat)
                .count() as u64
        })
        .sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for reader in &readers {
        reader.abort();
    }
    for reader in readers {
        let _ = reader.await;
    }
    let mut all = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    all.sort_by(f64::total_cmp);
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "messages: {sent} written in {written:.1} s ({:.0}/s), {} failed",
        sent as f64 / written,
        failed.load(Ordering::Relaxed)
    );
    println!(
        "deliveries: {} of {expected} expected ({:.0}/s)",
        received.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed) as f64 / written
    );
    let mut posts = std::mem::take(&mut *posts.lock().expect("not poisoned"));
    posts.sort_by(f64::total_cmp);
    println!(
        "POST latency: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&posts, 0.50),
        percentile(&posts, 0.99)
    );
    println!(
        "delivery latency (POST sent → event read): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "api: CPU {:.0} % of one core while writing; resident {:.1} MiB before subscribers, \
         {:.1} MiB with them idle ({:.1} KB per subscriber in all, {:.1} KB per subscriber of \
         the second half), {:.1} MiB at the end",
        (cpu_end - cpu_idle) / written * 100.0,
        mib(rss_before),
        mib(rss_idle),
        (rss_idle - rss_before) / a.subscribers as f64 / 1024.0,
        (rss_idle - rss_half) / (a.subscribers - half) as f64 / 1024.0,
        mib(rss_end)
    );
    Ok(())
}
