//! Live delivery: clients follow a chat's message events over Server-Sent Events or WebSocket
//! (`routes::events`), and resume exactly where they left off.
//!
//! ```text
//!  JetStream ──one consumer per replica──▶ dispatch ──by chat──▶ Feed ──broadcast ring──▶ subscribers
//!      └──────── a resuming subscriber's own replay (what it missed) ──────────────────────▶ ┘
//! ```
//!
//! - [`dispatch`]: the replica's one consumer of every message event, routing each to the feed
//!   of its chat, if this replica has one.
//! - [`feed`]: one per chat with local subscribers, shared by all of them; the ring is everyone's
//!   bounded buffer.
//! - [`replay`]: a resuming subscriber's catch-up from its cursor.
//! - [`lease`]: the per-application limit on concurrent subscriptions, across replicas.
//!
//! Every event carries an id, the subscriber's [`Cursor`] after it; a client that comes back with
//! it (`Last-Event-ID`, or `since`) gets every later event once, in order.

pub mod dispatch;
pub mod feed;
pub mod lease;
pub mod replay;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use confab_core::keys::Keys;
use confab_core::live::Cursor;
use confab_runtime::cache::Redis;
use confab_runtime::config::{millis_within, parse_within, secs_within};
use confab_runtime::jetstream::JetStream;
use confab_runtime::metrics::{self, Histogram, IntCounterVec, IntGaugeVec, Registry};
use confab_runtime::{ConfigError, Env};
use tokio::sync::{broadcast, watch};

use crate::error::ApiError;
use crate::state::AppState;
use feed::{Delivery, Feed};

/// `CONFAB_LIVE_*`: live delivery's settings.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// `CONFAB_LIVE_BUFFER`, default 512 (16 to 65536): events a subscriber may fall behind its
    /// chat's feed before it is cut off (the ring is shared by the chat's subscribers).
    pub buffer: usize,
    /// `CONFAB_LIVE_HEARTBEAT_SECS`, default 15 (1 to 300): the SSE comment / WebSocket ping
    /// interval on an idle stream, and the renewal interval of a subscription's lease.
    pub heartbeat: Duration,
    /// `CONFAB_LIVE_REORDER_MS`, default 100 (0 to 5000): how long a creation is held while a
    /// lower number of the same chat has not arrived.
    pub reorder: Duration,
    /// `CONFAB_LIVE_REPLAY_MAX`, default 10000 (1 to 1000000): the most events a resuming
    /// subscriber is replayed; further behind answers `410`.
    pub replay_max: usize,
}

impl LiveConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            buffer: parse_within(env, "CONFAB_LIVE_BUFFER", 512, 16..=65_536)?,
            heartbeat: secs_within(env, "CONFAB_LIVE_HEARTBEAT_SECS", 15, 1..=300)?,
            reorder: millis_within(env, "CONFAB_LIVE_REORDER_MS", 100, 0..=5_000)?,
            replay_max: parse_within(env, "CONFAB_LIVE_REPLAY_MAX", 10_000, 1..=1_000_000)?,
        })
    }
}

/// Why a subscription could not open.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Gone(&'static str),
    /// The resume point cannot be one this chat's stream handed out.
    #[error("{0}")]
    Invalid(&'static str),
    #[error("the application has {0} live subscriptions open, its limit")]
    Limit(u32),
}

impl Error {
    fn nats(error: impl std::fmt::Display) -> Self {
        Self::Unavailable(format!("nats: {error}"))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Unavailable(cause) => ApiError::Unavailable(cause),
            Error::Gone(why) => ApiError::Gone(why),
            Error::Invalid(why) => ApiError::InvalidParameter(format!("event id: {why}")),
            Error::Limit(limit) => ApiError::SubscriptionLimit(limit),
        }
    }
}

/// The live metrics, registered with the api's.
#[derive(Clone)]
pub struct LiveMetrics {
    pub subscriptions: IntGaugeVec,
    pub feeds: metrics::IntGauge,
    pub delivered: IntCounterVec,
    pub dropped: metrics::IntCounter,
    pub ended: IntCounterVec,
    pub delivery: Histogram,
}

impl LiveMetrics {
    pub fn register(registry: &Registry) -> Self {
        let m = Self {
            subscriptions: metrics::int_gauge_vec(
                registry,
                "confab_live_subscriptions",
                "Live subscriptions open on this replica, by transport (sse, websocket).",
                &["transport"],
            ),
            feeds: metrics::int_gauge(
                registry,
                "confab_live_feeds",
                "Chats this replica has live subscribers of (one feed each; the replica reads the \
                 stream with one consumer for all of them).",
            ),
            delivered: metrics::counter_vec(
                registry,
                "confab_live_events_delivered_total",
                "Events written to live subscribers, by transport.",
                &["transport"],
            ),
            dropped: metrics::counter(
                registry,
                "confab_live_events_dropped_total",
                "Events slow subscribers fell behind by when they were cut off (they resume \
                 from their cursor).",
            ),
            ended: metrics::counter_vec(
                registry,
                "confab_live_subscriptions_ended_total",
                "Subscriptions the server ended, by reason (too_slow, revoked, shutting_down, \
                 feed_lost, chat_deleted).",
                &["reason"],
            ),
            delivery: metrics::histogram(
                registry,
                "confab_live_delivery_seconds",
                "Time from the api's publish of an event to its hand-over to a live subscriber's connection.",
                metrics::LATENCY_BUCKETS,
            ),
        };
        for transport in TRANSPORTS {
            m.subscriptions.with_label_values(&[transport]);
            m.delivered.with_label_values(&[transport]);
        }
        for end in End::ALL {
            m.ended.with_label_values(&[end.as_str()]);
        }
        m
    }
}

pub const TRANSPORTS: [&str; 2] = ["sse", "websocket"];

/// The live side of one api replica: the feeds of the chats it has subscribers for.
#[derive(Clone)]
pub struct Hub(Arc<HubInner>);

pub struct HubInner {
    js: JetStream,
    redis: Redis,
    keys: Keys,
    config: LiveConfig,
    metrics: LiveMetrics,
    router: Mutex<dispatch::Router>,
    /// The dispatcher is started once, by whoever needs it first.
    starting: tokio::sync::Mutex<()>,
    closing: watch::Sender<bool>,
    /// One reference per open subscription (and this one): what shutdown waits for.
    open: Arc<()>,
}

impl HubInner {
    fn router(&self) -> std::sync::MutexGuard<'_, dispatch::Router> {
        self.router.lock().expect("the hub lock is never poisoned")
    }

    fn forget(&self, key: (u64, u64)) {
        let mut router = self.router();
        if router
            .feeds
            .get(&key)
            .is_some_and(|weak| weak.strong_count() == 0)
        {
            router.feeds.remove(&key);
        }
    }

    /// The chat's live feed, if this replica has one that has not ended.
    fn existing(&self, key: (u64, u64)) -> Option<Arc<Feed>> {
        // Dropped after the lock is released, like in [`HubInner::feed`].
        let found = self.router().feeds.get(&key).and_then(Weak::upgrade);
        found.filter(|feed| feed.is_live())
    }

    /// The chat's live feed, or a new one (which has released the creations up to `released`)
    /// when the dispatcher runs; `None` when it does not.
    fn feed(self: &Arc<Self>, key: (u64, u64), released: Option<u64>) -> Option<Arc<Feed>> {
        // An ended feed found here is dropped after the lock is released: when this was its
        // last reference, dropping it takes the router's lock ([`HubInner::forget`]).
        let ended;
        let mut router = self.router();
        if !router.running {
            return None;
        }
        match router.feeds.get(&key).and_then(Weak::upgrade) {
            Some(feed) if feed.is_live() => return Some(feed),
            found => ended = found,
        }
        let feed = Feed::new(self, key, router.position + 1, released);
        router.feeds.insert(key, Arc::downgrade(&feed));
        drop(router);
        drop(ended);
        Some(feed)
    }
}

/// How long starting the dispatcher may take.
const START_TIMEOUT: Duration = Duration::from_secs(5);

impl Hub {
    pub fn new(
        js: JetStream,
        redis: Redis,
        keys: Keys,
        config: LiveConfig,
        metrics: LiveMetrics,
    ) -> Self {
        Self(Arc::new(HubInner {
            js,
            redis,
            keys,
            config,
            metrics,
            router: Mutex::new(dispatch::Router::default()),
            starting: tokio::sync::Mutex::new(()),
            closing: watch::channel(false).0,
            open: Arc::new(()),
        }))
    }

    /// Ends every stream with a reconnect hint (graceful shutdown).
    pub fn close(&self) {
        self.0.closing.send_replace(true);
    }

    /// Resolves once no subscription is open.
    pub async fn closed(&self) {
        while Arc::strong_count(&self.0.open) > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn feed(&self, key: (u64, u64)) -> Result<Arc<Feed>, Error> {
        if let Some(feed) = self.0.existing(key) {
            return Ok(feed);
        }
        // A new feed releases creations from the chat's last one stored on: one lookup per
        // feed, so its first creations need not wait out a reorder window.
        let released = feed::last_created(&self.0, key).await;
        if let Some(feed) = self.0.feed(key, released) {
            return Ok(feed);
        }
        let _one_at_a_time = self.0.starting.lock().await;
        if let Some(feed) = self.0.feed(key, released) {
            return Ok(feed);
        }
        tokio::time::timeout(START_TIMEOUT, dispatch::start(&self.0))
            .await
            .map_err(|_| Error::Unavailable("nats: starting live delivery timed out".into()))??;
        self.0
            .feed(key, released)
            .ok_or_else(|| Error::Unavailable("live delivery stopped as it started".into()))
    }

    /// Opens a subscription to chat `chat` of `tenant`, from `since` (resuming) or from now.
    pub async fn subscribe(
        &self,
        state: &AppState,
        token: String,
        tenant: crate::state::Tenant,
        chat: u64,
        since: Option<Cursor>,
        transport: &'static str,
    ) -> Result<Subscription, Error> {
        let hub = &self.0;
        let lease = lease::Lease::acquire(
            hub.redis.clone(),
            hub.keys.subscriptions(tenant.id),
            tenant.quotas.max_subscriptions,
            hub.config.heartbeat * 3,
        )
        .await?;
        let key = (tenant.id, chat);
        let (feed, joined) = loop {
            let feed = self.feed(key).await?;
            if let Some(joined) = feed.join() {
                break (feed, joined);
            }
        };
        let (cursor, backlog, resumed) = match since {
            None => (joined.broadcast, VecDeque::new(), None),
            Some(mut cursor) => {
                let resumed = cursor.to_string();
                let backlog = replay::replay(hub, key, &mut cursor, &joined.broadcast).await?;
                // Before a backlog, the client still stands where it resumed from.
                let resumed = (!backlog.is_empty()).then_some(resumed);
                (cursor, backlog, resumed)
            }
        };
        let check =
            (state.token_cache_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(5));
        hub.metrics
            .subscriptions
            .with_label_values(&[transport])
            .inc();
        Ok(Subscription {
            hub: self.clone(),
            feed,
            rx: joined.rx,
            cursor,
            backlog,
            resumed,
            _open: hub.open.clone(),
            heartbeat: interval(hub.config.heartbeat),
            check: interval(check),
            closing: hub.closing.subscribe(),
            state: state.clone(),
            token,
            lease,
            transport,
        })
    }
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Why the server ended a stream. The client reconnects with its last event id unless it is not
/// [`End::resumable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It fell a whole buffer behind.
    TooSlow,
    /// Its token no longer names the application (revoked, rotated out, application deleted).
    Revoked,
    ShuttingDown,
    /// The chat's feed lost the stream.
    FeedLost,
    /// The chat was deleted.
    ChatDeleted,
}

impl End {
    const ALL: [End; 5] = [
        End::TooSlow,
        End::Revoked,
        End::ShuttingDown,
        End::FeedLost,
        End::ChatDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            End::TooSlow => "too_slow",
            End::Revoked => "revoked",
            End::ShuttingDown => "shutting_down",
            End::FeedLost => "feed_lost",
            End::ChatDeleted => "chat_deleted",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            End::TooSlow => "this subscriber fell too far behind; reconnect with the last event id",
            End::Revoked => "the token no longer names an application",
            End::ShuttingDown => "this server is shutting down; reconnect with the last event id",
            End::FeedLost => "the event stream was lost; reconnect with the last event id",
            End::ChatDeleted => "the chat was deleted",
        }
    }

    /// Whether reconnecting makes sense.
    pub fn resumable(self) -> bool {
        !matches!(self, End::Revoked | End::ChatDeleted)
    }
}

/// What a subscription yields next.
pub enum Next {
    /// An event, with its id (the cursor to resume after it).
    Event(Arc<Delivery>, String),
    /// Nothing happened for a heartbeat interval.
    Heartbeat,
    End(End),
}

/// One subscriber's stream of a chat's events.
pub struct Subscription {
    hub: Hub,
    /// Keeps the chat's feed running (and says why it ended).
    feed: Arc<Feed>,
    rx: broadcast::Receiver<Arc<Delivery>>,
    cursor: Cursor,
    /// Replayed events with their ids, delivered before the live ones.
    backlog: VecDeque<(Arc<Delivery>, String)>,
    /// The cursor resumed from, when a backlog follows (the `ready` event's id).
    resumed: Option<String>,
    /// Counts it open ([`Hub::closed`]).
    _open: Arc<()>,
    heartbeat: tokio::time::Interval,
    check: tokio::time::Interval,
    closing: watch::Receiver<bool>,
    state: AppState,
    /// The `{token}` segment it was opened with (an application or a client token; never
    /// logged), checked again now and then.
    token: String,
    lease: Option<lease::Lease>,
    transport: &'static str,
}

impl Subscription {
    /// The cursor of everything delivered so far.
    pub fn cursor(&self) -> String {
        self.cursor.to_string()
    }

    /// The id of the `ready` event: where the client stands before anything is sent (the
    /// cursor it resumed from while a replay follows, so a client that drops before the replay
    /// gets it again).
    pub fn ready_id(&self) -> String {
        self.resumed.clone().unwrap_or_else(|| self.cursor())
    }

    /// The heartbeat interval (also how long a WebSocket frame may take to be sent).
    pub fn heartbeat(&self) -> Duration {
        self.hub.0.config.heartbeat
    }

    /// The transport could not take a frame in time: the subscriber is cut off as too slow.
    pub fn cut_off(&self) {
        self.hub
            .0
            .metrics
            .ended
            .with_label_values(&[End::TooSlow.as_str()])
            .inc();
    }

    pub async fn next(&mut self) -> Next {
        let next = self.next_inner().await;
        let metrics = &self.hub.0.metrics;
        match &next {
            Next::Event(..) => metrics.delivered.with_label_values(&[self.transport]).inc(),
            Next::End(end) => metrics.ended.with_label_values(&[end.as_str()]).inc(),
            Next::Heartbeat => {}
        }
        next
    }

    async fn next_inner(&mut self) -> Next {
        if let Some((delivery, id)) = self.backlog.pop_front() {
            return Next::Event(delivery, id);
        }
        loop {
            tokio::select! {
                biased;
                () = closed(&mut self.closing) => return Next::End(End::ShuttingDown),
                // Before the ring: a subscriber that always has an event waiting is still
                // re-checked and keeps its lease (the tick is ready once per interval).
                _ = self.check.tick() => {
                    // Boxed: these futures are large and run rarely, and every idle subscriber
                    // would otherwise carry their space in its own (memory per subscriber).
                    let access = Box::pin(self.state.access(&self.token)).await;
                    if let Err(
                        ApiError::NotFound(_) | ApiError::InvalidToken | ApiError::TokenExpired,
                    ) = access
                    {
                        return Next::End(End::Revoked);
                    }
                    // Renewed on its own clock: a busy stream sends no heartbeats.
                    if let Some(lease) = &mut self.lease {
                        Box::pin(lease.renew_if_due()).await;
                    }
                }
                received = self.rx.recv() => match received {
                    Ok(delivery) => {
                        if self.cursor.receive(delivery.sequence, delivery.prev) {
                            self.hub
                                .0
                                .metrics
                                .delivery
                                .observe(metrics::seconds_since(delivery.published));
                            let id = self.cursor.to_string();
                            self.heartbeat.reset();
                            return Next::Event(delivery, id);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        self.hub.0.metrics.dropped.inc_by(missed);
                        return Next::End(End::TooSlow);
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Next::End(self.feed.ended().unwrap_or(End::FeedLost));
                    }
                },
                _ = self.heartbeat.tick() => return Next::Heartbeat,
            }
        }
    }
}

/// Resolves once shutdown began (the guard `wait_for` returns is not `Send`, so it is dropped
/// here).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .0
            .metrics
            .subscriptions
            .with_label_values(&[self.transport])
            .dec();
    }
}
