//! The HTTP control API (JSON); the dashboard's pages are in `crate::dashboard`.
//!
//! Bearer-token auth when a token is configured; without one the server refuses to listen on
//! anything but loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::config::Secret;
use crate::machine::render::{render, Format};
use crate::machine::ControlOp;
use crate::store::status::{ApplyStatus, Inspect};
use crate::store::timeline::TimelineEntry;
use crate::store::{NewApply, Store, StoreError};

mod webhooks;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub inspect: Arc<dyn Inspect>,
    pub token: Option<Secret>,
    /// Wakes this process's idle drivers when an apply is submitted.
    pub wake: Arc<Notify>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// An error with its HTTP status and a message for the caller, naming the field at fault
/// when one is.
pub struct ApiError(StatusCode, String, Option<&'static str>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.2 {
            Some(field) => serde_json::json!({ "error": self.1, "field": field }),
            None => serde_json::json!({ "error": self.1 }),
        };
        (self.0, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match &e {
            StoreError::RowGone(_) => StatusCode::NOT_FOUND,
            StoreError::ActiveApplyExists { .. } | StoreError::Refused(_) => StatusCode::CONFLICT,
            StoreError::Invalid { field, .. } => {
                return ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), Some(field))
            }
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::LeaseLost { .. } | StoreError::BadRow { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, e.to_string(), None)
    }
}

impl ApiError {
    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.into(), None)
    }

    pub fn unavailable(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, msg.into(), None)
    }

    pub fn unauthorized(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::UNAUTHORIZED, msg.into(), None)
    }

    /// What the caller is told.
    pub fn message(&self) -> String {
        self.1.clone()
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into(), None)
}

/// Compares without an early exit, so response time does not leak the token's prefix.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization: Bearer <token>)".into(),
                None,
            )
        })?;
    check_token(token, presented.trim())
}

/// The presented token against the configured one; the refusal is the API's.
pub(crate) fn check_token(token: &Secret, presented: &str) -> Result<(), ApiError> {
    if same_secret(presented.as_bytes(), token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "invalid bearer token".into(),
            None,
        ))
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(crate::dashboard::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/table", get(table))
        .route("/v1/applies", get(list).post(submit))
        .route("/v1/applies/{id}", get(one))
        .route("/v1/applies/{id}/timeline", get(timeline))
        .route("/v1/applies/{id}/{op}", post(control))
        .route("/v1/webhooks", get(webhooks::health))
        .with_state(state)
}

/// Bind and serve until `shutdown` resolves. Refuses a non-loopback address without a token.
pub async fn serve(
    state: ApiState,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if state.token.is_none() && !listen.ip().is_loopback() {
        anyhow::bail!("refusing to serve the API on {listen} without a token: set api.token (or APPLYD_API_TOKEN), or listen on 127.0.0.1");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    // Said on stdout whatever the log settings: people open it, scripts and tests read it.
    println!("applyd serve: API and dashboard on http://{bound}/");
    if state.token.is_none() {
        tracing::warn!(%bound, "API has no token configured: serving on loopback only");
    } else {
        tracing::info!(%bound, "API listening (bearer token required)");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

#[derive(Deserialize)]
struct TableQuery {
    format: Option<String>,
}

async fn table(Query(q): Query<TableQuery>) -> Result<String, ApiError> {
    let format: Format = q
        .format
        .as_deref()
        .unwrap_or("markdown")
        .parse()
        .map_err(bad_request)?;
    Ok(render(format))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ApplyStatus>>, ApiError> {
    authorize(&state, &headers)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(state.inspect.list(limit).await?))
}

pub(crate) fn parse_id(raw: &str) -> Result<u64, ApiError> {
    let digits = raw.strip_prefix("apply-").unwrap_or(raw);
    digits.parse().map_err(|_| {
        bad_request(format!(
            "{raw:?} is not an apply id (a number, or apply-<number>)"
        ))
    })
}

async fn one(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ApplyStatus>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(state.inspect.status(parse_id(&id)?).await?))
}

async fn submit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<NewApply>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers)?;
    same_site(&state, &headers)?;
    let Json(new) = body.map_err(|e| bad_request(format!("invalid apply: {}", e.body_text())))?;
    let done = state.store.submit_or_adopt(new).await?;
    let id = done.id;
    // The same change already live on the target: 200 with that apply, so a retried job is
    // harmless; nothing new was created.
    let status = if done.adopted {
        StatusCode::OK
    } else {
        state.wake.notify_one();
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(serde_json::json!({
            "id": id,
            "identifier": format!("apply-{id}"),
            "adopted": done.adopted,
        })),
    ))
}

/// Path names of the control operations (`skip-revert` and `skip_revert` both accepted).
pub fn parse_control(raw: &str) -> Result<ControlOp, String> {
    let op: ControlOp = raw
        .replace('-', "_")
        .parse()
        .map_err(|e: crate::machine::UnknownName| e.to_string())?;
    match op {
        ControlOp::Volume => Err(format!("{raw:?} is not a request applyd takes yet")),
        op => Ok(op),
    }
}

/// Whether a `Host` names this machine's loopback (`127.0.0.1:8080`, `[::1]`, `localhost`).
pub(crate) fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

/// What every request that changes something must show besides the token: that no other web
/// page made it. A browser adds neither an `Authorization` header nor a JSON content type to a
/// cross-site request without asking this server first (which it does not allow), and names a
/// cross-site request as such; without a token, only a loopback `Host` is served, so a page
/// that rebinds a name to 127.0.0.1 is refused too.
pub(crate) fn same_site(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = |msg: &str| Err(ApiError(StatusCode::FORBIDDEN, msg.into(), None));
    let header_is = |name: header::HeaderName, check: &dyn Fn(&str) -> bool| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(check)
    };
    if header_is(header::HeaderName::from_static("sec-fetch-site"), &|v| {
        v == "cross-site"
    }) {
        return forbidden("cross-site requests are refused");
    }
    if state.token.is_none() && !header_is(header::HOST, &loopback_host) {
        return forbidden(
            "without an API token only a loopback host (127.0.0.1, localhost) is served",
        );
    }
    let bearer = headers.contains_key(header::AUTHORIZATION);
    let json = header_is(header::CONTENT_TYPE, &|v| v.starts_with("application/json"));
    if !(bearer || json) {
        return forbidden(
            "a request must carry the bearer token or a JSON body (Content-Type: application/json)",
        );
    }
    Ok(())
}

async fn control(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers)?;
    same_site(&state, &headers)?;
    let id = parse_id(&id)?;
    let op = parse_control(&op).map_err(bad_request)?;
    // Who asked, as the client names itself (the dashboard says `dashboard`); kept for the
    // timeline, never trusted for anything else.
    let by = headers
        .get("x-applyd-actor")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("api");
    let outcome = state.store.request_by(id, op, by).await?;
    state.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": id, "request": op.as_str(), "outcome": outcome })),
    ))
}

async fn timeline(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<TimelineEntry>>, ApiError> {
    authorize(&state, &headers)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(state.inspect.timeline(parse_id(&id)?, limit).await?))
}
