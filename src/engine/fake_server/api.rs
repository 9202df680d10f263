//! The fake PlanetScale's copy of the real API: the paths, verbs, JSON fields and errors the
//! real client relies on, each request run under the fault rules of [`guarded`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{err, next_unit, Inner, Shared};
use crate::engine::fake::FakeDeployRequest;
use crate::engine::planetscale_states::DeployState;
use crate::machine::apply::{ApplyRecord, ApplySnapshot, ApplySpec, ResumeState, Target};
use crate::machine::observe::{EngineFault, Observation};
use crate::machine::{ApplyOptions, ApplyState, EngineCall, EngineKind};

pub(super) fn dr_json(dr: &FakeDeployRequest, closed: bool) -> Value {
    json!({
        "id": format!("dr-{}", dr.id),
        "number": dr.id,
        "branch": dr.branch,
        "into_branch": "main",
        "approved": true,
        "state": if closed { "closed" } else { "open" },
        "deployment_state": dr.state.as_str(),
        "deployment": {
            "state": dr.state.as_str(),
            "deployable": true,
            "lint_errors": [],
        },
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
            operation: 0,
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
            deployment: String::new(),
            ddl: vec![],
            fingerprint: None,
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

pub(super) async fn get_org(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    guarded(&s, &headers, |_, _| {
        Json(json!({ "id": "org-1", "name": org })).into_response()
    })
    .await
}

pub(super) async fn get_db(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, db)): Path<(String, String)>,
) -> Response {
    guarded(&s, &headers, |_, _| {
        Json(json!({
            "id": "db-1",
            "name": db,
            "kind": "mysql",
            "state": "ready",
            "require_approval_for_deploy": false,
        }))
        .into_response()
    })
    .await
}

pub(super) async fn get_branch(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, branch)): Path<(String, String, String)>,
) -> Response {
    guarded(&s, &headers, |g, now| {
        if branch == "main" {
            return Json(json!({ "name": "main", "ready": true, "state": "ready", "production": true, "safe_migrations": true })).into_response();
        }
        match g.engines.planetscale.branches.get(&branch) {
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

/// A request body, or the 422 message naming the fields it needs.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], needs: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("a JSON body with {needs} is required: {e}"))
}

#[derive(Deserialize)]
struct NewBranch {
    name: String,
    #[serde(default)]
    parent_branch: Option<String>,
}

pub(super) async fn create_branch(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let body: NewBranch = match json_body(&body, "name and parent_branch") {
        Ok(b) => b,
        Err(message) => return err(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message),
    };
    guarded(&s, &headers, |g, now| {
        if body.parent_branch.as_deref().unwrap_or("main") != "main" {
            return err(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", "Parent branch not found");
        }
        if g.engines.planetscale.branches.contains_key(&body.name) || body.name == "main" {
            return err(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", "Name has already been taken");
        }
        g.engines.planetscale.call(now, &record_for(&body.name, None), 0, EngineCall::CreateBranch);
        (
            StatusCode::CREATED,
            Json(json!({ "name": body.name, "ready": false, "state": "pending", "parent_branch": "main" })),
        )
            .into_response()
    })
    .await
}

#[derive(Deserialize, Default)]
pub(super) struct NewPassword {
    name: Option<String>,
    ttl: Option<u64>,
}

/// `POST …/passwords`: a new password every time (as the API: a retried create after a lost
/// reply leaves two alive), named as asked.
pub(super) async fn create_password(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, branch)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let body: NewPassword = if body.is_empty() {
        NewPassword::default()
    } else {
        match json_body(&body, "name, role and ttl") {
            Ok(b) => b,
            Err(message) => return err(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message),
        }
    };
    let server = s.branch_server.clone();
    guarded(&s, &headers, |g, now| {
        if !g.engines.planetscale.branches.contains_key(&branch) {
            return err(StatusCode::NOT_FOUND, "not_found", "Not Found");
        }
        let (address, username, plain_text) = match &server {
            Some(b) => (b.address.clone(), b.username.clone(), b.password.clone()),
            None => (
                "127.0.0.1:0".to_string(),
                format!("fake-{branch}"),
                format!("pscale_pw_fake_{now}"),
            ),
        };
        g.passwords_made += 1;
        let id = format!("pw{}", g.passwords_made);
        let name = body.name.clone().unwrap_or_else(|| id.clone());
        g.passwords
            .insert(id.clone(), (branch.clone(), name.clone()));
        (
            StatusCode::CREATED,
            Json(json!({
                "id": id,
                "name": name,
                "role": "admin",
                "ttl_seconds": body.ttl.unwrap_or(0),
                "username": username,
                "plain_text": plain_text,
                "access_host_url": address,
            })),
        )
            .into_response()
    })
    .await
}

/// `GET …/passwords`: the branch's live passwords (one page holds them all here).
pub(super) async fn list_passwords(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, branch)): Path<(String, String, String)>,
) -> Response {
    guarded(&s, &headers, |g, _now| {
        let data: Vec<Value> = g
            .passwords
            .iter()
            .filter(|(_, (b, _))| *b == branch)
            .map(|(id, (_, name))| json!({ "id": id, "name": name, "role": "admin" }))
            .collect();
        Json(json!({ "current_page": 1, "next_page": null, "data": data })).into_response()
    })
    .await
}

/// `DELETE …/passwords/{id}`: 204, or 404 for a password that is not there.
pub(super) async fn delete_password(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, branch, id)): Path<(String, String, String, String)>,
) -> Response {
    guarded(&s, &headers, |g, _now| match g.passwords.get(&id) {
        Some((b, _)) if *b == branch => {
            g.passwords.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => err(StatusCode::NOT_FOUND, "not_found", "Not Found"),
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    branch: Option<String>,
    into_branch: Option<String>,
    page: Option<u64>,
    per_page: Option<u64>,
}

pub(super) async fn list_requests(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    guarded(&s, &headers, |g, now| {
        g.engines.planetscale.advance(now);
        if q.into_branch.as_deref().is_some_and(|b| b != "main") {
            return Json(json!({ "current_page": 1, "next_page": null, "data": [] }))
                .into_response();
        }
        let all: Vec<Value> = g
            .engines
            .planetscale
            .requests
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

pub(super) async fn create_request(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let body: NewRequest = match json_body(&body, "branch and into_branch") {
        Ok(b) => b,
        Err(message) => return err(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message),
    };
    guarded(&s, &headers, |g, now| {
        if body.into_branch.as_deref().unwrap_or("main") != "main" {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "into_branch must be main",
            );
        }
        if !g.engines.planetscale.branches.contains_key(&body.branch) {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                format!("Branch {} not found", body.branch),
            );
        }
        match g.engines.planetscale.call(
            now,
            &record_for(&body.branch, None),
            0,
            EngineCall::CreateDeployRequest,
        ) {
            Observation::DeployRequest { id, .. } => {
                match g.engines.planetscale.requests.get(&id) {
                    Some(dr) => (StatusCode::CREATED, Json(dr_json(dr, false))).into_response(),
                    None => err(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "lost the new request",
                    ),
                }
            }
            other => err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{other:?}"),
            ),
        }
    })
    .await
}

pub(super) async fn get_request(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, number)): Path<(String, String, u64)>,
) -> Response {
    guarded(&s, &headers, |g, now| {
        g.engines.planetscale.advance(now);
        let Some(dr) = g.engines.planetscale.requests.get(&number) else {
            return err(StatusCode::NOT_FOUND, "not_found", "Not Found");
        };
        let mut json = dr_json(dr, g.closed.contains(&number));
        if let Some(r) = g.reports.get_mut(&number) {
            r.apply(&mut json);
        }
        Json(json).into_response()
    })
    .await
}

pub(super) async fn close_request(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((_org, _db, number)): Path<(String, String, u64)>,
) -> Response {
    guarded(&s, &headers, |g, now| {
        g.engines.planetscale.advance(now);
        let Some(dr) = g.engines.planetscale.requests.get(&number) else {
            return err(StatusCode::NOT_FOUND, "not_found", "Not Found");
        };
        let json = dr_json(dr, true);
        g.closed.insert(number);
        Json(json).into_response()
    })
    .await
}

pub(super) async fn request_action(
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
        let Some(branch) = g
            .engines
            .planetscale
            .requests
            .get(&number)
            .map(|r| r.branch.clone())
        else {
            return err(StatusCode::NOT_FOUND, "not_found", "Not Found");
        };
        // FAKE-ONLY: a request reported unapproved cannot be deployed.
        let unapproved = g
            .reports
            .get(&number)
            .is_some_and(|r| r.reads > 0 && r.approved == Some(false));
        if unapproved && call == EngineCall::Deploy {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "this database requires an approval before a deploy",
            );
        }
        let before = g.engines.planetscale.requests.get(&number).map(|r| r.state);
        match g
            .engines
            .planetscale
            .call(now, &record_for(&branch, Some(number)), 0, call)
        {
            // A cancel under way answers with the request in `in_progress_cancel`, which the
            // fake's observation reads as no answer yet; the reply is the request as it is.
            Observation::DeployRequest { .. } | Observation::Fault(EngineFault::Transient)
                if g.engines.planetscale.requests.contains_key(&number) =>
            {
                match g.engines.planetscale.requests.get(&number) {
                    // Like the provider: a repeat that changes nothing is refused.
                    Some(dr)
                        if Some(dr.state) == before && call != EngineCall::CancelDeployRequest =>
                    {
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
                }
            }
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
