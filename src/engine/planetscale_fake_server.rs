//! A fake PlanetScale API server (`applyd fake-planetscale`): the fake PlanetScale state machine
//! of [`super::fake`], driven by the wall clock, served over the same HTTP paths the real
//! client uses, with optional fault injection (5xx before the effect, latency, and lost replies:
//! the effect is applied and the reply is a 5xx).
//!
//! Everything under `/_fake/` is FAKE-ONLY administration (inspect, delete or fail deploy
//! requests, change the faults); the real API has nothing like it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::fake::{FakeDeployRequest, FakePlanetScale, FakeTimings};
use super::planetscale_states::DeployState;
use crate::machine::apply::{ApplyRecord, ApplySpec, Target};
use crate::machine::apply::{ApplySnapshot, ResumeState};
use crate::machine::observe::{EngineFault, Observation};
use crate::machine::{ApplyOptions, ApplyState, EngineCall, EngineKind};

/// Fault injection, changeable at run time through `POST /_fake/faults`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Share of API requests answered 503 before anything happens.
    pub fail_rate: f64,
    /// Share of API requests whose effect is applied and whose reply is then lost (502).
    pub lose_rate: f64,
    /// Delay before every API reply.
    pub latency_ms: u64,
}

#[derive(Debug, Clone)]
pub struct FakeServerOptions {
    pub faults: Faults,
    pub seed: u64,
    pub timings: FakeTimings,
    /// When set, requests must carry `Authorization: <id>:<token>`.
    pub token: Option<(String, String)>,
}

impl Default for FakeServerOptions {
    fn default() -> Self {
        FakeServerOptions {
            faults: Faults::default(),
            seed: 1,
            timings: FakeTimings::default(),
            token: None,
        }
    }
}

struct Inner {
    ps: FakePlanetScale,
    closed: BTreeSet<u64>,
    faults: Faults,
    rng: u64,
    injected_failures: u64,
    lost_replies: u64,
    served: u64,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    started: Instant,
    token: Option<String>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// splitmix64: a tiny seeded generator; the faults need no more.
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn err(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "code": code, "message": message.into() })),
    )
        .into_response()
}

fn dr_json(dr: &FakeDeployRequest, closed: bool) -> Value {
    json!({
        "id": format!("dr-{}", dr.id),
        "number": dr.id,
        "branch": dr.branch,
        "into_branch": "main",
        "approved": true,
        "state": if closed { "closed" } else { "open" },
        "deployment_state": dr.state.as_str(),
        "html_url": format!("https://fake.invalid/deploy-requests/{}", dr.id),
        "notes": "",
    })
}

/// A record for the fake state machine, which is keyed by apply; the branch carries the
/// identifier (`applyd-<identifier>`).
fn record_for(branch: &str, request: Option<u64>) -> ApplyRecord {
    let identifier = branch.strip_prefix("applyd-").unwrap_or(branch).to_string();
    ApplyRecord {
        row: ApplySnapshot {
            id: 0,
            engine: EngineKind::PlanetScale,
            state: ApplyState::Running,
            epoch: 0,
            attempt: 0,
            options: ApplyOptions::default(),
            resume: ResumeState {
                branch: true,
                deploy_request_intent: true,
                deploy_request_id: request,
            },
        },
        spec: Arc::new(ApplySpec {
            identifier,
            target: Target {
                database: "fake".into(),
                environment: "fake".into(),
            },
            ddl: vec![],
        }),
    }
}

/// Runs an API handler under the fault rules: latency, then maybe a 503 before the effect,
/// then the effect, then maybe a lost reply.
async fn guarded(
    s: &Shared,
    headers: &HeaderMap,
    f: impl FnOnce(&mut Inner, u64) -> Response,
) -> Response {
    let latency = s.inner.lock().await.faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(want) = &s.token {
        let got = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if got != want {
            // Echoes what it got on purpose: the client must never surface it.
            return err(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("invalid service token {got:?}"),
            );
        }
    }
    let now = s.now();
    let mut g = s.inner.lock().await;
    g.served += 1;
    let fail_rate = g.faults.fail_rate;
    if fail_rate > 0.0 && next_unit(&mut g.rng) < fail_rate {
        g.injected_failures += 1;
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "injected failure",
        );
    }
    let resp = f(&mut g, now);
    let lose_rate = g.faults.lose_rate;
    if lose_rate > 0.0 && next_unit(&mut g.rng) < lose_rate {
        g.lost_replies += 1;
        return err(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "injected lost reply",
        );
    }
    resp
}

async fn get_org(State(s): State<Shared>, headers: HeaderMap, Path(org): Path<String>) -> Response {
    guarded(&s, &headers, |_, _| {
        Json(json!({ "id": "org-1", "name": org })).into_response()
    })
    .await
}

async fn get_db(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, db)): Path<(String, String)>,
) -> Response {
    guarded(&s, &headers, |_, _| {
        Json(json!({ "id": "db-1", "name": db, "kind": "mysql", "state": "ready" })).into_response()
    })
    .await
}

async fn get_branch(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, branch)): Path<(String, String, String)>,
) -> Response {
    guarded(&s, &headers, |g, now| {
        if branch == "main" {
            return Json(json!({ "name": "main", "ready": true, "state": "ready", "production": true, "safe_migrations": true })).into_response();
        }
        match g.ps.branches.get(&branch) {
            None => err(StatusCode::NOT_FOUND, "not_found", "Not Found"),
            Some(b) => {
                let ready = now >= b.ready_at;
                Json(json!({
                    "name": branch,
                    "ready": ready,
                    "state": if ready { "ready" } else { "pending" },
                    "parent_branch": "main",
                }))
                .into_response()
            }
        }
    })
    .await
}

#[derive(Deserialize)]
struct NewBranch {
    name: String,
    #[serde(default)]
    parent_branch: Option<String>,
}

async fn create_branch(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let body: NewBranch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                format!("a JSON body with name and parent_branch is required: {e}"),
            )
        }
    };
    guarded(&s, &headers, |g, now| {
        if body.parent_branch.as_deref().unwrap_or("main") != "main" {
            return err(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", "Parent branch not found");
        }
        if g.ps.branches.contains_key(&body.name) || body.name == "main" {
            return err(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", "Name has already been taken");
        }
        g.ps.call(now, &record_for(&body.name, None), 0, EngineCall::CreateBranch);
        (
            StatusCode::CREATED,
            Json(json!({ "name": body.name, "ready": false, "state": "pending", "parent_branch": "main" })),
        )
            .into_response()
    })
    .await
}

async fn create_password(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, branch)): Path<(String, String, String)>,
) -> Response {
    guarded(&s, &headers, |g, now| {
        if !g.ps.branches.contains_key(&branch) {
            return err(StatusCode::NOT_FOUND, "not_found", "Not Found");
        }
        (
            StatusCode::CREATED,
            Json(json!({
                "id": format!("pw-{now}"),
                "name": format!("applyd-{branch}"),
                "role": "admin",
                "username": format!("fake-{branch}"),
                "plain_text": format!("pscale_pw_fake_{now}"),
                "access_host_url": "127.0.0.1:0",
            })),
        )
            .into_response()
    })
    .await
}

#[derive(Deserialize)]
struct ListQuery {
    branch: Option<String>,
    into_branch: Option<String>,
    page: Option<u64>,
    per_page: Option<u64>,
}

async fn list_requests(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    guarded(&s, &headers, |g, now| {
        g.ps.advance(now);
        if q.into_branch.as_deref().is_some_and(|b| b != "main") {
            return Json(json!({ "current_page": 1, "next_page": null, "data": [] }))
                .into_response();
        }
        let all: Vec<Value> =
            g.ps.requests
                .values()
                .filter(|r| q.branch.as_deref().is_none_or(|b| r.branch == b))
                .map(|r| dr_json(r, g.closed.contains(&r.id)))
                .collect();
        let per = q.per_page.unwrap_or(25).clamp(1, 100) as usize;
        let page = q.page.unwrap_or(1).max(1) as usize;
        let data: Vec<Value> = all
            .iter()
            .skip((page - 1) * per)
            .take(per)
            .cloned()
            .collect();
        let next = if page * per < all.len() {
            Some(page as u64 + 1)
        } else {
            None
        };
        Json(json!({ "current_page": page, "next_page": next, "data": data })).into_response()
    })
    .await
}

#[derive(Deserialize)]
struct NewRequest {
    branch: String,
    #[serde(default)]
    into_branch: Option<String>,
}

async fn create_request(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let body: NewRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                format!("a JSON body with branch and into_branch is required: {e}"),
            )
        }
    };
    guarded(&s, &headers, |g, now| {
        if body.into_branch.as_deref().unwrap_or("main") != "main" {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "into_branch must be main",
            );
        }
        if !g.ps.branches.contains_key(&body.branch) {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                format!("Branch {} not found", body.branch),
            );
        }
        match g.ps.call(
            now,
            &record_for(&body.branch, None),
            0,
            EngineCall::CreateDeployRequest,
        ) {
            Observation::DeployRequest { id, .. } => match g.ps.requests.get(&id) {
                Some(dr) => (StatusCode::CREATED, Json(dr_json(dr, false))).into_response(),
                None => err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "lost the new request",
                ),
            },
            other => err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{other:?}"),
            ),
        }
    })
    .await
}

async fn get_request(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, number)): Path<(String, String, u64)>,
) -> Response {
    guarded(&s, &headers, |g, now| {
        g.ps.advance(now);
        match g.ps.requests.get(&number) {
            Some(dr) => Json(dr_json(dr, g.closed.contains(&number))).into_response(),
            None => err(StatusCode::NOT_FOUND, "not_found", "Not Found"),
        }
    })
    .await
}

async fn close_request(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, number)): Path<(String, String, u64)>,
) -> Response {
    guarded(&s, &headers, |g, now| {
        g.ps.advance(now);
        let Some(dr) = g.ps.requests.get(&number) else {
            return err(StatusCode::NOT_FOUND, "not_found", "Not Found");
        };
        let json = dr_json(dr, true);
        g.closed.insert(number);
        Json(json).into_response()
    })
    .await
}

async fn request_action(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, number, action)): Path<(String, String, u64, String)>,
) -> Response {
    let call = match action.as_str() {
        "deploy" => EngineCall::Deploy,
        "apply-deploy" => EngineCall::Cutover,
        "revert" => EngineCall::Revert,
        "skip-revert" => EngineCall::SkipRevert,
        "cancel" => EngineCall::CancelDeployRequest,
        _ => return err(StatusCode::NOT_FOUND, "not_found", "Not Found"),
    };
    guarded(&s, &headers, |g, now| {
        let Some(branch) = g.ps.requests.get(&number).map(|r| r.branch.clone()) else {
            return err(StatusCode::NOT_FOUND, "not_found", "Not Found");
        };
        let before = g.ps.requests.get(&number).map(|r| r.state);
        match g.ps.call(now, &record_for(&branch, Some(number)), 0, call) {
            Observation::DeployRequest { .. } => match g.ps.requests.get(&number) {
                // Like the provider: a repeat that changes nothing is refused.
                Some(dr) if Some(dr.state) == before && call != EngineCall::CancelDeployRequest => {
                    err(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable",
                        format!(
                            "cannot {action} a deploy request in state {}",
                            dr.state.as_str()
                        ),
                    )
                }
                Some(dr) => Json(dr_json(dr, g.closed.contains(&number))).into_response(),
                None => err(StatusCode::NOT_FOUND, "not_found", "Not Found"),
            },
            Observation::Fault(EngineFault::NotFound) => {
                err(StatusCode::NOT_FOUND, "not_found", "Not Found")
            }
            _ => err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                format!(
                    "cannot {action} a deploy request in state {}",
                    before.map(DeployState::as_str).unwrap_or("?")
                ),
            ),
        }
    })
    .await
}

// ---- FAKE-ONLY administration ---------------------------------------------------------------

async fn admin_list(State(s): State<Shared>) -> Response {
    let now = s.now();
    let mut g = s.inner.lock().await;
    g.ps.advance(now);
    let data: Vec<Value> =
        g.ps.requests
            .values()
            .map(|r| {
                let mut v = dr_json(r, g.closed.contains(&r.id));
                v["deploys"] = json!(r.deploys);
                v
            })
            .collect();
    let branches: Vec<&String> = g.ps.branches.keys().collect();
    Json(json!({
        "deploy_requests": data,
        "branches": branches,
        "served": g.served,
        "injected_failures": g.injected_failures,
        "lost_replies": g.lost_replies,
    }))
    .into_response()
}

async fn admin_delete(State(s): State<Shared>, Path(number): Path<u64>) -> Response {
    let mut g = s.inner.lock().await;
    g.ps.delete_request(number);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_fail(State(s): State<Shared>, Path(number): Path<u64>) -> Response {
    let now = s.now();
    let mut g = s.inner.lock().await;
    g.ps.fail_request(number, now);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_faults(State(s): State<Shared>, Json(f): Json<Faults>) -> Response {
    s.inner.lock().await.faults = f;
    Json(f).into_response()
}

/// The router, for tests that serve it in-process and for the CLI.
pub fn router(opts: FakeServerOptions) -> Router {
    let shared = Shared {
        inner: Arc::new(Mutex::new(Inner {
            ps: FakePlanetScale::new(opts.timings),
            closed: BTreeSet::new(),
            faults: opts.faults,
            rng: opts.seed,
            injected_failures: 0,
            lost_replies: 0,
            served: 0,
        })),
        started: Instant::now(),
        token: opts.token.map(|(id, t)| format!("{id}:{t}")),
    };
    let db = "/v1/organizations/{org}/databases/{db}";
    Router::new()
        .route("/v1/organizations/{org}", get(get_org))
        .route(db, get(get_db))
        .route(&format!("{db}/branches"), post(create_branch))
        .route(&format!("{db}/branches/{{branch}}"), get(get_branch))
        .route(
            &format!("{db}/branches/{{branch}}/passwords"),
            post(create_password),
        )
        .route(
            &format!("{db}/deploy-requests"),
            get(list_requests).post(create_request),
        )
        .route(
            &format!("{db}/deploy-requests/{{number}}"),
            get(get_request).patch(close_request),
        )
        .route(
            &format!("{db}/deploy-requests/{{number}}/{{action}}"),
            post(request_action),
        )
        .route("/_fake/deploy-requests", get(admin_list))
        .route("/_fake/deploy-requests/{number}", delete(admin_delete))
        .route("/_fake/deploy-requests/{number}/fail", post(admin_fail))
        .route("/_fake/faults", post(admin_faults))
        .with_state(shared)
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: FakeServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(opts))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Phase durations all set to `phase_ms` (tests and trials want a quick fake).
pub fn quick_timings(phase_ms: u64) -> FakeTimings {
    FakeTimings {
        branch_ready_ms: phase_ms,
        validate_ms: phase_ms,
        deploy_ms: phase_ms,
        cutover_ms: phase_ms,
        revert_ms: phase_ms,
        server_revert_window_ms: phase_ms.saturating_mul(100),
        ..FakeTimings::default()
    }
}
