//! `GET …/chats/{number}/events`: a chat's message events, live, as Server-Sent Events or, with
//! an upgrade, over WebSocket ([`crate::live`]).
//!
//! Both transports carry the same events: `ready` first (with the cursor to resume from if
//! nothing else arrives), then `message.created`, `message.updated` and `message.deleted`, each
//! with its id, and `end` when the server closes the stream (why, and whether to reconnect).
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
use crate::extract;
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
    let (tenant, chat) = chat_of(&state, &token, &chat, Use::Existing).await?;
    let transport = if upgrade.is_some() {
        "websocket"
    } else {
        "sse"
    };
    let opened = state
        .live
        .subscribe(
            &state,
            extract::token(&token)?,
            tenant,
            chat,
            since,
            transport,
        )
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

/// The subscription over a WebSocket: a text frame per event, pings as heartbeats, and a close
/// frame (with the reason) at the end. A client that does not take a frame within a heartbeat
/// interval is cut off.
async fn websocket(mut socket: WebSocket, mut subscription: Subscription) {
    let timeout = subscription.heartbeat();
    let cursor = subscription.ready_id();
    if send(&mut socket, Message::Text(ready(&cursor).into()), timeout)
        .await
        .is_err()
    {
        return;
    }
    loop {
        // The same `next` is polled across the client's frames: dropping it half-way (in a
        // token re-check or a lease renewal) would skip that check.
        let frame = {
            let mut next = std::pin::pin!(subscription.next());
            loop {
                tokio::select! {
                    frame = &mut next => break frame,
                    incoming = socket.recv() => match incoming {
                        // Pings are answered by the library; what the client says is not read.
                        Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                        Some(Ok(_)) => {}
                    },
                }
            }
        };
        let message = match frame {
            Next::Event(delivery, id) => Message::Text(
                format!(
                    r#"{{"type":"{}","id":"{id}","data":{}}}"#,
                    delivery.kind, delivery.data
                )
                .into(),
            ),
            Next::Heartbeat => Message::Ping(bytes::Bytes::from_static(b"confab")),
            Next::End(end) => {
                let cursor = subscription.cursor();
                let _ = send(
                    &mut socket,
                    Message::Text(ended(end, &cursor).into()),
                    timeout,
                )
                .await;
                let close = CloseFrame {
                    code: close_code(end),
                    reason: end.as_str().into(),
                };
                let _ = send(&mut socket, Message::Close(Some(close)), timeout).await;
                return;
            }
        };
        match send(&mut socket, message, timeout).await {
            Ok(()) => {}
            Err(Unsent::TimedOut) => {
                subscription.cut_off();
                return;
            }
            Err(Unsent::Closed) => return,
        }
    }
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

/// RFC 6455 close codes: 1012 "service restart", 1013 "try again later", 1008 "policy
/// violation", 1011 "internal error", 1000 "normal closure".
fn close_code(end: End) -> u16 {
    match end {
        End::ShuttingDown => 1012,
        End::TooSlow => 1013,
        End::Revoked => 1008,
        End::FeedLost => 1011,
        End::ChatDeleted => 1000,
    }
}
