//! Handlers of the admin API.

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use confab_core::admin::{
    valid_key, valid_origin, AdminApplication, ApplicationSpec, RotateRequest, MAX_ALLOWED_ORIGINS,
};
use serde::de::DeserializeOwned;

use super::store::{self, AdminRow};
use crate::error::{ApiError, ErrorBody, Result};
use crate::state::AppState;

/// Default grace period of a rotated token.
pub const DEFAULT_GRACE_SECS: u64 = 3600;
/// Longest grace period accepted (30 days).
const MAX_GRACE_SECS: u64 = 30 * 24 * 3600;

/// A typed JSON body with Confab's error shape: malformed JSON is a 400, a body of the wrong
/// shape (missing or unknown fields, wrong types) a 422.
pub struct AdminJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for AdminJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(state.max_request_bytes))?;
        // No body, or JSON `null`, is an empty object: every admin body is optional or fails on
        // its missing fields with a clear 422.
        let trimmed = bytes.trim_ascii();
        let bytes: &[u8] = if trimmed.is_empty() || trimmed == b"null" {
            b"{}"
        } else {
            &bytes
        };
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|error| ApiError::MalformedJson(error.to_string()))?;
        // An object, not the fields as an array (which serde's derive would also take).
        if !value.is_object() {
            return Err(ApiError::Unprocessable(
                "the request body must be a JSON object".into(),
            ));
        }
        serde_json::from_value(value)
            .map(Self)
            .map_err(|error| ApiError::Unprocessable(error.to_string()))
    }
}

/// Allowed origins as stored: valid, at most [`MAX_ALLOWED_ORIGINS`], sorted, no repeats.
fn checked_origins(mut origins: Vec<String>) -> Result<Vec<String>> {
    if origins.len() > MAX_ALLOWED_ORIGINS {
        return Err(ApiError::Unprocessable(format!(
            "allowed_origins: at most {MAX_ALLOWED_ORIGINS} origins"
        )));
    }
    if let Some(bad) = origins.iter().find(|origin| !valid_origin(origin)) {
        return Err(ApiError::Unprocessable(format!(
            "allowed_origins: {bad:?} is not an origin (scheme://host[:port], lowercase, no path)"
        )));
    }
    origins.sort();
    origins.dedup();
    Ok(origins)
}

fn key(raw: &str) -> Result<&str> {
    if valid_key(raw) {
        Ok(raw)
    } else {
        Err(ApiError::InvalidParameter(
            "application key must be 1-128 characters of A-Z a-z 0-9 . _ : -".into(),
        ))
    }
}

impl AppState {
    fn admin_view(&self, row: AdminRow) -> AdminApplication {
        let requested = row.app.requested_quotas();
        AdminApplication {
            key: row.external_key.unwrap_or_default(),
            quotas: requested.resolve(&self.quota_defaults, self.hard_max_body_bytes),
            requested_quotas: requested,
            allowed_origins: row.app.allowed_origins(),
            name: row.app.name,
            token: row.app.token,
            chats_count: row.app.chats_count,
            rotation_id: row.rotation_id,
            previous_token_expires_at: row.previous_token_expires_at,
            created_at: row.app.created_at,
            updated_at: row.app.updated_at,
        }
    }
}

#[utoipa::path(get, path = "/admin/v1/applications/{key}", tag = "admin",
    params(("key" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "1 to 128 characters of A-Z a-z 0-9 . _ : - (400 otherwise)")), security(("admin_token" = [])),
    responses(
        (status = 200, body = AdminApplication), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn show(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<AdminApplication>> {
    let row = store::by_key(&state.db, key(&raw)?)
        .await?
        .ok_or(ApiError::NotFound("application"))?;
    Ok(Json(state.admin_view(row)))
}

#[utoipa::path(put, path = "/admin/v1/applications/{key}", tag = "admin",
    params(("key" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "1 to 128 characters of A-Z a-z 0-9 . _ : - (400 otherwise)")), request_body = ApplicationSpec, security(("admin_token" = [])),
    responses(
        (status = 200, description = "updated", body = AdminApplication),
        (status = 201, description = "created", body = AdminApplication),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn put(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    AdminJson(mut spec): AdminJson<ApplicationSpec>,
) -> Result<(StatusCode, Json<AdminApplication>)> {
    let key = key(&raw)?;
    spec.name = state.limits.name(Some(&spec.name))?;
    spec.quotas
        .validate(state.hard_max_body_bytes)
        .map_err(|error| ApiError::Unprocessable(error.to_string()))?;
    spec.allowed_origins = checked_origins(spec.allowed_origins)?;
    let (row, created) = store::upsert(&state.db, key, &spec).await?;
    state.tokens.invalidate(&row.app.token);
    state.forget_application(row.app.id);
    if created {
        state.settle_new_application(row.app.id).await;
    }
    tracing::info!(created, "application registered");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(state.admin_view(row))))
}

#[utoipa::path(post, path = "/admin/v1/applications/{key}/rotate", tag = "admin",
    params(("key" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "1 to 128 characters of A-Z a-z 0-9 . _ : - (400 otherwise)")), request_body(content = Option<RotateRequest>, description = "optional: without a body, a rotation with the default grace"), security(("admin_token" = [])),
    responses(
        (status = 200, body = AdminApplication), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn rotate(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    AdminJson(request): AdminJson<RotateRequest>,
) -> Result<Json<AdminApplication>> {
    let key = key(&raw)?;
    let grace = request.grace_seconds.unwrap_or(DEFAULT_GRACE_SECS);
    if grace > MAX_GRACE_SECS {
        return Err(ApiError::Unprocessable(format!(
            "`grace_seconds` must be at most {MAX_GRACE_SECS}"
        )));
    }
    if request
        .request_id
        .as_deref()
        .is_some_and(|id| !valid_key(id))
    {
        return Err(ApiError::Unprocessable(
            "`request_id` must be 1-128 characters of A-Z a-z 0-9 . _ : -".into(),
        ));
    }
    let revoke_now = grace == 0;
    let grace = chrono::Duration::seconds(i64::try_from(grace).unwrap_or(i64::MAX));
    let rotated = store::rotate(&state.db, key, request.request_id.as_deref(), grace)
        .await?
        .ok_or(ApiError::NotFound("application"))?;
    if let Some(old) = rotated.replaced.filter(|_| revoke_now) {
        // Other replicas drop it from their caches within CONFAB_TOKEN_CACHE_TTL_MS.
        state.tokens.invalidate(&old);
    }
    // Client tokens are signed with a key derived from the token: every rotation retires them
    // (here at once; in other replicas within CONFAB_TOKEN_CACHE_TTL_MS).
    state.forget_application(rotated.row.app.id);
    let row = rotated.row;
    tracing::info!("token rotated");
    Ok(Json(state.admin_view(row)))
}

#[utoipa::path(delete, path = "/admin/v1/applications/{key}", tag = "admin",
    params(("key" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "1 to 128 characters of A-Z a-z 0-9 . _ : - (400 otherwise)")), security(("admin_token" = [])),
    responses(
        (status = 204, description = "deleted: tokens revoked, chats and messages purged shortly"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete(State(state): State<AppState>, Path(raw): Path<String>) -> Result<StatusCode> {
    let deleted = store::delete(&state.db, key(&raw)?)
        .await?
        .ok_or(ApiError::NotFound("application"))?;
    state.tokens.invalidate(&deleted.app.token);
    state.forget_application(deleted.app.id);
    tracing::info!("application deleted");
    Ok(StatusCode::NO_CONTENT)
}
