//! `GET /v1/webhooks`: how deliveries stand for each webhook endpoint (delivered, pending and
//! failing counts, the oldest undelivered event's age, the last error), for the dashboard and
//! the CLI.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::{authorize, ApiError, ApiState};
use crate::store::webhooks::EndpointHealth;

pub(super) async fn health(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<EndpointHealth>>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(state.inspect.webhook_health().await?))
}
