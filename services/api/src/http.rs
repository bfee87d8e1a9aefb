//! Per-request observation: route-template metrics, one structured log line, the request
//! timeout, and the W3C trace context the handlers pass on into events.
//!
//! Only the route template (`/applications/{token}/chats`) is ever recorded: the concrete path
//! carries the token, which must never reach logs or metric labels.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use confab_core::event::headers;
use confab_core::trace::TraceParent;
use confab_runtime::metrics;
use tracing::Instrument;

use crate::error::ApiError;

pub async fn observe(
    State(timeout): State<Duration>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = matched
        .as_ref()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().as_str().to_owned();
    let parent = req
        .headers()
        .get(headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let span = tracing::info_span!(
        "http_request",
        %route,
        %method,
        trace_id = tracing::field::Empty
    );
    // The request span continues the caller's trace; events carry this span as their parent.
    let trace = confab_runtime::trace::continue_trace(&span, parent.as_ref());
    span.record("trace_id", trace.trace_id.as_str());
    req.extensions_mut().insert(trace);
    let response = match tokio::time::timeout(timeout, next.run(req).instrument(span.clone())).await
    {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    };
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::HTTP_REQUESTS
        .with_label_values(&[&route, &method, metrics::status_class(status)])
        .inc();
    metrics::HTTP_DURATION
        .with_label_values(&[&route, &method])
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
