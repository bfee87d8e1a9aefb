//! `/applications`: written to MySQL synchronously (a rare operation).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use confab_core::Token;

use crate::error::{ApiError, ErrorBody, Result};
use crate::extract::{self, JsonObject, Page, PageQuery};
use crate::repo;
use crate::state::AppState;
use crate::views::{ApplicationInput, ApplicationView};

#[utoipa::path(post, path = "/api/v1/applications", tag = "applications",
    request_body = ApplicationInput,
    responses(
        (status = 201, body = ApplicationView),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    body: JsonObject,
) -> Result<(StatusCode, Json<ApplicationView>)> {
    let name = state.limits.name(body.string("application", "name")?)?;
    let token = Token::generate();
    let row = repo::insert_application(&state.db, &name, token.expose()).await?;
    state
        .tokens
        .insert(row.token.clone(), state.tenant_of(&row));
    tracing::info!("application created");
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[utoipa::path(get, path = "/api/v1/applications", tag = "applications",
    params(PageQuery),
    responses((status = 200, body = [ApplicationView]), (status = 400, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(State(state): State<AppState>, page: Page) -> Result<Json<Vec<ApplicationView>>> {
    let rows = repo::list_applications(&state.db, page.limit, page.offset).await?;
    let list_tokens = state.list_tokens;
    Ok(Json(
        rows.into_iter()
            .map(|row| {
                let mut view = ApplicationView::from(row);
                if !list_tokens {
                    view.token = None;
                }
                view
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}", tag = "applications",
    params(("token" = String, Path)),
    responses((status = 200, body = ApplicationView), (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn show(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<ApplicationView>> {
    let token = extract::token(&token)?;
    let row = repo::application_by_token(&state.db, token.expose())
        .await?
        .ok_or(ApiError::NotFound("application"))?;
    Ok(Json(ApplicationView::presented(row, &token)))
}

#[utoipa::path(patch, path = "/api/v1/applications/{token}", tag = "applications",
    params(("token" = String, Path)), request_body = ApplicationInput,
    responses(
        (status = 200, body = ApplicationView), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn update(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: JsonObject,
) -> Result<Json<ApplicationView>> {
    let token = extract::token(&token)?;
    let id = state.application_id(&token).await?;
    let name = state.limits.name(body.string("application", "name")?)?;
    repo::rename_application(&state.db, id, &name).await?;
    let row = repo::application_by_token(&state.db, token.expose())
        .await?
        .ok_or(ApiError::NotFound("application"))?;
    Ok(Json(ApplicationView::presented(row, &token)))
}
