//! Live-delivery clients for the tests and the live benchmark: Server-Sent Events over a
//! streaming HTTP response, and WebSocket, both yielding the same [`LiveEvent`]s.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// One event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// `ready`, `message.created`, `message.updated`, `message.deleted` or `end`.
    pub kind: String,
    /// The event's id (the cursor to resume after it); empty for `end` over SSE.
    pub id: String,
    /// The message's public JSON (for `ready` and `end`, the whole frame).
    pub data: Value,
}

impl LiveEvent {
    pub fn number(&self) -> u64 {
        self.data["number"].as_u64().unwrap_or(0)
    }
}

/// How a WebSocket closed, as its client saw it ([`LiveClient::closing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// The peer's close frame: its code and reason (1005 and none for a close frame without
    /// them); `None` when the connection ended, failed or went quiet without one (what a browser
    /// reports as 1006, `wasClean` false).
    pub frame: Option<(u16, String)>,
    /// How it went: after the close frame, `Ok` when the library saw the closing handshake
    /// complete and the connection end, with no error (a reset, a protocol error) and no frame
    /// after it; otherwise (and when no close frame came) what happened instead.
    pub then: Result<(), String>,
}

impl Closing {
    fn failed(what: String) -> Self {
        Self {
            frame: None,
            then: Err(what),
        }
    }
}

/// A frame, briefly (events can be large).
fn describe(message: &Message) -> String {
    let text = format!("{message:?}");
    match text.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Transport {
    Sse {
        body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
        buffer: String,
    },
    Ws(Box<WsStream>),
}

/// An open subscription.
pub struct LiveClient {
    transport: Transport,
    /// Heartbeats seen (SSE comments, WebSocket pings).
    pub heartbeats: u64,
}

/// The events path of a chat.
pub fn events_path(base: &str, token: &str, chat: u64) -> String {
    format!("{base}/api/v1/applications/{token}/chats/{chat}/events")
}

impl LiveClient {
    /// Opens an SSE stream; `Err` carries the status and JSON body of a refusal.
    pub async fn sse(
        base: &str,
        token: &str,
        chat: u64,
        last_event_id: Option<&str>,
    ) -> Result<Self, (u16, Value)> {
        let mut request = reqwest::Client::new()
            .get(events_path(base, token, chat))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request
            .send()
            .await
            .map_err(|e| (0, Value::String(e.to_string())))?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.json().await.unwrap_or(Value::Null);
            return Err((status, body));
        }
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "an SSE stream says so"
        );
        Ok(Self {
            transport: Transport::Sse {
                body: Box::pin(response.bytes_stream()),
                buffer: String::new(),
            },
            heartbeats: 0,
        })
    }

    /// Opens a WebSocket; `since` resumes. `Err` carries the refusal's status and body.
    pub async fn websocket(
        base: &str,
        token: &str,
        chat: u64,
        since: Option<&str>,
    ) -> Result<Self, (u16, Value)> {
        let mut url = events_path(base, token, chat).replacen("http://", "ws://", 1);
        if let Some(since) = since {
            url.push_str(&format!("?since={since}"));
        }
        match tokio_tungstenite::connect_async(url).await {
            Ok((socket, _)) => Ok(Self {
                transport: Transport::Ws(Box::new(socket)),
                heartbeats: 0,
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(other) => Err((0, Value::String(other.to_string()))),
        }
    }

    /// The next event within `timeout`; `None` when the stream ended or nothing came.
    pub async fn next(&mut self, timeout: Duration) -> Option<LiveEvent> {
        tokio::time::timeout(timeout, self.next_event())
            .await
            .ok()
            .flatten()
    }

    async fn next_event(&mut self) -> Option<LiveEvent> {
        loop {
            match &mut self.transport {
                Transport::Sse { body, buffer } => {
                    if let Some(end) = buffer.find("\n\n") {
                        let frame: String = buffer.drain(..end + 2).collect();
                        match parse_sse(&frame) {
                            Some(event) => return Some(event),
                            None => {
                                self.heartbeats += 1;
                                continue;
                            }
                        }
                    }
                    let chunk = body.next().await?.ok()?;
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                }
                Transport::Ws(socket) => match socket.next().await?.ok()? {
                    Message::Text(text) => {
                        let frame: Value = serde_json::from_str(&text).ok()?;
                        let kind = frame["type"].as_str().unwrap_or_default().to_owned();
                        let id = frame["id"].as_str().unwrap_or_default().to_owned();
                        let data = match kind.as_str() {
                            "ready" | "end" => frame,
                            _ => frame["data"].clone(),
                        };
                        return Some(LiveEvent { kind, id, data });
                    }
                    Message::Ping(_) => self.heartbeats += 1,
                    Message::Close(_) => return None,
                    _ => {}
                },
            }
        }
    }

    /// Closes a WebSocket politely (an SSE stream is closed by dropping it).
    pub async fn close(self) {
        if let Transport::Ws(mut socket) = self.transport {
            let _ = socket.send(Message::Close(None)).await;
        }
    }

    /// Starts a WebSocket's closing handshake with a close frame of `code` and `reason`, then
    /// reads the server's answer as [`LiveClient::closing`] does.
    pub async fn close_with(&mut self, code: u16, reason: &str, timeout: Duration) -> Closing {
        let Transport::Ws(socket) = &mut self.transport else {
            return Closing::failed("not a WebSocket".into());
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let sent = tokio::time::timeout(timeout, socket.send(Message::Close(Some(frame)))).await;
        match sent {
            Ok(Ok(())) => self.closing(timeout).await,
            Ok(Err(e)) => Closing::failed(format!("sending the close frame: {e}")),
            Err(_) => Closing::failed("sending the close frame timed out".into()),
        }
    }

    /// Reads a WebSocket to its end, each step within `timeout`: its close frame (pings and pongs
    /// are skipped; an event before it is reported instead), then, while the library answers it
    /// (or has already sent the client's), the end of the connection.
    pub async fn closing(&mut self, timeout: Duration) -> Closing {
        let Transport::Ws(socket) = &mut self.transport else {
            return Closing::failed("not a WebSocket".into());
        };
        let frame = loop {
            match tokio::time::timeout(timeout, socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    break frame.map_or((1005, String::new()), |frame| {
                        (u16::from(frame.code), frame.reason.as_str().to_owned())
                    })
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(other))) => {
                    return Closing::failed(format!("before the close frame: {}", describe(&other)))
                }
                Ok(Some(Err(e))) => return Closing::failed(format!("before the close frame: {e}")),
                Ok(None) => {
                    return Closing::failed("the connection ended without a close frame".into())
                }
                Err(_) => return Closing::failed("no close frame came".into()),
            }
        };
        let then = match tokio::time::timeout(timeout, socket.next()).await {
            Ok(None) => Ok(()),
            Ok(Some(Ok(other))) => Err(format!("after the close frame: {}", describe(&other))),
            Ok(Some(Err(e))) => Err(format!("after the close frame: {e}")),
            Err(_) => Err("the connection stayed open after the close frame".into()),
        };
        Closing {
            frame: Some(frame),
            then,
        }
    }
}

/// One SSE frame; `None` for a comment (a heartbeat).
fn parse_sse(frame: &str) -> Option<LiveEvent> {
    let (mut kind, mut id, mut data) = (String::from("message"), String::new(), String::new());
    let mut fields = 0;
    for line in frame.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => kind = value.to_owned(),
            "id" => id = value.to_owned(),
            "data" => data.push_str(value),
            _ => continue,
        }
        fields += 1;
    }
    (fields > 0).then(|| LiveEvent {
        kind,
        id,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
    })
}
