//! The dashboard served by `applyd serve`: the applies list (filtered, with counts per state),
//! one page per apply (its explanation from the rules, operations and tasks with progress bars,
//! the timeline from the audit log, the state diagram drawn from the transition table) and its
//! actions, kept live by server-sent events. Assets are embedded in the binary; nothing is
//! fetched from elsewhere.
//!
//! Signing in: with an API token configured, the page asks for it once. The browser keeps it for
//! the session only — as an HttpOnly session cookie holding when it was signed in and an HMAC of
//! that time keyed by the token (what lets pages and event streams load, for 12 hours, until the
//! token changes), and in the tab's session storage for the action buttons, which send it as the
//! API's bearer token like any other client (so a cookie alone never changes anything).

pub mod diagram;
pub mod views;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use futures_util::Stream;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::api::{parse_id, same_secret, ApiError, ApiState};
use views::Filter;

/// How often an open page looks for changes.
const LIVE_INTERVAL: Duration = Duration::from_secs(2);
/// The applies the list reads (newest first).
const LIST_LIMIT: usize = 200;
/// Open pages followed at once: each reads the store every interval, from the pool the
/// drivers and their heartbeats use, so their number is bounded.
const MAX_LIVE_PAGES: usize = 16;
/// The timeline entries an apply page shows.
const TIMELINE_LIMIT: usize = 200;
const SESSION_COOKIE: &str = "applyd_session";

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(list))
        .route("/applies/{id}", get(apply))
        .route("/events/applies", get(list_events))
        .route("/events/applies/{id}", get(apply_events))
        .route("/login", get(login_form).post(login))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
}

/// How long a sign-in lasts.
const SESSION_SECS: u64 = 12 * 60 * 60;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn session_mac(token: &str, issued: u64) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(token.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(format!("applyd dashboard session\0{issued}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The session cookie's value for a sign-in at `issued` (Unix seconds): the time and its HMAC
/// keyed by the token, so the cookie never holds the token, expires, and dies with the token.
fn session_value(token: &str, issued: u64) -> String {
    format!("{issued}.{}", session_mac(token, issued))
}

/// Whether `value` is a session signed in with `token` less than `SESSION_SECS` before `now`.
fn session_valid(token: &str, value: &str, now: u64) -> bool {
    let Some((issued, mac)) = value.split_once('.') else {
        return false;
    };
    let Ok(issued) = issued.parse::<u64>() else {
        return false;
    };
    // A minute of clock skew between processes behind one address is tolerated.
    let fresh = issued <= now.saturating_add(60) && now.saturating_sub(issued) < SESSION_SECS;
    fresh && same_secret(mac.as_bytes(), session_mac(token, issued).as_bytes())
}

/// Signed in: no token is configured, or the request carries the bearer token or the session
/// cookie made from it.
fn signed_in(state: &ApiState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        // Without a token only loopback is served: a page that rebinds its name to
        // 127.0.0.1 reads nothing.
        return headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .is_some_and(crate::api::loopback_host);
    };
    if crate::api::authorize(state, headers).is_ok() {
        return true;
    }
    let now = unix_now();
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == SESSION_COOKIE && session_valid(token.expose(), value, now))
}

fn render(t: &impl Template) -> Result<String, ApiError> {
    t.render()
        .map_err(|e| ApiError::internal(format!("the page could not be rendered: {e}")))
}

async fn list_rows(
    state: &ApiState,
    filter: &Filter,
) -> Result<(Vec<crate::store::status::ApplyStatus>, String), ApiError> {
    let all = state.inspect.list(LIST_LIMIT).await?;
    let rows = all
        .iter()
        .filter(|a| filter.keeps(a))
        .map(views::row)
        .collect();
    let html = render(&views::ListRows { rows })?;
    Ok((all, html))
}

async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Result<Response, ApiError> {
    if !signed_in(&state, &headers) {
        return Ok(Redirect::to("/login").into_response());
    }
    let (all, rows_html) = list_rows(&state, &filter).await?;
    // Shown, not required: a page of applies loads even when this read fails.
    let webhooks = match state.inspect.webhook_health().await {
        Ok(health) => health.iter().map(views::endpoint).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "webhook deliveries not read for the dashboard");
            Vec::new()
        }
    };
    Ok(Html(render(&views::list_page(
        &all, &filter, rows_html, webhooks,
    ))?)
    .into_response())
}

async fn apply_live_html(state: &ApiState, id: u64) -> Result<(String, String), ApiError> {
    let status = state.inspect.status(id).await?;
    let timeline = state.inspect.timeline(id, TIMELINE_LIMIT).await?;
    let svg = diagram::cached_svg(status.engine, &views::visited(&timeline), status.state)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "state diagram not drawn");
            String::new()
        });
    let html = render(&views::apply_live(&status, &timeline, svg))?;
    Ok((status.identifier, html))
}

async fn apply(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    if !signed_in(&state, &headers) {
        return Ok(Redirect::to("/login").into_response());
    }
    let id = parse_id(&raw)?;
    let (identifier, live_html) = apply_live_html(&state, id).await?;
    let page = views::ApplyPage {
        identifier,
        live_html,
        live_url: format!("/events/applies/{id}"),
    };
    Ok(Html(render(&page)?).into_response())
}

/// An event stream that renders `make` every interval and sends it when it changed.
/// The stream holds one of [`MAX_LIVE_PAGES`] permits until the page goes away (the stream is
/// dropped); `None` when every permit is taken.
fn live<F, Fut>(make: F) -> Option<Sse<impl Stream<Item = Result<Event, Infallible>>>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<String, ApiError>> + Send,
{
    static PAGES: OnceLock<Arc<Semaphore>> = OnceLock::new();
    let permit = PAGES
        .get_or_init(|| Arc::new(Semaphore::new(MAX_LIVE_PAGES)))
        .clone()
        .try_acquire_owned()
        .ok()?;
    let start = (make, None::<String>, permit);
    let stream = futures_util::stream::unfold(start, |(make, last, permit)| async move {
        loop {
            tokio::time::sleep(LIVE_INTERVAL).await;
            match make().await {
                Ok(html) if last.as_deref() == Some(html.as_str()) => continue,
                Ok(html) => {
                    let event = Event::default().event("update").data(html.clone());
                    return Some((Ok(event), (make, Some(html), permit)));
                }
                // Said on the page; the stream goes on (the database may come back).
                Err(e) => {
                    let event = Event::default().event("problem").data(e.message());
                    return Some((Ok(event), (make, last, permit)));
                }
            }
        }
    });
    Some(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(5))))
}

fn too_many_pages() -> ApiError {
    ApiError::unavailable(format!(
        "{MAX_LIVE_PAGES} pages are followed live already; reload later"
    ))
}

async fn list_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Result<Response, ApiError> {
    if !signed_in(&state, &headers) {
        return Err(ApiError::unauthorized("sign in first"));
    }
    let stream = live(move || {
        let state = state.clone();
        let filter = filter.clone();
        async move { Ok(list_rows(&state, &filter).await?.1) }
    })
    .ok_or_else(too_many_pages)?;
    Ok(stream.into_response())
}

async fn apply_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    if !signed_in(&state, &headers) {
        return Err(ApiError::unauthorized("sign in first"));
    }
    let id = parse_id(&raw)?;
    // A missing apply is said once, as a 404, not streamed forever.
    state.inspect.status(id).await.map_err(ApiError::from)?;
    let stream = live(move || {
        let state = state.clone();
        async move { Ok(apply_live_html(&state, id).await?.1) }
    })
    .ok_or_else(too_many_pages)?;
    Ok(stream.into_response())
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_form() -> Result<Html<String>, ApiError> {
    Ok(Html(render(&views::LoginPage { refusal: None })?))
}

async fn login(
    State(state): State<ApiState>,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let Some(token) = &state.token else {
        return Ok(Redirect::to("/").into_response());
    };
    if let Err(refusal) = crate::api::check_token(token, form.token.trim()) {
        let page = render(&views::LoginPage {
            refusal: Some(refusal.message()),
        })?;
        return Ok((StatusCode::UNAUTHORIZED, Html(page)).into_response());
    }
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECS}",
        session_value(token.expose(), unix_now())
    );
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lasts_twelve_hours_and_only_for_its_token() {
        let now = 1_800_000_000;
        let fresh = session_value("t0ken", now - 60);
        assert!(session_valid("t0ken", &fresh, now));
        assert!(!fresh.contains("t0ken"));
        assert!(
            !session_valid("other", &fresh, now),
            "a changed token ends it"
        );
        let old = session_value("t0ken", now - SESSION_SECS);
        assert!(!session_valid("t0ken", &old, now), "expired");
        let ahead = session_value("t0ken", now + 3_600);
        assert!(!session_valid("t0ken", &ahead, now), "issued in the future");
        // A later time under the old MAC is a forgery.
        let (_, mac) = fresh.split_once('.').unwrap();
        assert!(!session_valid("t0ken", &format!("{now}.{mac}"), now));
        for junk in ["", ".", "x.y", "1800000000", "-1.ab"] {
            assert!(!session_valid("t0ken", junk, now), "{junk:?}");
        }
    }
}
