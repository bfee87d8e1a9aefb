//! `/applications/{token}/chats`: creation numbers through Redis and publishes to JetStream,
//! with no MySQL write; reads come from MySQL.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use confab_core::event::{ChatCreated, Event};
use confab_core::sequence::PublishOutcome;
use confab_core::trace::TraceParent;
use confab_core::Envelope;

use crate::error::{ApiError, ErrorBody, Result};
use crate::extract::{self, JsonObject, Page, PageQuery};
use crate::repo;
use crate::state::AppState;
use crate::views::ChatView;

/// Numbers taken before giving up when every one collides (only after Redis lost data).
pub(crate) const MAX_NUMBER_ATTEMPTS: usize = 5;

#[utoipa::path(post, path = "/api/v1/applications/{token}/chats", tag = "chats",
    params(("token" = String, Path)),
    responses(
        (status = 201, body = ChatView), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceParent>,
    Path(token): Path<String>,
    _body: JsonObject,
) -> Result<(StatusCode, Json<ChatView>)> {
    let token = extract::token(&token)?;
    let app = state.application_id(&token).await?;
    let key = state.keys.chat_sequence(app);
    for _ in 0..MAX_NUMBER_ATTEMPTS {
        let number = state
            .numbering
            .next(&key, "chat", chat_seed(&state, app))
            .await?;
        let envelope = Envelope::new(Event::ChatCreated(ChatCreated {
            application_id: app,
            number,
        }));
        match state.publisher.publish(&envelope, &trace).await? {
            PublishOutcome::Stored | PublishOutcome::RetriedOwn => {
                state.mark_chat_in_flight(app, number).await?;
                let view = ChatView {
                    number,
                    messages_count: 0,
                    created_at: Some(envelope.occurred_at),
                    updated_at: Some(envelope.occurred_at),
                };
                return Ok((StatusCode::CREATED, Json(view)));
            }
            PublishOutcome::Collision => {
                tracing::warn!(number, "chat number already taken, taking another");
            }
        }
    }
    Err(ApiError::Unavailable(
        "chat numbering keeps colliding".into(),
    ))
}

/// The highest chat number known for an application: persisted or in flight.
async fn chat_seed(state: &AppState, app: u64) -> Result<u64> {
    let persisted = repo::max_chat_number(&state.db, app).await?;
    let subject = state.publisher.jetstream().subjects.chat_created(app);
    let in_flight = state.publisher.last_number_on(&subject).await?;
    Ok(confab_core::sequence::reseed_value(persisted, in_flight))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats", tag = "chats",
    params(("token" = String, Path), PageQuery),
    responses((status = 200, body = [ChatView]), (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    Path(token): Path<String>,
    page: Page,
) -> Result<Json<Vec<ChatView>>> {
    let app = state.application_id(&extract::token(&token)?).await?;
    let rows = repo::list_chats(&state.db, app, page.limit, page.offset).await?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{number}", tag = "chats",
    params(("token" = String, Path), ("number" = u64, Path)),
    responses((status = 200, body = ChatView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn show(
    State(state): State<AppState>,
    Path((token, number)): Path<(String, String)>,
) -> Result<Json<ChatView>> {
    let app = state.application_id(&extract::token(&token)?).await?;
    let number = extract::number(&number, "chat")?;
    let row = repo::chat(&state.db, app, number)
        .await?
        .ok_or(ApiError::NotFound("chat"))?;
    Ok(Json(row.into()))
}
