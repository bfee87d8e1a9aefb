//! One chat's live feed in one replica, shared by every local subscriber of the chat through a
//! broadcast ring. The replica's dispatcher ([`super::dispatch`]) hands it the chat's events.
//!
//! The feed decodes each event once, renders its public JSON once, puts creations in number order
//! ([`Reorder`]) and broadcasts. The ring is the bounded buffer of every subscriber: one that falls
//! a whole ring behind is cut off (it resumes from its cursor) and never holds the others back.
//! The feed lives while it has subscribers: the last one to leave drops it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use chrono::{DateTime, Utc};
use confab_core::live::{Cursor, Reorder};
use confab_core::{Envelope, Event};
use tokio::sync::broadcast;

use super::{End, Error, HubInner};

/// One event as every subscriber of the chat receives it.
#[derive(Debug)]
pub struct Delivery {
    /// The event's sequence in the live stream.
    pub sequence: u64,
    /// The chat's previous event in the stream (what makes cursors exact, [`Cursor`]).
    pub prev: u64,
    /// `message.created`, `message.updated` or `message.deleted`.
    pub kind: &'static str,
    /// The message's public JSON.
    pub data: String,
    /// When the api published it (delivery latency is measured from here).
    pub published: DateTime<Utc>,
    /// The message number, for ordering.
    pub number: u64,
    pub created: bool,
}

impl Delivery {
    /// The delivery of a stream message, or `None` for one that is not a message event of the
    /// chat (it cannot be decoded; the persister dead-letters those).
    pub fn decode(sequence: u64, prev: u64, payload: &[u8]) -> Option<Self> {
        let envelope = Envelope::decode(payload).ok()?;
        let at = envelope.occurred_at;
        let (kind, number, data) = match &envelope.event {
            Event::MessageCreated(m) => (
                "message.created",
                m.number,
                serde_json::json!({"number": m.number, "body": m.body, "created_at": at, "updated_at": at}),
            ),
            Event::MessageUpdated(m) => (
                "message.updated",
                m.number,
                serde_json::json!({"number": m.number, "body": m.body, "updated_at": at}),
            ),
            Event::MessageDeleted(m) => (
                "message.deleted",
                m.number,
                serde_json::json!({"number": m.number, "deleted_at": at}),
            ),
            Event::ChatCreated(_) | Event::ChatDeleted(_) => return None,
        };
        Some(Self {
            sequence,
            prev,
            kind,
            data: data.to_string(),
            published: at,
            number,
            created: kind == "message.created",
        })
    }
}

/// What is shared with subscribers under one lock, so a new subscriber's snapshot of "what was
/// broadcast" and its place in the ring are taken at the same instant.
struct Shared {
    /// Everything broadcast so far (and, below the feed's start, everything stored before it).
    broadcast: Cursor,
    /// `None` once the feed has ended; subscribers then see the ring closed.
    tx: Option<broadcast::Sender<Arc<Delivery>>>,
    /// Why it ended.
    ended: Option<End>,
    /// The chat's last event so far (the next one's predecessor).
    prev: u64,
    reorder: Reorder<Arc<Delivery>>,
    /// Released by the reorder, not broadcast yet (reused between events).
    ready: Vec<Arc<Delivery>>,
}

pub struct Feed {
    pub key: (u64, u64),
    shared: Mutex<Shared>,
    hub: Weak<HubInner>,
}

/// A subscriber's view of the feed at the moment it joined.
pub struct Joined {
    pub rx: broadcast::Receiver<Arc<Delivery>>,
    /// What the feed had broadcast before `rx` was created.
    pub broadcast: Cursor,
}

impl Feed {
    /// A feed that is handed every event of the chat from stream sequence `start` on, and that
    /// has released its creations up to `released` when known.
    pub(super) fn new(
        hub: &Arc<HubInner>,
        key: (u64, u64),
        start: u64,
        released: Option<u64>,
    ) -> Arc<Self> {
        let mut reorder = Reorder::new(hub.config.reorder);
        if let Some(number) = released {
            reorder = reorder.after(number);
        }
        let (tx, _) = broadcast::channel(hub.config.buffer);
        hub.metrics.feeds.inc();
        Arc::new(Feed {
            key,
            shared: Mutex::new(Shared {
                broadcast: Cursor::at(start - 1),
                tx: Some(tx),
                ended: None,
                prev: start - 1,
                reorder,
                ready: Vec::new(),
            }),
            hub: Arc::downgrade(hub),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("the feed lock is never poisoned")
    }

    pub fn join(&self) -> Option<Joined> {
        let shared = self.lock();
        let tx = shared.tx.as_ref()?;
        Some(Joined {
            rx: tx.subscribe(),
            broadcast: shared.broadcast.clone(),
        })
    }

    pub fn is_live(&self) -> bool {
        self.lock().tx.is_some()
    }

    /// Takes the chat's event at `sequence`; returns when a hold ends, if one is pending.
    pub(super) fn take(&self, sequence: u64, payload: &[u8], now: Instant) -> Option<Instant> {
        let mut shared = self.lock();
        if let Some(delivery) = Delivery::decode(sequence, shared.prev, payload) {
            shared.prev = sequence;
            let (number, created) = (delivery.number, delivery.created);
            let Shared { reorder, ready, .. } = &mut *shared;
            reorder.push(number, created, Arc::new(delivery), now, ready);
            broadcast(&mut shared);
        }
        shared.reorder.next_deadline()
    }

    /// Releases the holds that ended by `now`; returns when the next one ends, if any.
    pub(super) fn expire(&self, now: Instant) -> Option<Instant> {
        let mut shared = self.lock();
        let Shared { reorder, ready, .. } = &mut *shared;
        reorder.expire(now, ready);
        broadcast(&mut shared);
        shared.reorder.next_deadline()
    }

    pub(super) fn end(&self, why: End) {
        let mut shared = self.lock();
        shared.tx.take();
        shared.ended.get_or_insert(why);
    }

    /// Why the feed ended, once it has.
    pub fn ended(&self) -> Option<End> {
        self.lock().ended
    }
}

fn broadcast(shared: &mut Shared) {
    let Shared {
        broadcast,
        tx,
        ready,
        ..
    } = shared;
    for delivery in ready.drain(..) {
        broadcast.receive(delivery.sequence, delivery.prev);
        if let Some(tx) = tx {
            // An error only means nobody listens right now.
            let _ = tx.send(delivery);
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.metrics.feeds.dec();
            hub.forget(self.key);
        }
    }
}

/// The highest number the chat's sequence has handed out (0: none yet), from which a new feed
/// releases creations; `None` when Redis cannot say (the key is missing after a Redis loss, or
/// Redis is away: the feed then holds its first creations for a reorder window). A creation
/// with a lower number may still be in flight: it arrives late, as after any reorder window.
pub(super) async fn last_created(hub: &HubInner, key: (u64, u64)) -> Option<u64> {
    use redis::AsyncCommands;
    let sequence = hub.keys.message_sequence(key.0, key.1);
    match hub.redis.clone().get::<_, Option<u64>>(sequence).await {
        Ok(number) => number,
        Err(error) => {
            tracing::debug!(%error, "looking up a chat's last number for its live feed");
            None
        }
    }
}

/// The live stream's first and last sequences now.
pub(super) async fn stream_state(
    hub: &HubInner,
) -> Result<async_nats::jetstream::stream::State, Error> {
    let mut stream = hub.js.live.clone();
    Ok(stream.info().await.map_err(Error::nats)?.state.clone())
}

/// An ordered (ephemeral, flow-controlled, self-healing) consumer of the live stream's events on
/// `filter` from `start` on, with how many of them the stream held when it was created.
pub(super) async fn consumer(
    hub: &HubInner,
    filter: String,
    start: u64,
) -> Result<(Ordered, u64), Error> {
    let js = &hub.js;
    let config = OrderedConfig {
        deliver_subject: js.client.new_inbox(),
        filter_subject: filter,
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        ..Default::default()
    };
    let consumer = js.live.create_consumer(config).await.map_err(Error::nats)?;
    let pending = consumer.cached_info().num_pending;
    Ok((consumer.messages().await.map_err(Error::nats)?, pending))
}
