//! Trace context across JetStream: the api continues the caller's W3C trace in its request span
//! and hands that span on in each event's `traceparent`; consumers make one `consume_event` span
//! per event as a child of it, and run each batch in an `apply_batch` span whose parent is the
//! first event's context and which links to every event's, so the MySQL or search write joins
//! the request's trace.
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
use confab_core::event::headers;
use confab_core::trace::TraceParent;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The OpenTelemetry view of a remote `traceparent`.
pub fn span_context(parent: &TraceParent) -> Option<SpanContext> {
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        TraceId::from_hex(&parent.trace_id).ok()?,
        SpanId::from_hex(&parent.span_id).ok()?,
        flags,
        true,
        TraceState::default(),
    ))
}

/// Makes `span` a child of the remote `parent` (if any) and returns the `traceparent` to hand
/// on: `span`'s own context when an OpenTelemetry layer records it, otherwise a child of
/// `parent` (or a new trace) with a fresh span id.
pub fn continue_trace(span: &Span, parent: Option<&TraceParent>) -> TraceParent {
    if let Some(remote) = parent.and_then(span_context) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() {
        TraceParent {
            trace_id: own.trace_id().to_string(),
            span_id: own.span_id().to_string(),
            sampled: own.is_sampled(),
        }
    } else {
        parent.map_or_else(TraceParent::generate, TraceParent::child)
    }
}

/// The `traceparent` an event carries, if valid.
pub fn event_parent(message: &jetstream::Message) -> Option<TraceParent> {
    let value = message.headers.as_ref()?.get(headers::TRACEPARENT)?;
    TraceParent::parse(value.as_str())
}

/// The PRODUCER span of one publish (a child of the current request span); the event's
/// `traceparent` is this span's context, so consumers' spans are its children.
pub fn publish_span(event_type: &str, subject: &str, message_id: &str) -> Span {
    // Named `publish <type>` without formatting a string on the request path.
    let name = match event_type {
        "chat.created" => "publish chat.created",
        "message.created" => "publish message.created",
        "message.updated" => "publish message.updated",
        _ => "publish",
    };
    tracing::info_span!(
        "publish",
        otel.name = name,
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %message_id,
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
    let mut first = true;
    for message in messages {
        let Some(parent) = event_parent(message) else {
            continue;
        };
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
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
        } else if let Some(remote) = span_context(&parent) {
            batch.add_link(remote);
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_layer_the_caller_trace_continues_with_a_new_span_id() {
        let parent = TraceParent::generate();
        let span = tracing::info_span!("x");
        let next = continue_trace(&span, Some(&parent));
        assert_eq!(next.trace_id, parent.trace_id);
        assert_ne!(next.span_id, parent.span_id);
        let fresh = continue_trace(&span, None);
        assert_ne!(fresh.trace_id, parent.trace_id);
    }

    #[test]
    fn a_traceparent_becomes_a_remote_span_context() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let context = span_context(&parent).unwrap();
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
