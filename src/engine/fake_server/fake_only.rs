//! FAKE-ONLY routes (`/_fake/…`): nothing like them exists in the real API. Inspection and
//! sabotage of deploy requests, the fault knobs, the branch DDL (which in reality travels over a
//! MySQL connection to the branch), the fake Spirit's call/probe interface, process crashes and
//! the facts a crash test asserts.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::api::dr_json;
use super::{err, Faults, Shared};
use crate::machine::apply::ApplyRecord;
use crate::machine::{EngineCall, EngineKind, Probe};

pub(super) async fn admin_list(State(s): State<Shared>) -> Response {
    let now = s.now();
    let mut g = s.inner.lock().await;
    g.engines.planetscale.advance(now);
    let data: Vec<Value> = g
        .engines
        .planetscale
        .requests
        .values()
        .map(|r| {
            let mut v = dr_json(r, g.closed.contains(&r.id));
            v["deploys"] = json!(r.deploys);
            v
        })
        .collect();
    let branches: Vec<&String> = g.engines.planetscale.branches.keys().collect();
    Json(json!({
        "deploy_requests": data,
        "branches": branches,
        "served": g.served,
        "injected_failures": g.injected_failures,
        "lost_replies": g.lost_replies,
        "passwords_made": g.passwords_made,
        "passwords_alive": g.passwords.len(),
    }))
    .into_response()
}

pub(super) async fn admin_delete(State(s): State<Shared>, Path(number): Path<u64>) -> Response {
    let mut g = s.inner.lock().await;
    g.engines.planetscale.delete_request(number);
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn admin_fail(State(s): State<Shared>, Path(number): Path<u64>) -> Response {
    let now = s.now();
    let mut g = s.inner.lock().await;
    g.engines.planetscale.fail_request(number, now);
    StatusCode::NO_CONTENT.into_response()
}

/// What `POST /_fake/deploy-requests/{n}/report` asks: for the next `reads` reads of the
/// request, report these fields instead of the truth.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Report {
    #[serde(default)]
    pub(super) deployment_state: Option<String>,
    #[serde(default)]
    pub(super) approved: Option<bool>,
    #[serde(default)]
    pub(super) deployable: Option<bool>,
    #[serde(default)]
    pub(super) lint_errors: Option<Vec<Value>>,
    pub(super) reads: u32,
}

impl Report {
    /// Rewrite a deploy request's JSON as reported; `false` once the reads are used up.
    pub(super) fn apply(&mut self, json: &mut Value) -> bool {
        if self.reads == 0 {
            return false;
        }
        self.reads -= 1;
        if let Some(s) = &self.deployment_state {
            json["deployment_state"] = Value::String(s.clone());
        }
        if let Some(a) = self.approved {
            json["approved"] = Value::Bool(a);
        }
        if let Some(d) = self.deployable {
            json["deployment"]["deployable"] = Value::Bool(d);
        }
        if let Some(l) = &self.lint_errors {
            json["deployment"]["lint_errors"] = Value::Array(l.clone());
        }
        true
    }
}

pub(super) async fn admin_report(
    State(s): State<Shared>,
    Path(number): Path<u64>,
    Json(r): Json<Report>,
) -> Response {
    let mut g = s.inner.lock().await;
    if !g.engines.planetscale.requests.contains_key(&number) {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no deploy request #{number}"),
        );
    }
    g.reports.insert(number, r);
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn admin_faults(State(s): State<Shared>, Json(f): Json<Faults>) -> Response {
    s.inner.lock().await.faults = f;
    Json(f).into_response()
}

/// FAKE-ONLY: what a branch's DDL does when it travels over a MySQL connection to the branch.
pub(super) async fn admin_branch_ddl(
    State(s): State<Shared>,
    Path(branch): Path<String>,
    Json(ddl): Json<Vec<String>>,
) -> Response {
    let mut g = s.inner.lock().await;
    let Some(b) = g.engines.planetscale.branches.get_mut(&branch) else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no branch {branch}"),
        );
    };
    b.changes_applied = true;
    // Like the real statements on a branch: applying the same DDL again changes nothing.
    g.branch_ddl.insert(branch, ddl);
    StatusCode::NO_CONTENT.into_response()
}

/// A call to the fake Spirit, from the operator process `host`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SpiritCall {
    pub apply: ApplyRecord,
    pub epoch: u64,
    pub host: u32,
    pub call: EngineCall,
}

/// The fake Spirit's answer: what it observed and what its runner reports of the copy.
#[derive(Debug, Serialize, Deserialize)]
pub struct SpiritReply {
    pub obs: crate::machine::observe::Observation,
    pub why: Option<String>,
    pub progress: Option<crate::store::progress::TaskProgress>,
}

impl From<crate::engine::Reply> for SpiritReply {
    fn from(r: crate::engine::Reply) -> SpiritReply {
        SpiritReply {
            obs: r.obs,
            why: r.why,
            progress: r.progress,
        }
    }
}

impl From<SpiritReply> for crate::engine::Reply {
    fn from(r: SpiritReply) -> crate::engine::Reply {
        crate::engine::Reply {
            obs: r.obs,
            why: r.why,
            progress: r.progress,
        }
    }
}

/// A probe of the fake Spirit.
#[derive(Debug, Serialize, Deserialize)]
pub struct SpiritProbe {
    pub apply: ApplyRecord,
    pub epoch: u64,
    pub probe: Probe,
}

/// The refusal of a `/_fake/spirit/` request about an apply of another engine.
fn not_spirit(apply: &ApplyRecord) -> Option<Response> {
    (apply.row.engine != EngineKind::Spirit).then(|| {
        err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            format!(
                "apply {} uses {:?}; the PlanetScale fake is served over its API",
                apply.row.id, apply.row.engine
            ),
        )
    })
}

pub(super) async fn spirit_probe(
    State(s): State<Shared>,
    Json(req): Json<SpiritProbe>,
) -> Response {
    if let Some(refused) = not_spirit(&req.apply) {
        return refused;
    }
    let now = s.now();
    let reply = s
        .inner
        .lock()
        .await
        .engines
        .probe_reply(now, &req.apply, req.probe);
    Json(SpiritReply::from(reply)).into_response()
}

pub(super) async fn spirit_call(State(s): State<Shared>, Json(req): Json<SpiritCall>) -> Response {
    if let Some(refused) = not_spirit(&req.apply) {
        return refused;
    }
    let now = s.now();
    let reply = s
        .inner
        .lock()
        .await
        .engines
        .call_reply(now, req.host, &req.apply, req.epoch, req.call);
    Json(SpiritReply::from(reply)).into_response()
}

pub(super) async fn admin_crash_host(State(s): State<Shared>, Path(host): Path<u32>) -> Response {
    let now = s.now();
    s.inner.lock().await.engines.crash_host(now, host);
    StatusCode::NO_CONTENT.into_response()
}

/// What the fakes hold, for a crash test's assertions.
#[derive(Debug, Serialize, Deserialize)]
pub struct Facts {
    /// (branch, deploy requests created for it)
    pub deploy_requests: Vec<(String, usize)>,
    /// (branch, the DDL applied to it)
    pub branch_ddl: Vec<(String, Vec<String>)>,
    /// (target, Spirit runners alive on it)
    pub runners: Vec<(String, usize)>,
    pub runners_started: u64,
    /// (branch, branch passwords alive)
    pub passwords_alive: Vec<(String, usize)>,
}

pub(super) async fn admin_facts(State(s): State<Shared>) -> Response {
    let now = s.now();
    let mut g = s.inner.lock().await;
    g.engines.advance(now);
    let mut per_branch: std::collections::BTreeMap<String, usize> = Default::default();
    for dr in g.engines.planetscale.requests.values() {
        *per_branch.entry(dr.branch.clone()).or_default() += 1;
    }
    Json(Facts {
        deploy_requests: per_branch.into_iter().collect(),
        branch_ddl: g.branch_ddl.clone().into_iter().collect(),
        runners: g
            .engines
            .spirit
            .targets
            .iter()
            .map(|(k, t)| (k.clone(), t.runners.len()))
            .collect(),
        runners_started: g.engines.spirit.runners_started,
        passwords_alive: g
            .passwords
            .values()
            .fold(
                Default::default(),
                |mut n: std::collections::BTreeMap<String, usize>, (b, _)| {
                    *n.entry(b.clone()).or_default() += 1;
                    n
                },
            )
            .into_iter()
            .collect(),
    })
    .into_response()
}
