//! Trace context across JetStream: the api continues the caller's W3C trace in its request span
//! and hands that span on in each event's headers; consumers make one `consume_event` span
//! per event as a child of it, and run each batch in an `apply_batch` span whose parent is the
//! first event's context and which links to every event's, so the MySQL or search write joins
//! the request's trace.
//!
//! The W3C headers (`traceparent` and `tracestate`) are read and written by OpenTelemetry's
//! [`TraceContextPropagator`], over HTTP headers and NATS headers alike ([`HeaderExtractor`],
//! [`HeaderInjector`]), so a caller's `tracestate` travels with its trace into every event.
//!
//! Spans follow the OpenTelemetry messaging conventions: the api's publish span is of kind
//! PRODUCER (see [`publish_span`]), `consume_event` and `apply_batch` are of kind CONSUMER, and
//! all carry `messaging.system = "nats"`, `messaging.operation.type`, and where they apply
//! `messaging.destination.name` (the subject), `messaging.consumer.group.name` (the durable
//! consumer), `messaging.message.id` and `messaging.batch.message_count`.
//!
//! Without an OpenTelemetry layer (no `OTEL_EXPORTER_OTLP_ENDPOINT`) the same W3C context is
//! still generated, propagated and logged; only nothing is exported.

use async_nats::jetstream;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A W3C trace context: trace id, span id, sampled flag and `tracestate`.
pub type TraceContext = SpanContext;

/// Reads the W3C headers of an HTTP request or a NATS message ([`extract`]).
pub struct HeaderExtractor<'a, M>(pub &'a M);

/// Writes the W3C headers into an HTTP or NATS header map ([`inject`]).
pub struct HeaderInjector<'a, M>(pub &'a mut M);

impl Extractor for HeaderExtractor<'_, http::HeaderMap> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl Injector for HeaderInjector<'_, http::HeaderMap> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

impl Extractor for HeaderExtractor<'_, async_nats::HeaderMap> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(async_nats::HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

impl Injector for HeaderInjector<'_, async_nats::HeaderMap> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` is the same as none: leave the header out.
        if !value.is_empty() {
            self.0.insert(key, value);
        }
    }
}

/// The valid trace context in `carrier`'s `traceparent` (and `tracestate`), if any.
pub fn extract(carrier: &dyn Extractor) -> Option<TraceContext> {
    let context = TraceContextPropagator::new().extract(carrier);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Writes `trace` as `traceparent` (and `tracestate`, when it has entries) into `carrier`.
///
/// Written here rather than by [`TraceContextPropagator`] (whose output it equals, see the tests):
/// every published event carries one, and the propagator's `format!` of the ids was 3 % of the
/// api's instructions per request.
pub fn inject(trace: &TraceContext, carrier: &mut dyn Injector) {
    if !trace.is_valid() {
        return;
    }
    // `00-{trace id}-{span id}-{flags}`, the ids written in place: one allocation, the value.
    let mut parent = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let written = hex::encode_to_slice(trace.trace_id().to_bytes(), &mut parent[3..35])
        .and_then(|()| hex::encode_to_slice(trace.span_id().to_bytes(), &mut parent[36..52]));
    debug_assert!(written.is_ok(), "the ids fit their fixed places");
    if trace.is_sampled() {
        parent[54] = b'1';
    }
    let parent = String::from_utf8_lossy(&parent).into_owned();
    carrier.set(confab_core::event::headers::TRACEPARENT, parent);
    let state = trace.trace_state().header();
    if !state.is_empty() {
        carrier.set(confab_core::event::headers::TRACESTATE, state);
    }
}

/// Makes `span` a child of the remote `parent` (if any) and returns the context to hand on:
/// `span`'s own context when an OpenTelemetry layer records it, otherwise a child of `parent`
/// (or a new trace) with a fresh span id and the parent's `tracestate`.
pub fn continue_trace(span: &Span, parent: Option<&TraceContext>) -> TraceContext {
    if let Some(remote) = parent {
        let _ = span.set_parent(Context::new().with_remote_span_context(remote.clone()));
    }
    let own = span.context().span().span_context().clone();
    if own.is_valid() {
        own
    } else {
        child_of(parent)
    }
}

/// A new span id in `parent`'s trace (keeping its flags and `tracestate`), or a new sampled
/// trace.
fn child_of(parent: Option<&TraceContext>) -> TraceContext {
    let ids = RandomIdGenerator::default();
    match parent {
        Some(parent) => SpanContext::new(
            parent.trace_id(),
            ids.new_span_id(),
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        ),
        None => SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
    }
}

/// Whether spans are exported (an OpenTelemetry layer is installed): only then is a span's own
/// context worth making for each consumed event.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether an OpenTelemetry layer records spans ([`crate::telemetry::install`] sets it).
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn set_exporting() {
    EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The trace context an event carries, if valid.
pub fn event_parent(message: &jetstream::Message) -> Option<TraceContext> {
    extract(&HeaderExtractor(message.headers.as_ref()?))
}

/// The trace id of an event's trace context, for logs.
pub fn trace_id(message: &jetstream::Message) -> Option<String> {
    event_parent(message).map(|trace| trace.trace_id().to_string())
}

/// The PRODUCER span of one publish (a child of the current request span); the event's
/// `traceparent` is this span's context, so consumers' spans are its children.
///
/// Its `messaging.message.id` is the event's stream sequence (JetStream's own identifier of a
/// stored message, the same the consumers' spans record), recorded once the stream acknowledged
/// it.
pub fn publish_span(kind: confab_core::event::EventKind, subject: &str) -> Span {
    tracing::info_span!(
        "publish",
        otel.name = kind.publish_span_name(),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = tracing::field::Empty,
    )
}

/// The span a batch is applied in: its parent is the first event's trace, and it links to
/// every event's; each event also gets a short `consume_event` span in its own trace.
pub fn batch_span(service: &'static str, messages: &[jetstream::Message]) -> Span {
    let group = messages
        .first()
        .and_then(|m| m.info().ok().map(|i| i.consumer.to_owned()))
        .unwrap_or_default();
    let batch = tracing::info_span!(
        "apply_batch",
        service,
        size = messages.len(),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.consumer.group.name = %group,
        messaging.batch.message_count = messages.len(),
    );
    // Without an exporter the per-event spans and links are seen by no one; making them cost a
    // header parse and two spans per event.
    if !exporting() || batch.is_disabled() {
        return batch;
    }
    let mut first = true;
    for message in messages {
        let Some(parent) = event_parent(message) else {
            continue;
        };
        let id = message
            .info()
            .map(|i| i.stream_sequence)
            .unwrap_or_default();
        let event = tracing::info_span!(
            "consume_event",
            service,
            subject = %message.subject,
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %message.subject,
            messaging.consumer.group.name = %group,
            messaging.message.id = %id,
        );
        continue_trace(&event, Some(&parent));
        drop(event);
        if first {
            continue_trace(&batch, Some(&parent));
            first = false;
        } else {
            batch.add_link(parent);
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn http_headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn without_a_layer_the_caller_trace_continues_with_a_new_span_id() {
        let parent = child_of(None);
        let span = tracing::info_span!("x");
        let next = continue_trace(&span, Some(&parent));
        assert_eq!(next.trace_id(), parent.trace_id());
        assert_ne!(next.span_id(), parent.span_id());
        let fresh = continue_trace(&span, None);
        assert!(fresh.is_valid() && fresh.is_sampled());
        assert_ne!(fresh.trace_id(), parent.trace_id());
    }

    #[test]
    fn a_traceparent_becomes_a_remote_context_and_invalid_ones_are_ignored() {
        let trace = extract(&HeaderExtractor(&http_headers(&[(
            "traceparent",
            TRACEPARENT,
        )])))
        .unwrap();
        assert!(trace.is_remote() && trace.is_sampled());
        assert_eq!(
            trace.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let headers = http_headers(&[("traceparent", bad)]);
            assert_eq!(extract(&HeaderExtractor(&headers)), None, "{bad}");
        }
        assert_eq!(extract(&HeaderExtractor(&http::HeaderMap::new())), None);
    }

    #[test]
    fn inject_writes_what_the_w3c_propagator_writes() {
        let sampled = extract(&HeaderExtractor(&http_headers(&[
            ("traceparent", TRACEPARENT),
            ("tracestate", "vendor=opaque,other=1"),
        ])))
        .unwrap();
        let unsampled = SpanContext::new(
            sampled.trace_id(),
            sampled.span_id(),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        for trace in [
            sampled,
            unsampled,
            child_of(None),
            SpanContext::empty_context(),
        ] {
            let mut ours = http::HeaderMap::new();
            inject(&trace, &mut HeaderInjector(&mut ours));
            let mut theirs = http::HeaderMap::new();
            TraceContextPropagator::new().inject_context(
                &Context::new().with_remote_span_context(trace.clone()),
                &mut HeaderInjector(&mut theirs),
            );
            assert_eq!(ours, theirs, "{trace:?}");
        }
    }

    #[test]
    fn tracestate_travels_from_http_headers_through_a_child_into_nats_headers() {
        let incoming = http_headers(&[
            ("traceparent", TRACEPARENT),
            ("tracestate", "vendor=opaque,other=1"),
        ]);
        let parent = extract(&HeaderExtractor(&incoming)).unwrap();
        let child = continue_trace(&tracing::info_span!("x"), Some(&parent));
        let mut nats = async_nats::HeaderMap::new();
        inject(&child, &mut HeaderInjector(&mut nats));
        assert_eq!(
            nats.get("tracestate").map(async_nats::HeaderValue::as_str),
            Some("vendor=opaque,other=1")
        );
        let carried = extract(&HeaderExtractor(&nats)).unwrap();
        assert_eq!(carried.trace_id(), parent.trace_id());
        assert_eq!(carried.span_id(), child.span_id());
        assert_eq!(carried.trace_state(), parent.trace_state());

        // And back out over HTTP; without a tracestate no empty header is written.
        let mut outgoing = http::HeaderMap::new();
        inject(&child, &mut HeaderInjector(&mut outgoing));
        assert_eq!(outgoing["tracestate"], "vendor=opaque,other=1");
        let mut bare = async_nats::HeaderMap::new();
        inject(&child_of(None), &mut HeaderInjector(&mut bare));
        assert!(bare.get("traceparent").is_some());
        assert!(bare.get("tracestate").is_none());
    }
}
