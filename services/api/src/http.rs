//! Per-request observation: route-template metrics, one structured log line, the request
//! timeout, and the W3C trace context the handlers pass on into events; and the net under all
//! handlers: a panic becomes a `500 internal` answer and a count in `confab_http_panics_total`,
//! instead of a dropped connection.
//!
//! Only the route template (`/applications/{token}/chats`) is ever recorded: the concrete path
//! carries the token, which must never reach logs or metric labels.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use confab_runtime::metrics::status_class;
use confab_runtime::trace::{continue_trace, extract, HeaderExtractor};
use futures::FutureExt;
use tower::util::MapResponse;
use tower::Layer;
use tower_http::compression::predicate::{And, NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{Compression, CompressionBody, CompressionLayer};
use tracing::Instrument;

use crate::error::{ApiError, Internal};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Wraps every route of `router` in [`observe`]: the panic net, the request timeout with its JSON
/// answer, and the metrics, log line and trace context, so a panicking or timed-out request is
/// still timed, logged and counted as a 5xx. With `cors` (the api's state), the CORS check
/// ([`crate::cors`]) runs inside all that, before the handler.
///
/// One middleware rather than a layer for each: axum boxes a route once per layer and clones and
/// polls every box for every request (four layers were seven boxed clones per request; CORS as
/// a layer of its own cost a message post 2,500 instructions of 103,500: `scripts/dev
/// callgrind`).
pub fn layers(
    router: Router,
    request_timeout: Duration,
    metrics: Metrics,
    cors: Option<AppState>,
) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        // Shared: axum clones a route's layers and their state for every request, and the
        // metrics are a few dozen reference-counted handles.
        Arc::new(Observed {
            metrics,
            request_timeout,
            cors,
        }),
        observe,
    ))
}

/// What wraps the whole tenant service rather than each of its routes: the request body limit
/// and the answers' compression need no matched route, and a layer of the [`Router`] is a boxed
/// service per route that every request clones, polls and drops (wrapping them once took a
/// message post from 105,142 to 103,539 instructions: `scripts/dev callgrind`).
pub type Outer<S> = MapResponse<
    Compression<<DefaultBodyLimit as Layer<S>>::Service, CompressWhen>,
    fn(axum::http::Response<CompressionBody<axum::body::Body>>) -> Response,
>;

type CompressWhen = And<SizeAbove, NotForContentType>;

/// Wraps `service` (the router, in [`layers`]) in [`Outer`]'s two layers:
/// - request bodies over `max_request_bytes` are refused by the extractors (`413`);
/// - with `compress`, gzip for answers over 1 KiB when the client accepts it (lists, search);
///   never for event streams, whose events must leave as they are written. Small answers, as a
///   created message is, go out as they are. Without `compress`, nothing is compressed.
pub fn outer<S>(service: S, max_request_bytes: usize, compress: bool) -> Outer<S> {
    let limited = DefaultBodyLimit::max(max_request_bytes).layer(service);
    let compressed = CompressionLayer::new()
        .gzip(compress)
        .compress_when(SizeAbove::new(COMPRESS_ABOVE).and(NotForContentType::SSE))
        .layer(limited);
    // axum serves answers with its own body type.
    MapResponse::new(compressed, |response| response.map(axum::body::Body::new))
}

/// `ETag` on `GET` answers of JSON (one item, a list), and `304 Not Modified` when the client's
/// `If-None-Match` names it: a weak tag over the body (and the `Link` header, which a list's
/// page depends on), so a client polling an unchanged list gets no body. Event streams and
/// WebSocket upgrades pass untouched.
/// Done inside [`observe`] rather than as a layer of its own (see [`layers`]).
async fn etag(response: Response, if_none_match: Option<HeaderValue>) -> Response {
    use axum::http::header::{CONTENT_TYPE, ETAG, LINK};
    use axum::http::StatusCode;
    use sha2::{Digest, Sha256};
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if response.status() != StatusCode::OK || !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::Internal(Internal::Other("reading an answer's body".into()))
            .into_response();
    };
    let mut hash = Sha256::new().chain_update(&bytes);
    if let Some(link) = parts.headers.get(LINK) {
        hash.update(link.as_bytes());
    }
    let digest = hash.finalize();
    let tag = format!("W/\"{}\"", hex::encode(&digest[..12]));
    let tag = HeaderValue::from_str(&tag).expect("hex is a valid header value");
    let matches = if_none_match.is_some_and(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|candidate| candidate == "*" || weak_eq(candidate, tag.to_str().unwrap_or("")))
        })
    });
    parts.headers.insert(ETAG, tag);
    if matches {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(CONTENT_TYPE);
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// RFC 9110's weak comparison: equal once any `W/` is dropped.
fn weak_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches("W/") == b.trim_start_matches("W/")
}

/// Answers at most this long go out uncompressed.
const COMPRESS_ABOVE: u16 = 1024;

/// The request's id: the client's `X-Request-Id` when it sent a sensible one (1 to 128 visible
/// ASCII characters), else a new one. Echoed on the answer and logged with the request.
fn request_id(req: &Request) -> HeaderValue {
    req.headers()
        .get(REQUEST_ID)
        .filter(|value| {
            let bytes = value.as_bytes();
            !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic)
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string())
                .expect("hex is a valid header value")
        })
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What [`observe`] needs besides the request.
struct Observed {
    metrics: Metrics,
    request_timeout: Duration,
    cors: Option<AppState>,
}

/// The answer to a panicked handler: the standard `500 internal` body; the panic message goes to
/// the log only.
fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    ApiError::Internal(Internal::Other(format!("handler panicked: {message}"))).into_response()
}

/// Runs the request in its span (which continues the caller's trace) under the timeout and the
/// panic net, then counts and times it by route template and logs one line.
async fn observe(
    State(observed): State<Arc<Observed>>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let method = method.as_str();
    let parent = extract(&HeaderExtractor(req.headers()));
    let request_id = request_id(&req);
    let span = tracing::info_span!(
        "http_request",
        %route,
        %method,
        request_id = request_id.to_str().unwrap_or_default(),
        trace_id = tracing::field::Empty
    );
    // The request span continues the caller's trace; events carry this span as their parent.
    let trace = continue_trace(&span, parent.as_ref());
    span.record("trace_id", tracing::field::display(trace.trace_id()));
    req.extensions_mut().insert(trace);
    // Only a GET's answer is tagged ([`etag`]); what it needs of the request is read now.
    let if_none_match = (req.method() == axum::http::Method::GET).then(|| {
        req.headers()
            .get(axum::http::header::IF_NONE_MATCH)
            .cloned()
    });
    let handled = AssertUnwindSafe(async {
        match &observed.cors {
            Some(state) => crate::cors::cors(state, req, next).await,
            None => next.run(req).await,
        }
    })
    .catch_unwind();
    let metrics = &observed.metrics;
    let mut response = match tokio::time::timeout(observed.request_timeout, handled)
        .instrument(span.clone())
        .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(panic)) => {
            metrics.http_panics.inc();
            span.in_scope(|| panicked(panic))
        }
        Err(_) => ApiError::Timeout.into_response(),
    };
    if let Some(if_none_match) = if_none_match {
        response = etag(response, if_none_match).await;
    }
    response.headers_mut().insert(REQUEST_ID, request_id);
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics
        .http_requests
        .with_label_values(&[route, method, status_class(status)])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[route, method])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status,
            latency_us = elapsed.as_micros() as u64,
            "request served"
        );
    });
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    use super::*;

    async fn boom() -> &'static str {
        panic!("boom")
    }

    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_secs(30)).await;
        "too late"
    }

    async fn body_of(response: Response) -> Value {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn a_request_past_the_timeout_answers_the_json_timeout_error() {
        let router = layers(
            Router::new()
                .route("/slow", get(slow))
                .route("/fast", get(|| async { "ok" })),
            Duration::from_millis(50),
            Metrics::register(&confab_runtime::metrics::registry()),
            None,
        );
        let started = Instant::now();
        let response = router
            .clone()
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let expected = ApiError::Timeout.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(
            response.headers()["content-type"],
            expected.headers()["content-type"]
        );
        let body = body_of(response).await;
        assert_eq!(body, body_of(expected).await);
        assert_eq!(body["error"]["code"], "timeout");

        let response = router
            .oneshot(Request::get("/fast").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_internal_and_is_counted() {
        let registry = confab_runtime::metrics::registry();
        let metrics = Metrics::register(&registry);
        let router = layers(
            Router::new().route("/boom", get(boom)),
            Duration::from_secs(5),
            metrics.clone(),
            None,
        );
        assert!(confab_runtime::metrics::render(&registry).contains("confab_http_panics_total 0"));
        let response = router
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 500);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"error": {"code": "internal", "message": "internal error"}})
        );
        assert_eq!(metrics.http_panics.get(), 1);
        assert!(confab_runtime::metrics::render(&registry).contains("confab_http_panics_total 1"));
    }
}

#[cfg(test)]
mod compression_tests {
    #![allow(clippy::unwrap_used)]

    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn large_answers_are_gzipped_when_asked_small_ones_and_unasked_ones_are_not() {
        let big = || async { axum::Json(vec!["a fairly long string"; 200]) };
        let service = |compress: bool| {
            let router = layers(
                Router::new()
                    .route("/big", get(big))
                    .route("/small", get(|| async { axum::Json("small") })),
                Duration::from_secs(5),
                Metrics::register(&confab_runtime::metrics::registry()),
                None,
            );
            outer(router, 1024, compress)
        };
        let (on, off) = (service(true), service(false));
        let request = |path: &str, gzip: bool| {
            let mut request = Request::get(path);
            if gzip {
                request = request.header("accept-encoding", "gzip");
            }
            request.body(Body::empty()).unwrap()
        };
        let encoding = |response: &axum::http::Response<_>| {
            response.headers().get("content-encoding").cloned()
        };
        let get = |path: &str, gzip: bool| on.clone().oneshot(request(path, gzip));
        assert_eq!(encoding(&get("/big", true).await.unwrap()).unwrap(), "gzip");
        assert_eq!(encoding(&get("/big", false).await.unwrap()), None);
        assert_eq!(encoding(&get("/small", true).await.unwrap()), None);
        let unzipped = off.oneshot(request("/big", true)).await.unwrap();
        assert_eq!(encoding(&unzipped), None);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_whichever_route_reads_it() {
        let echo = |body: axum::body::Bytes| async move { body.len().to_string() };
        let service = outer(
            Router::new().route("/echo", axum::routing::post(echo)),
            16,
            true,
        );
        let post = |bytes: usize| {
            service.clone().oneshot(
                Request::post("/echo")
                    .body(Body::from(vec![b'x'; bytes]))
                    .unwrap(),
            )
        };
        assert_eq!(post(16).await.unwrap().status(), StatusCode::OK);
        assert_eq!(
            post(17).await.unwrap().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
