//! The replica's one reader of the live stream: a single ordered JetStream consumer of every
//! chat's message events, handing each to the feed of its chat when this replica has one, and
//! dropping it unread (only its subject is looked at) when not.
//!
//! One consumer per replica, not one per chat: nats-server wakes every consumer of a stream for
//! each message stored, so 500 chat consumers cost the server about ten times more per message
//! than the whole rest of the pipeline (measured; docs/benchmarks.md, *Live delivery*). Routing
//! by subject here costs a hash lookup per event.
//!
//! A feed added while the dispatcher runs starts at the sequence after the last one dispatched
//! (both under the router's lock), so it sees every later event of its chat and its subscribers
//! replay what came before from the stream. The dispatcher also ends the feeds of deleted chats
//! (it looks at their Redis deletion marks once per heartbeat, one pipelined round trip), and all
//! feeds when the stream is lost for good.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Instant;

use async_nats::jetstream::consumer::push::Ordered;
use futures::StreamExt;

use super::feed::{self, Feed};
use super::{End, Error, HubInner};

/// The feeds of this replica and where the dispatcher is in the stream.
#[derive(Default)]
pub(super) struct Router {
    pub feeds: HashMap<(u64, u64), Weak<Feed>>,
    /// The last stream sequence dispatched; a new feed starts after it.
    pub position: u64,
    /// Feeds holding creations back, to release when their hold ends.
    holding: HashSet<(u64, u64)>,
    pub running: bool,
    /// Counts the dispatcher's starts: a deletion watcher of an earlier run stops.
    generation: u64,
}

/// Consecutive consumer errors after which the dispatcher gives up (its feeds end, and their
/// subscribers resume, which starts it again).
const MAX_CONSECUTIVE_ERRORS: u32 = 5;

/// Starts the dispatcher from the end of the stream.
pub(super) async fn start(hub: &Arc<HubInner>) -> Result<(), Error> {
    let last = feed::stream_state(hub).await?.last_sequence;
    let (messages, _) = feed::consumer(hub, hub.js.subjects.all_live(), last + 1).await?;
    let generation = {
        let mut router = hub.router();
        router.position = last;
        router.running = true;
        router.generation += 1;
        router.generation
    };
    tokio::spawn(run(Arc::downgrade(hub), messages));
    tokio::spawn(watch_deletions(Arc::downgrade(hub), generation));
    Ok(())
}

async fn run(hub: Weak<HubInner>, mut messages: Ordered) {
    let mut errors = 0;
    let mut next_hold: Option<Instant> = None;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(message)) => {
                    errors = 0;
                    let Some(hub) = hub.upgrade() else { return };
                    let Ok(info) = message.info() else { continue };
                    let sequence = info.stream_sequence;
                    let key = hub.js.subjects.chat_of_live(&message.subject);
                    let feed = {
                        let mut router = hub.router();
                        router.position = sequence;
                        key.and_then(|key| router.feeds.get(&key)?.upgrade())
                    };
                    // Outside the router's lock: dropping the last reference to a feed takes it.
                    if let Some(feed) = feed {
                        if let Some(until) = feed.take(sequence, &message.payload, Instant::now()) {
                            hub.router().holding.insert(feed.key);
                            next_hold = Some(next_hold.map_or(until, |n| n.min(until)));
                        }
                    }
                }
                Some(Err(error)) => {
                    errors += 1;
                    tracing::warn!(%error, errors, "live dispatcher consumer error");
                    if errors >= MAX_CONSECUTIVE_ERRORS {
                        break;
                    }
                }
                None => break,
            },
            () = sleep_until(next_hold), if next_hold.is_some() => {
                let Some(hub) = hub.upgrade() else { return };
                next_hold = release_holds(&hub);
            }
        }
    }
    if let Some(hub) = hub.upgrade() {
        let feeds: Vec<Arc<Feed>> = {
            let mut router = hub.router();
            router.running = false;
            router.feeds.values().filter_map(Weak::upgrade).collect()
        };
        for feed in feeds {
            feed.end(End::FeedLost);
        }
    }
}

/// Releases the holds that ended; returns when the next one ends.
fn release_holds(hub: &HubInner) -> Option<Instant> {
    let holding: Vec<Arc<Feed>> = {
        let mut router = hub.router();
        let keys: Vec<_> = router.holding.drain().collect();
        keys.iter()
            .filter_map(|key| router.feeds.get(key)?.upgrade())
            .collect()
    };
    let now = Instant::now();
    let mut next = None;
    for feed in holding {
        if let Some(until) = feed.expire(now) {
            hub.router().holding.insert(feed.key);
            next = Some(next.map_or(until, |n: Instant| n.min(until)));
        }
    }
    next
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Ends the feeds of deleted chats: a chat's deletion is an event on the chat's subject, not a
/// message event, so the dispatcher looks at the chats' deletion marks instead.
async fn watch_deletions(hub: Weak<HubInner>, generation: u64) {
    let Some(every) = hub.upgrade().map(|hub| hub.config.heartbeat) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let feeds: Vec<Arc<Feed>> = {
            let router = hub.router();
            if !router.running || router.generation != generation {
                return;
            }
            router.feeds.values().filter_map(Weak::upgrade).collect()
        };
        if feeds.is_empty() {
            continue;
        }
        let looks = feeds
            .iter()
            .map(|feed| {
                let key = hub.keys.chat_deleted(feed.key.0, feed.key.1);
                let mut exists = redis::cmd("EXISTS");
                exists.arg(&key);
                (key, exists)
            })
            .collect();
        let marked: Vec<bool> = match hub.redis.query_grouped(looks).await {
            Ok(marked) => marked,
            // Redis being away is not a deletion; the next look decides.
            Err(error) => {
                tracing::warn!(%error, "looking for deleted chats of live feeds");
                continue;
            }
        };
        for (feed, deleted) in feeds.iter().zip(marked) {
            if deleted {
                feed.end(End::ChatDeleted);
            }
        }
    }
}
