//! `GET …/chats/{number}/events`: a chat's message events, live, as Server-Sent Events or, with
//! an upgrade, over WebSocket ([`crate::live`]).
//!
//! Both transports carry the same events: `ready` first (with the cursor to resume from if
//! nothing else arrives), then `message.created`, `message.updated` and `message.deleted`, each
//! with its id, and `end` when the server closes the stream (why, and whether to reconnect),
//! over WebSocket followed by a close frame whose code says the same ([`close_code`]).
//! A client resumes with `Last-Event-ID` (what `EventSource` sends by itself) or `?since=`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use confab_core::live::Cursor;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::{ApiError, ErrorBody, Result};

use crate::live::{End, Next, Subscription};
use crate::routes::messages::{chat_of, Use};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Resume after this event id (`Last-Event-ID` wins when both are sent).
    since: Option<String>,
}

/// How soon a client should reconnect after a resumable end.
const RECONNECT: Duration = Duration::from_secs(1);

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{number}/events", tag = "messages",
    params(("token" = String, Path), ("number" = u64, Path),
        ("since" = Option<String>, Query, pattern = "^([0-9]{1,20}(\\.[0-9]{1,20}){0,64})?$", description = "Resume after this event id: a live-stream sequence, optionally followed by up to 64 larger ones (`1041` or `1041.1043`). Empty: from now."),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^([0-9]{1,20}(\\.[0-9]{1,20}){0,64})?$", description = "Resume after this event id (what EventSource sends when it reconnects); wins over `since`. Empty: from now.")),
    responses(
        (status = 200, content_type = "text/event-stream", description = "The chat's message events as Server-Sent Events: `ready`, then `message.created`, `message.updated`, `message.deleted` with their ids, and `end` when the server closes the stream. With `Connection: upgrade` and `Upgrade: websocket`, the same events as JSON text frames (`101`)."),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 410, body = ErrorBody, description = "The cursor is older than the live window (`CONFAB_LIVE_WINDOW_SECS`, one hour) or further behind than a replay reaches (`CONFAB_LIVE_REPLAY_MAX`); re-read the messages and subscribe without one."),
        (status = 429, body = ErrorBody, description = "The application has its limit of live subscriptions open."),
        (status = 503, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn events(
    State(state): State<AppState>,
    Path((token, chat)): Path<(String, String)>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
    upgrade: std::result::Result<
        WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response> {
    // Only a WebSocket upgrade is one: another (`h2c` from `curl --http2`) is plain SSE.
    let wants_websocket = headers
        .get(axum::http::header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("websocket"));
    let upgrade = match upgrade {
        Ok(upgrade) => Some(upgrade),
        Err(rejection) if wants_websocket => {
            return Err(ApiError::InvalidParameter(format!(
                "not a valid WebSocket upgrade: {rejection}"
            )))
        }
        Err(_) => None,
    };
    let since = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned())
        .or(query.since)
        // An empty id is no id (what a client that has seen nothing may send).
        .filter(|text| !text.trim().is_empty())
        .map(|text| {
            Cursor::parse(&text).map_err(|e| ApiError::InvalidParameter(format!("event id: {e}")))
        })
        .transpose()?;
    let (tenant, chat) = chat_of(
        &state,
        &token,
        &chat,
        Use::Existing,
        confab_core::client_token::Right::Subscribe,
    )
    .await?;
    let transport = if upgrade.is_some() {
        "websocket"
    } else {
        "sse"
    };
    let opened = state
        .live
        .subscribe(&state, token.clone(), tenant, chat, since, transport)
        .await;
    if let Err(crate::live::Error::Limit(_)) = &opened {
        state
            .metrics
            .quota_rejections
            .with_label_values(&["subscriptions"])
            .inc();
    }
    let subscription = opened?;
    Ok(match upgrade {
        // Clients send nothing but control frames: a small read buffer (the library's default is
        // 128 KiB per connection), and frames go out as they are made, bounded by the send
        // timeout rather than by a buffer.
        Some(upgrade) => upgrade
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(64 * 1024)
            .on_upgrade(|socket| websocket(socket, subscription))
            .into_response(),
        None => {
            let mut response = Sse::new(sse(subscription)).into_response();
            // Proxies that buffer responses (nginx, and so ingress-nginx) pass each event on at once.
            response.headers_mut().insert(
                "x-accel-buffering",
                axum::http::HeaderValue::from_static("no"),
            );
            response
        }
    })
}

fn ready(cursor: &str) -> String {
    serde_json::json!({ "type": "ready", "id": cursor }).to_string()
}

fn ended(end: End, cursor: &str) -> String {
    serde_json::json!({
        "type": "end",
        "reason": end.as_str(),
        "message": end.message(),
        "resumable": end.resumable(),
        "id": cursor,
    })
    .to_string()
}

/// Frames an SSE subscriber may have waiting for its client (boxed: the queue's slots are
/// allocated up front, and an idle subscriber should not pay for frames it does not hold).
const SSE_QUEUE: usize = 8;

/// The subscription as SSE frames; the stream ends after `end`. A task of its own writes them:
/// the server takes a frame from the body only when the socket can take it, so a client that
/// stops reading would otherwise stall its subscription unseen, with its lease renewed and its
/// share of the feed held for as long as the connection lasts.
fn sse(subscription: Subscription) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
    let (tx, rx) = mpsc::channel(SSE_QUEUE);
    tokio::spawn(pump(subscription, tx));
    futures::stream::unfold(rx, |mut rx| async move {
        let event: Box<Event> = rx.recv().await?;
        Some((Ok(*event), rx))
    })
}

/// Puts the subscription's frames in the body's queue. A client that takes none for a
/// heartbeat interval is cut off (`too_slow`): its subscription, lease and place in the feed go
/// at once, whatever the kernel still holds for it. A client that went away ends it too.
async fn pump(mut subscription: Subscription, tx: mpsc::Sender<Box<Event>>) {
    let timeout = subscription.heartbeat();
    let cursor = subscription.ready_id();
    let mut frame = Event::default()
        .id(cursor.clone())
        .event("ready")
        .retry(RECONNECT)
        .data(ready(&cursor));
    let mut last = false;
    loop {
        match tokio::time::timeout(timeout, tx.send(Box::new(frame))).await {
            Ok(Ok(())) if !last => {}
            // An end that cannot be sent was counted as what it was.
            Err(_) if !last => {
                subscription.cut_off();
                return;
            }
            _ => return,
        }
        let next = tokio::select! {
            next = subscription.next() => next,
            () = tx.closed() => return,
        };
        frame = match next {
            Next::Event(delivery, id) => Event::default()
                .id(id)
                .event(delivery.kind)
                .data(&delivery.data),
            Next::Heartbeat => Event::default().comment(""),
            Next::End(end) => {
                last = true;
                Event::default()
                    .event("end")
                    .data(ended(end, &subscription.cursor()))
            }
        };
    }
}

/// How long a server that sent its close frame waits for the client's (a client that reads
/// answers within a round trip; one that does not is not waited for longer).
const CLOSE_REPLY: Duration = Duration::from_secs(2);

/// What the WebSocket loop got: a frame to send, or the client's end.
enum Step {
    Frame(Next),
    /// The client sent a close frame: it is answered.
    ClientClosed,
    /// The connection failed or ended without a close frame.
    Gone,
}

/// The subscription over a WebSocket: a text frame per event, pings as heartbeats, and at the
/// end the `end` event then a close frame whose code says why ([`close_code`]), after which the
/// server waits (briefly) for the client's close frame before it closes the connection. A
/// client's own close frame is echoed (RFC 6455 §5.5.1). A client that does not take a frame
/// within a heartbeat interval, or falls behind the feed, is cut off (`too_slow`): its
/// subscription goes at once, and its connection is given one more interval to take what was
/// queued, the `end` and the close frame.
async fn websocket(mut socket: WebSocket, mut subscription: Subscription) {
    let timeout = subscription.heartbeat();
    let cursor = subscription.ready_id();
    if send(&mut socket, Message::Text(ready(&cursor).into()), timeout)
        .await
        .is_err()
    {
        return;
    }
    let (end, cut_off) = loop {
        // The same `next` is polled across the client's frames: dropping it half-way (in a
        // token re-check or a lease renewal) would skip that check.
        let step = {
            let mut next = std::pin::pin!(subscription.next());
            loop {
                tokio::select! {
                    frame = &mut next => break Step::Frame(frame),
                    incoming = socket.recv() => match incoming {
                        // Pings are answered by the library; what else the client says is not
                        // read.
                        Some(Ok(Message::Close(_))) => break Step::ClientClosed,
                        Some(Err(_)) | None => break Step::Gone,
                        Some(Ok(_)) => {}
                    },
                }
            }
        };
        let message = match step {
            Step::Frame(Next::Event(delivery, id)) => Message::Text(
                format!(
                    r#"{{"type":"{}","id":"{id}","data":{}}}"#,
                    delivery.kind, delivery.data
                )
                .into(),
            ),
            Step::Frame(Next::Heartbeat) => Message::Ping(bytes::Bytes::from_static(b"confab")),
            // A subscriber that fell behind the feed is as slow as one that takes no frame,
            // and as likely not to be reading: its subscription goes at once too.
            Step::Frame(Next::End(end)) => break (end, end == End::TooSlow),
            Step::ClientClosed => {
                drop(subscription);
                answer_close(&mut socket, timeout).await;
                return;
            }
            Step::Gone => return,
        };
        match send(&mut socket, message, timeout).await {
            Ok(()) => {}
            // The frame stays queued (the library holds what the socket did not take), so the
            // cursor after it is still the one to resume from once the end gets through.
            Err(Unsent::TimedOut) => {
                subscription.cut_off();
                break (End::TooSlow, true);
            }
            Err(Unsent::Closed) => return,
        }
    };
    let text = ended(end, &subscription.cursor());
    // A client that stopped reading may hold its connection for another interval: its
    // subscription, lease and place in the feed go now. Any other keeps its subscription until
    // its close is done, so that a shutdown waits for the end and close frames to go out.
    let held = if cut_off {
        drop(subscription);
        None
    } else {
        Some(subscription)
    };
    close(&mut socket, end, text, timeout).await;
    drop(held);
}

/// Ends a WebSocket from the server's side: the `end` event and the close frame, both within
/// `timeout` (for a client cut off as too slow, what it still had queued goes first), then the
/// client's close frame, read (with whatever it sent before it) for at most [`CLOSE_REPLY`].
/// Once it came the library reports the connection closed, and the socket is dropped: the
/// server closes TCP first (RFC 6455 §7.1.1).
async fn close(socket: &mut WebSocket, end: End, text: String, timeout: Duration) {
    let frame = CloseFrame {
        code: close_code(end),
        reason: end.as_str().into(),
    };
    let sent = tokio::time::timeout(timeout, async {
        match socket.send(Message::Text(text.into())).await {
            Ok(()) => socket.send(Message::Close(Some(frame))).await,
            Err(error) => Err(error),
        }
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(timeout.min(CLOSE_REPLY), async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// Answers a client's close frame. The library queued the answer as it read the client's: a
/// close frame with its code and reason (1002 for a code a peer may not send), which the next
/// flush writes, reporting the connection closed (a close frame of the server's own would be
/// refused as sent after closing, and dropping the socket unflushed is what left clients with
/// 1006). The socket is then dropped: the server closes TCP first (RFC 6455 §7.1.1).
async fn answer_close(socket: &mut WebSocket, timeout: Duration) {
    let flushed = <WebSocket as futures::SinkExt<Message>>::flush(socket);
    let _ = tokio::time::timeout(timeout.min(CLOSE_REPLY), flushed).await;
}

/// Why a WebSocket frame was not sent.
enum Unsent {
    /// The client did not take it within the timeout: too slow.
    TimedOut,
    /// The connection is gone.
    Closed,
}

async fn send(
    socket: &mut WebSocket,
    message: Message,
    timeout: Duration,
) -> std::result::Result<(), Unsent> {
    match tokio::time::timeout(timeout, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Unsent::Closed),
        Err(_) => Err(Unsent::TimedOut),
    }
}

/// The close frame's code for each end, as docs/api.md ("Live delivery") lists them: RFC 6455's
/// 1001 "going away" for a server shutting down, 1008 "policy violation" for a token that no
/// longer names the application and 1011 "internal error" for a feed that lost the stream; in
/// the range private to applications, 4001 for a subscriber too slow and 4004 for a deleted
/// chat. The close frame's reason is the `end` event's (`End::as_str`).
fn close_code(end: End) -> u16 {
    match end {
        End::ShuttingDown => 1001,
        End::Revoked => 1008,
        End::FeedLost => 1011,
        End::TooSlow => 4001,
        End::ChatDeleted => 4004,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_closes_with_its_own_code_and_a_reason_that_fits_a_close_frame() {
        let ends = [
            End::TooSlow,
            End::Revoked,
            End::ShuttingDown,
            End::FeedLost,
            End::ChatDeleted,
        ];
        let codes: Vec<u16> = ends.iter().map(|end| close_code(*end)).collect();
        assert_eq!(codes, [4001, 1008, 1001, 1011, 4004]);
        for end in ends {
            // A close frame's payload is at most 125 bytes, two of them the code.
            assert!(end.as_str().len() <= 123, "{end:?}");
        }
    }
}
