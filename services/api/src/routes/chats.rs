//! `/applications/{token}/chats`: creation numbers through Redis and publishes to JetStream,
//! deletion marks the chat in Redis and publishes, with no MySQL write; reads come from MySQL.

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use confab_core::client_token::Right;
use confab_core::event::{ChatCreated, ChatDeleted, Event};
use confab_core::Envelope;
use confab_runtime::trace::TraceContext;

use crate::allocate::Sequence;
use crate::error::{ApiError, ErrorBody, Result};
use crate::extract::{self, JsonObject, Page, PageQuery};
use crate::idempotency::IdempotencyKey;
use crate::numbering::Admission;
use crate::repo;
use crate::state::AppState;
use crate::views::ChatView;

#[utoipa::path(post, path = "/api/v1/applications/{token}/chats", tag = "chats",
    params(("token" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[ -~]{1,255}$", description = "Makes a retry safe: the same key \
         with the same body within 24 h answers what the first request answered; with another \
         body, 422 idempotency_key_reused.")),
    responses(
        (status = 201, body = ChatView), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody),
        (status = 409, description = "the application's chat limit is reached", body = ErrorBody),
        (status = 422, description = "the Idempotency-Key was used with another body", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Path(token): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<axum::response::Response> {
    let access = state.access(&token).await?;
    access.require_application()?;
    let tenant = access.tenant;
    let app = tenant.id;
    let sequence = Sequence {
        kind: "chat",
        key: state.keys.chat_sequence(app),
        subjects: state.publisher.jetstream().subjects.chats_created(app),
        persisted_max: || async { Ok(repo::max_chat_number(&state.db, app).await?) },
        admission: Admission {
            cap: tenant.quotas.chat_cap(),
            rate: None,
            gone: None,
            application_id: app,
        },
        trace: &trace,
        idempotency: IdempotencyKey::from_request(&headers, format_args!("chats {app}"), &body.0)?,
    };
    let published = state
        .publish_numbered(sequence, |number| {
            Event::ChatCreated(ChatCreated {
                application_id: app,
                number,
            })
        })
        .await?;
    let number = published.number;
    state.remember_chat(app, number);
    let view = ChatView {
        number,
        messages_count: 0,
        created_at: Some(published.envelope.occurred_at),
        updated_at: Some(published.envelope.occurred_at),
    };
    let mut response =
        axum::response::IntoResponse::into_response((StatusCode::CREATED, Json(view)));
    super::created_headers(
        &mut response,
        uri.path(),
        itoa::Buffer::new().format(number),
        published.replayed,
    );
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats", tag = "chats",
    params(("token" = String, Path), PageQuery),
    responses((status = 200, body = [ChatView], headers(("Link" = String, description = "RFC 8288 paging links: `first`, `prev` after the first page, `next` when there are more items"))), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    Path(token): Path<String>,
    page: Page,
) -> Result<axum::response::Response> {
    let access = state.access(&token).await?;
    access.require(Right::Read, None)?;
    let app = access.tenant.id;
    let (limit, offset) = (page.probe_limit(), page.offset);
    let rows = state
        .reads
        .read(app, |db| async move {
            repo::list_chats(&db, app, limit, offset).await
        })
        .await?;
    Ok(page.answer(rows.into_iter().map(ChatView::from).collect()))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{number}", tag = "chats",
    params(("token" = String, Path), ("number" = u64, Path)),
    responses((status = 200, body = ChatView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn show(
    State(state): State<AppState>,
    Path((token, number)): Path<(String, String)>,
) -> Result<Json<ChatView>> {
    let access = state.access(&token).await?;
    let number = extract::number(&number, "chat")?;
    access.require(Right::Read, Some(number))?;
    let app = access.tenant.id;
    // Deleted in any replica: 404 at once, before MySQL shows it.
    if state.deletion_mark(app, number, None).await?.is_some() {
        return Err(ApiError::NotFound("chat"));
    }
    let row = state
        .reads
        .read_one(app, |db| async move { repo::chat(&db, app, number).await })
        .await?
        .ok_or(ApiError::NotFound("chat"))?;
    Ok(Json(row.into()))
}

#[utoipa::path(delete, path = "/api/v1/applications/{token}/chats/{number}", tag = "chats",
    params(("token" = String, Path), ("number" = u64, Path)),
    responses(
        (status = 204, description = "deleted with its messages: from now on the chat is 404 and \
            takes no message in any api replica; it leaves the counts, MySQL and search as the \
            deletion is applied; its number is never reused"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "not deleted yet (the chat may already refuse new messages): \
            retry", body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Path((token, number)): Path<(String, String)>,
) -> Result<StatusCode> {
    let access = state.access(&token).await?;
    access.require_application()?;
    let app = access.tenant.id;
    let number = extract::number(&number, "chat")?;
    match state.deletion_mark(app, number, None).await? {
        // Deleted (published) already, through any replica.
        Some(true) => return Err(ApiError::NotFound("chat")),
        // Marked, perhaps not published (a 503): publish it again (deletions dedup).
        Some(false) => {}
        None => {
            if !state.chat_undeleted(app, number).await? {
                return Err(ApiError::NotFound("chat"));
            }
        }
    }
    // Marked first: no message is numbered in the chat once its deletion may be in the stream.
    state.mark_chat_deleted(app, number, false).await?;
    let envelope = Envelope::new(Event::ChatDeleted(ChatDeleted {
        application_id: app,
        number,
    }));
    // Deletions dedup on their chat: a repeated deletion is stored once.
    state.publisher.publish(&envelope, &trace).await?;
    state.mark_chat_deleted(app, number, true).await?;
    Ok(StatusCode::NO_CONTENT)
}
