//! `/applications/{token}/chats/{number}/messages`: creation, body updates and deletion are
//! published to JetStream (no MySQL write); reads come from MySQL.

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use confab_core::client_token::Right;
use confab_core::event::{Event, MessageDeleted, MessageWritten};
use confab_core::Envelope;
use confab_runtime::trace::TraceContext;

use crate::allocate::Sequence;
use crate::error::{ApiError, ErrorBody, Result};
use crate::extract::{self, JsonObject, Page, PageQuery};
use crate::idempotency::IdempotencyKey;
use crate::numbering::Admission;
use crate::repo;
use crate::state::{AppState, Tenant};

use crate::views::{MessageInput, MessageView};

/// What a request does with the chat its path names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Posts a message: the chat must exist (cached per replica); its deletion is enforced
    /// where the number is taken, atomically ([`crate::numbering::Admission::gone`]).
    Post,
    /// Reads, updates or deletes: the chat must exist and not be deleted, in any replica.
    Existing,
}

/// The application and chat a message path names, both checked to exist, and the token checked
/// to allow `right` on that chat.
pub async fn chat_of(
    state: &AppState,
    token: &str,
    chat: &str,
    to: Use,
    right: Right,
) -> Result<(Tenant, u64)> {
    let access = state.access(token).await?;
    let chat = extract::number(chat, "chat")?;
    access.require(right, Some(chat))?;
    let tenant = access.tenant;
    let exists = match to {
        Use::Post => state.chat_exists(tenant.id, chat).await?,
        // Boxed: the reads' check is large, and inline it would weigh on every post.
        Use::Existing => Box::pin(state.chat_live(tenant.id, chat)).await?,
    };
    if !exists {
        return Err(ApiError::NotFound("chat"));
    }
    Ok((tenant, chat))
}

/// A valid body within the server's limits and the application's body-size quota.
fn checked_body(state: &AppState, tenant: &Tenant, body: &JsonObject) -> Result<String> {
    let body = state.limits.body(body.string("message", "body")?)?;
    let max = tenant.quotas.max_body_bytes as usize;
    if body.len() > max {
        state
            .metrics
            .quota_rejections
            .with_label_values(&["body_size"])
            .inc();
        return Err(ApiError::PayloadTooLarge(max));
    }
    Ok(body)
}

#[utoipa::path(post, path = "/api/v1/applications/{token}/chats/{number}/messages", tag = "messages",
    params(("token" = String, Path), ("number" = u64, Path),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[ -~]{1,255}$", description = "Makes a retry safe: the same key \
         with the same body within 24 h answers what the first request answered (the same \
         number); with another body, 422 idempotency_key_reused.")),
    request_body(content((MessageInput = "application/json"), (MessageInput = "application/x-www-form-urlencoded"))),
    responses(
        (status = 201, body = MessageView, headers(
            ("RateLimit-Policy" = String, description = "when the application's rate is limited: `\"messages\";q=<burst>;w=<seconds to refill it>`"),
            ("RateLimit" = String, description = "when the application's rate is limited: `\"messages\";r=<requests left now>;t=<seconds until the whole burst is back>`"))),
        (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "a blank body, or the Idempotency-Key was used with another body",
            body = ErrorBody),
        (status = 429, description = "the application's message rate is exceeded; see `Retry-After`",
            body = ErrorBody, headers(
            ("Retry-After" = u64, description = "seconds to wait"),
            ("RateLimit-Policy" = String), ("RateLimit" = String, description = "`r=0`"))),
        (status = 503, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Path((token, chat)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    input: JsonObject,
) -> Result<axum::response::Response> {
    let (tenant, chat) = chat_of(&state, &token, &chat, Use::Post, Right::Post).await?;
    let app = tenant.id;
    let body = checked_body(&state, &tenant, &input)?;
    let sequence = Sequence {
        kind: "message",
        key: state.keys.message_sequence(app, chat),
        subjects: state
            .publisher
            .jetstream()
            .subjects
            .messages_created(app, chat),
        // Boxed: awaited only when re-seeding, it need not make every request's future larger.
        persisted_max: || Box::pin(state.persisted_message_max(app, chat)),
        admission: Admission {
            cap: 0,
            rate: tenant
                .quotas
                .rate()
                .map(|params| (state.keys.message_rate(app), params)),
            gone: Some(state.keys.chat_deleted(app, chat)),
            application_id: app,
        },
        trace: &trace,
        idempotency: IdempotencyKey::from_request(
            &headers,
            format_args!("messages {app} {chat}"),
            &input.0,
        )?,
    };
    let published = state
        .publish_numbered(sequence, |number| {
            Event::MessageCreated(MessageWritten {
                application_id: app,
                chat_number: chat,
                number,
                body: body.clone(),
            })
        })
        .await?;
    // A replay answers with the recorded body, which equals this one (same fingerprint).
    let view = MessageView {
        number: published.number,
        body,
        created_at: Some(published.envelope.occurred_at),
        updated_at: Some(published.envelope.occurred_at),
    };
    let mut response =
        axum::response::IntoResponse::into_response((StatusCode::CREATED, Json(view)));
    if let Some(rate) = &published.rate {
        crate::error::rate_limit_headers(response.headers_mut(), rate);
    }
    super::created_headers(
        &mut response,
        uri.path(),
        itoa::Buffer::new().format(published.number),
        published.replayed,
    );
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{number}/messages", tag = "messages",
    params(("token" = String, Path), ("number" = u64, Path), PageQuery),
    responses((status = 200, body = [MessageView], headers(("Link" = String, description = "RFC 8288 paging links: `first`, `prev` after the first page, `next` when there are more items"))), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    Path((token, chat)): Path<(String, String)>,
    page: Page,
) -> Result<axum::response::Response> {
    let (tenant, chat) = chat_of(&state, &token, &chat, Use::Existing, Right::Read).await?;
    let app = tenant.id;
    let (limit, offset) = (page.probe_limit(), page.offset);
    let rows = state
        .reads
        .read(app, |db| async move {
            repo::list_messages(&db, app, chat, limit, offset).await
        })
        .await?;
    Ok(page.answer(rows.into_iter().map(MessageView::from).collect()))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{number}/messages/{message_number}",
    tag = "messages",
    params(("token" = String, Path), ("number" = u64, Path), ("message_number" = u64, Path)),
    responses((status = 200, body = MessageView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn show(
    State(state): State<AppState>,
    Path((token, chat, number)): Path<(String, String, String)>,
) -> Result<Json<MessageView>> {
    let (tenant, chat) = chat_of(&state, &token, &chat, Use::Existing, Right::Read).await?;
    let app = tenant.id;
    let number = extract::number(&number, "message")?;
    // Deleted through any replica: 404 at once, before MySQL shows it.
    if state
        .deletion_mark(app, chat, Some(number))
        .await?
        .is_some()
    {
        return Err(ApiError::NotFound("message"));
    }
    let row = state
        .reads
        .read_one(app, |db| async move {
            repo::message(&db, app, chat, number).await
        })
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    Ok(Json(row.into()))
}

#[utoipa::path(method(patch, put), path = "/api/v1/applications/{token}/chats/{number}/messages/{message_number}",
    tag = "messages",
    params(("token" = String, Path), ("number" = u64, Path), ("message_number" = u64, Path)),
    request_body(content((MessageInput = "application/json"), (MessageInput = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, body = MessageView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn update(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Path((token, chat, number)): Path<(String, String, String)>,
    body: JsonObject,
) -> Result<Json<MessageView>> {
    let (tenant, chat) = chat_of(&state, &token, &chat, Use::Existing, Right::Edit).await?;
    let app = tenant.id;
    let number = extract::number(&number, "message")?;
    if !state.message_exists(app, chat, number).await? {
        return Err(ApiError::NotFound("message"));
    }
    let body = checked_body(&state, &tenant, &body)?;
    let envelope = Envelope::new(Event::MessageUpdated(MessageWritten {
        application_id: app,
        chat_number: chat,
        number,
        body: body.clone(),
    }));
    // Updates dedup on their own event id, so a collision cannot happen here.
    state.publisher.publish(&envelope, &trace).await?;
    Ok(Json(MessageView {
        number,
        body,
        created_at: None,
        updated_at: Some(envelope.occurred_at),
    }))
}

#[utoipa::path(delete, path = "/api/v1/applications/{token}/chats/{number}/messages/{message_number}",
    tag = "messages",
    params(("token" = String, Path), ("number" = u64, Path), ("message_number" = u64, Path)),
    responses(
        (status = 204, description = "deleted: the message is 404 from now on in this api and \
            removed from MySQL's reads, the counts and search as the deletion is applied; its \
            number is never reused"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Path((token, chat, number)): Path<(String, String, String)>,
) -> Result<StatusCode> {
    let (tenant, chat) = chat_of(&state, &token, &chat, Use::Existing, Right::Delete).await?;
    let app = tenant.id;
    let number = extract::number(&number, "message")?;
    match state.deletion_mark(app, chat, Some(number)).await? {
        // Deleted (published) already, through any replica.
        Some(true) => return Err(ApiError::NotFound("message")),
        // Marked, perhaps not published (a 503): publish it again (deletions dedup).
        Some(false) => {}
        None => {
            if !state.message_exists(app, chat, number).await? {
                return Err(ApiError::NotFound("message"));
            }
        }
    }
    // Marked first: every replica answers 404 from the moment the deletion may be in the stream.
    state.mark_message_deleted(app, chat, number, false).await?;
    let envelope = Envelope::new(Event::MessageDeleted(MessageDeleted {
        application_id: app,
        chat_number: chat,
        number,
    }));
    // Deletions dedup on their message: a repeated deletion is stored once.
    state.publisher.publish(&envelope, &trace).await?;
    state.mark_message_deleted(app, chat, number, true).await?;
    Ok(StatusCode::NO_CONTENT)
}
