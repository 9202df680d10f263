//! The HTTP control API (JSON) and the read-only status page.
//!
//! Bearer-token auth when a token is configured; without one the server refuses to listen on
//! anything but loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::config::Secret;
use crate::machine::render::{render, Format};
use crate::machine::ControlOp;
use crate::store::status::{ApplyStatus, Inspect};
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

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into(), None)
}

/// Compares without an early exit, so response time does not leak the token's prefix.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
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
    if same_secret(presented.trim().as_bytes(), token.expose().as_bytes()) {
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
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/table", get(table))
        .route("/v1/applies", get(list).post(submit))
        .route("/v1/applies/{id}", get(one))
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

fn parse_id(raw: &str) -> Result<u64, ApiError> {
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

async fn control(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    let op = parse_control(&op).map_err(bad_request)?;
    let outcome = state.store.request(id, op).await?;
    state.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": id, "request": op.as_str(), "outcome": outcome })),
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(State(state): State<ApiState>, headers: HeaderMap) -> Result<Html<String>, ApiError> {
    authorize(&state, &headers)?;
    let applies = state.inspect.list(200).await?;
    let mut rows = String::new();
    for a in &applies {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&a.identifier),
            a.engine,
            escape(&a.target.to_string()),
            a.state,
            escape(a.lease_owner.as_deref().unwrap_or("—")),
            a.lease_epoch,
            a.heartbeat_age_ms.map_or("—".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            a.progress(),
            escape(&a.pending_requests.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", ")),
        ));
    }
    let diagram = escape(&render(Format::Mermaid));
    Ok(Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>applyd</title>\
<meta http-equiv=\"refresh\" content=\"5\">\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>\
</head><body><h1>applyd</h1><p>{} applies (newest first; refreshes every 5 s)</p>\
<table><tr><th>apply</th><th>engine</th><th>target</th><th>state</th><th>lease owner</th><th>epoch</th><th>heartbeat age</th><th>progress</th><th>pending requests</th></tr>\n{rows}</table>\
<h2>State diagram</h2><p>Generated from the transition table (Mermaid source).</p><pre>{diagram}</pre></body></html>",
        applies.len()
    )))
}
