//! `/applications`: written to MySQL synchronously (a rare operation).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;
use axum::Json;
use confab_core::Token;

use crate::error::{ApiError, ErrorBody, Result};
use crate::extract::{self, JsonObject, Page, PageQuery};
use crate::idempotency::{IdempotencyKey, Record};
use crate::repo;
use crate::state::AppState;
use crate::views::{ApplicationInput, ApplicationView};

#[utoipa::path(post, path = "/api/v1/applications", tag = "applications",
    request_body(content((ApplicationInput = "application/json"), (ApplicationInput = "application/x-www-form-urlencoded"))),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the \
        same key with the same body within 24 h answers what the first request answered (the same \
        application); with another body, 422 idempotency_key_reused.")),
    responses(
        (status = 201, body = ApplicationView),
        (status = 400, body = ErrorBody),
        (status = 403, description = "open creation is turned off (CONFAB_OPEN_APPLICATION_CREATION=false): applications come from the operator or the admin API", body = ErrorBody),
        (status = 429, description = "this client created too many applications; see `Retry-After`", body = ErrorBody),
        (status = 422, description = "a blank name, or the Idempotency-Key was used with another body",
            body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<(StatusCode, Json<ApplicationView>)> {
    if !state.tenancy.open_creation {
        return Err(ApiError::Forbidden(
            "creating applications here is turned off on this deployment; they are provisioned \
             through the operator (an Application resource) or the admin API",
        ));
    }
    let name = state.limits.name(body.string("application", "name")?)?;
    if let Some(params) = &state.tenancy.creation_rate {
        let client = client_of(&state, peer.as_ref().map(|p| p.0 .0), &headers);
        state
            .numbering
            .admit(
                &state.keys.creation_rate(&client),
                params,
                "application_creation",
            )
            .await?;
    }
    let external_key = match IdempotencyKey::from_request(&headers, "applications", &body.0)? {
        Some(key) => Some(application_key(&state, &key).await?),
        None => None,
    };
    let token = Token::generate();
    let row =
        repo::insert_application(&state.db, &name, token.expose(), external_key.as_deref()).await?;
    state
        .tokens
        .insert(row.token.clone(), state.tenant_of(&row));
    tracing::info!("application created");
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Who is creating an application, for the per-client limit: the first address of the
/// configured client-IP header (behind a proxy), else the peer address.
fn client_of(state: &AppState, peer: Option<SocketAddr>, headers: &HeaderMap) -> String {
    state
        .tenancy
        .client_ip_header
        .as_deref()
        .and_then(|name| headers.get(name))
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(|first| first.trim().to_owned())
        .filter(|first| !first.is_empty())
        .or_else(|| peer.map(|p| p.ip().to_string()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The key the application of an idempotent request is inserted under: the one an earlier
/// request with the same key recorded, or a new one recorded now.
async fn application_key(state: &AppState, key: &IdempotencyKey) -> Result<String> {
    for _ in 0..3 {
        if let Some((record, _)) = state.idempotency.lookup(key).await? {
            return record.application_key.ok_or(ApiError::IdempotencyMismatch);
        }
        let application_key = format!("idempotency:{}", uuid::Uuid::new_v4());
        let record = Record::for_application(key, application_key.clone());
        if state.idempotency.create(key, &record).await?.is_some() {
            return Ok(application_key);
        }
        // Another request with this key recorded first: use its record.
    }
    Err(ApiError::Unavailable(
        "idempotency record changed concurrently".to_owned(),
    ))
}

#[utoipa::path(get, path = "/api/v1/applications", tag = "applications",
    params(PageQuery),
    responses((status = 200, body = [ApplicationView], headers(("Link" = String, description = "RFC 8288 paging links: `first`, `prev` after the first page, `next` when there are more items"))), (status = 400, body = ErrorBody), (status = 403, description = "listing is turned off (CONFAB_LIST_APPLICATIONS=false)", body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(State(state): State<AppState>, page: Page) -> Result<axum::response::Response> {
    if !state.tenancy.list_applications {
        return Err(ApiError::Forbidden(
            "listing every application is turned off on this deployment \
             (CONFAB_LIST_APPLICATIONS=false)",
        ));
    }
    let rows = repo::list_applications(&state.db, page.probe_limit(), page.offset).await?;
    let list_tokens = state.list_tokens;
    Ok(page.answer(
        rows.into_iter()
            .map(|row| {
                let mut view = ApplicationView::from(row);
                if !list_tokens {
                    view.token = None;
                }
                view
            })
            .collect::<Vec<_>>(),
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

#[utoipa::path(method(patch, put), path = "/api/v1/applications/{token}", tag = "applications",
    params(("token" = String, Path)), request_body(content((ApplicationInput = "application/json"), (ApplicationInput = "application/x-www-form-urlencoded"))),
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
