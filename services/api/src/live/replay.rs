//! A resuming subscriber's replay: the chat's events after its cursor that the feed broadcast
//! before the subscriber joined, read from the stream with a consumer of its own.
//!
//! The replay reads from the cursor's contiguous prefix up to the last sequence the feed had
//! broadcast, keeps what the feed broadcast (what it still holds back arrives through the ring)
//! and what the cursor has not received, and puts it in delivery order
//! ([`confab_core::live::release_order`]: creations by number, otherwise the stream's order).
//! Afterwards the cursor also takes the feed's complete prefix, so the feed's next event follows
//! it. It is read whole before the
//! response starts, bounded by `CONFAB_LIVE_REPLAY_MAX` events (further behind: `410`, re-read
//! the list) and by the live stream's window, `CONFAB_LIVE_WINDOW_SECS` (events it no longer
//! holds: `410`). The live stream drops events by age only, oldest first across all chats, so a
//! cursor at or after its first sequence has lost nothing of its chat.

use std::collections::VecDeque;
use std::sync::Arc;

use confab_core::live::{release_order, Cursor, Released};
use futures::StreamExt;

use super::feed::{self, Delivery};
use super::{Error, HubInner};

/// Reads what `cursor` misses of what the feed had broadcast (`broadcast`), in delivery order,
/// each with its id (the cursor after it); `cursor` then counts it all as received.
pub(super) async fn replay(
    hub: &HubInner,
    key: (u64, u64),
    cursor: &mut Cursor,
    broadcast: &Cursor,
) -> Result<VecDeque<(Arc<Delivery>, String)>, Error> {
    let until = broadcast.last();
    if cursor.last() > until && cursor.last() > feed::stream_state(hub).await?.last_sequence {
        // Otherwise every live event would be taken for one already received.
        return Err(Error::Invalid(
            "the event id names events the stream has not stored",
        ));
    }
    let out = read(hub, key, cursor, broadcast).await?;
    // The subscriber now has everything the feed had broadcast when it joined (it had some of
    // it, the replay brought the rest), so the prefix the feed knows to be complete is the
    // subscriber's too: the feed's next event follows it. Without this, a cursor whose chat
    // had no events while the stream moved on would stay below the feed's first event forever.
    cursor.received_below(broadcast.upto().saturating_add(1));
    Ok(out)
}

/// The replay proper: the chat's events after `cursor` up to the last one the feed broadcast.
async fn read(
    hub: &HubInner,
    key: (u64, u64),
    cursor: &mut Cursor,
    broadcast: &Cursor,
) -> Result<VecDeque<(Arc<Delivery>, String)>, Error> {
    let until = broadcast.last();
    let from = cursor.upto().saturating_add(1);
    let mut out = VecDeque::new();
    if from > until {
        return Ok(out);
    }
    if from < feed::stream_state(hub).await?.first_sequence {
        return Err(Error::Gone(
            "this cursor is older than the live window; re-read the messages and subscribe \
             without a cursor",
        ));
    }
    let filter = hub.js.subjects.live_chat(key.0, key.1);
    let (mut messages, pending) = feed::consumer(hub, filter, from).await?;
    if pending == 0 {
        return Ok(out);
    }
    // Everything is read, then put in delivery order at once.
    let mut batch = Vec::new();
    let mut prev = cursor.upto();
    let limit = hub.config.replay_max;
    let mut read = 0;
    while let Some(message) = tokio::time::timeout(REPLAY_IDLE, messages.next())
        .await
        .map_err(|_| Error::Unavailable("the stream stopped answering during a replay".into()))?
    {
        let message = message.map_err(Error::nats)?;
        let info = message
            .info()
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        if sequence > until {
            break;
        }
        read += 1;
        if read > limit {
            return Err(Error::Gone(
                "this cursor is further behind than a replay reaches; re-read the messages and \
                 subscribe without a cursor",
            ));
        }
        if let Some(delivery) = Delivery::decode(sequence, prev, &message.payload) {
            prev = sequence;
            if broadcast.includes(sequence) {
                batch.push(Released {
                    arrival: sequence,
                    number: delivery.number,
                    created: delivery.created,
                    event: Arc::new(delivery),
                });
            }
        }
        if sequence == until || pending == 0 {
            break;
        }
    }
    for delivery in release_order(batch) {
        if cursor.receive(delivery.sequence, delivery.prev) {
            out.push_back((delivery, cursor.to_string()));
        }
    }
    Ok(out)
}

/// How long a replay waits for the stream's next event before giving up.
const REPLAY_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
