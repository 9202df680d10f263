//! The PlanetScale engine: an HTTP client for the documented PlanetScale API v1 and the
//! worker core's probes and calls on top of it (reference §6.1).
//!
//! Endpoints (all under `{api_url}/organizations/{org}/databases/{db}`):
//! `GET branches/{b}`, `POST branches`, `POST branches/{b}/passwords`,
//! `GET deploy-requests?branch=&into_branch=`, `POST deploy-requests`,
//! `GET deploy-requests/{n}`, `PATCH deploy-requests/{n}` (close), `POST deploy-requests/{n}/deploy`,
//! `…/apply-deploy`, `…/revert`, `…/skip-revert`, `…/cancel`; and `GET /organizations/{org}`,
//! `GET …/databases/{db}` for `check-config`.
//!
//! Auth is the documented service-token header `Authorization: <SERVICE_TOKEN_ID>:<SERVICE_TOKEN>`.
//! The token never reaches a log line or an error message: every text we report is passed
//! through [`Redactor`] first.
//!
//! Over 700 lines: the client, its wire types and the redaction of secrets are one adapter; the
//! wire types are the first seam to split off.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::fake::branch_name;
use super::planetscale_states::DeployState;
use super::Engine;
use crate::config::{PlanetScaleSection, Secret};
use crate::machine::apply::ApplyRecord;
use crate::machine::observe::{BranchStatus, EngineFault, Observation};
use crate::machine::{EngineCall, EngineState, Probe};

/// How long a branch password created for applying DDL stays valid.
const BRANCH_PASSWORD_TTL_S: u64 = 3600;
/// Deploy-request list pages read at most (100 per page) when looking one up by branch.
const MAX_LIST_PAGES: u32 = 20;
/// At most this much of an error body is quoted in a message.
const BODY_QUOTE: usize = 300;

/// Why an API call failed, already classified for the worker core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 5xx, 429, timeout, connection error — after the in-call retries ran out.
    #[error("PlanetScale API unavailable: {0}")]
    Transient(String),
    #[error("PlanetScale API: not found: {0}")]
    NotFound(String),
    #[error(
        "PlanetScale API refused the service token (check service_token_id and service_token): {0}"
    )]
    Auth(String),
    /// A 4xx validation error or a response we cannot read.
    #[error("PlanetScale API: {0}")]
    Rejected(String),
}

impl ApiError {
    pub fn fault(&self) -> EngineFault {
        match self {
            ApiError::Transient(_) => EngineFault::Transient,
            ApiError::NotFound(_) => EngineFault::NotFound,
            ApiError::Auth(_) | ApiError::Rejected(_) => EngineFault::Permanent,
        }
    }
}

/// Replaces every occurrence of the secrets it knows with `***`.
#[derive(Clone)]
pub struct Redactor(Vec<String>);

impl Redactor {
    pub fn new(secrets: &[&str]) -> Redactor {
        Redactor(
            secrets
                .iter()
                .filter(|s| s.len() >= 4)
                .map(|s| s.to_string())
                .collect(),
        )
    }
    pub fn clean(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.0 {
            out = out.replace(s.as_str(), "***");
        }
        out
    }
}

/// A branch as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Branch {
    pub name: String,
    #[serde(default)]
    pub ready: bool,
}

/// Credentials of a branch password: what DDL is applied to the branch with.
#[derive(Clone)]
pub struct BranchCredentials {
    pub host: String,
    pub username: String,
    pub password: Secret,
    pub database: String,
    pub branch: String,
}

impl std::fmt::Debug for BranchCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BranchCredentials")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("database", &self.database)
            .field("branch", &self.branch)
            .finish()
    }
}

/// A deploy request as the API reports it (only the fields we rely on).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeployRequest {
    pub number: u64,
    #[serde(default)]
    pub branch: String,
    /// `open` or `closed`.
    #[serde(default)]
    pub state: String,
    pub deployment_state: String,
}

impl DeployRequest {
    /// The engine state, or an error that names the unknown deployment state.
    pub fn engine_state(&self) -> Result<EngineState, ApiError> {
        let d: DeployState = self
            .deployment_state
            .parse()
            .map_err(|e| ApiError::Rejected(format!("deploy request #{}: {e}", self.number)))?;
        // A request closed before it was ever deployed will never move again: it is cancelled.
        if self.state == "closed" && matches!(d, DeployState::Pending | DeployState::Ready) {
            return Ok(EngineState::Cancelled);
        }
        Ok(d.engine_state())
    }
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
    #[serde(default)]
    next_page: Option<u64>,
}

#[derive(Deserialize)]
struct PasswordReply {
    #[serde(default)]
    access_host_url: String,
    username: String,
    plain_text: String,
}

/// Applies the reviewed DDL to a branch over the MySQL protocol. A trait so tests can stand in
/// for the branch's MySQL endpoint.
#[async_trait]
pub trait BranchSql: Send + Sync {
    /// Apply every statement; statements that are already in effect (duplicate column, index
    /// or table, nothing to drop) count as applied, so a repeat after a crash is harmless.
    async fn apply(&self, conn: &BranchCredentials, ddl: &[String]) -> Result<(), String>;
}

/// The production [`BranchSql`]: sqlx over TLS to the branch's host.
pub struct MySqlBranchSql;

/// MySQL errors that mean "this statement is already in effect".
const ALREADY_APPLIED: &[u16] = &[1050, 1051, 1060, 1061, 1091];

#[async_trait]
impl BranchSql for MySqlBranchSql {
    async fn apply(&self, conn: &BranchCredentials, ddl: &[String]) -> Result<(), String> {
        use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
        use sqlx::{ConnectOptions, Executor};
        let (host, port) = match conn.host.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().unwrap_or(3306)),
            None => (conn.host.clone(), 3306),
        };
        let opts = MySqlConnectOptions::new()
            .host(&host)
            .port(port)
            .username(&conn.username)
            .password(conn.password.expose())
            .database(&conn.database)
            .ssl_mode(MySqlSslMode::Required);
        let mut c = opts
            .connect()
            .await
            .map_err(|e| format!("cannot connect to branch {} at {host}: {e}", conn.branch))?;
        for stmt in ddl {
            if let Err(e) = c.execute(stmt.as_str()).await {
                let code = e
                    .as_database_error()
                    .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
                    .map(|d| d.number());
                if code.is_some_and(|c| ALREADY_APPLIED.contains(&c)) {
                    tracing::info!(branch = %conn.branch, "statement already in effect on the branch: {e}");
                    continue;
                }
                return Err(format!("applying DDL to branch {}: {e}", conn.branch));
            }
        }
        Ok(())
    }
}

/// The HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct PlanetScaleClient {
    http: reqwest::Client,
    base: String,
    org: String,
    auth: Arc<Secret>,
    redact: Redactor,
    attempts: u32,
    backoff: Duration,
}

fn seg(s: &str) -> String {
    // Path segments: names are [A-Za-z0-9_-] in practice; escape anything else.
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn quote(body: &str) -> String {
    let mut b: String = body.chars().take(BODY_QUOTE).collect();
    if body.chars().count() > BODY_QUOTE {
        b.push('…');
    }
    b
}

impl PlanetScaleClient {
    pub fn new(
        api_url: &str,
        organization: &str,
        token_id: &str,
        token: &Secret,
        timeout: Duration,
        attempts: u32,
        backoff: Duration,
    ) -> anyhow::Result<PlanetScaleClient> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("applyd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(PlanetScaleClient {
            http,
            base: api_url.trim_end_matches('/').to_string(),
            org: organization.to_string(),
            auth: Arc::new(Secret::new(format!("{token_id}:{}", token.expose()))),
            redact: Redactor::new(&[token.expose()]),
            attempts: attempts.max(1),
            backoff,
        })
    }

    pub fn from_config(c: &PlanetScaleSection) -> anyhow::Result<PlanetScaleClient> {
        let token = c.service_token()?;
        PlanetScaleClient::new(
            &c.api_url,
            &c.organization,
            &c.service_token_id,
            &token,
            Duration::from_millis(c.request_timeout_ms),
            c.attempts,
            Duration::from_millis(c.backoff_ms),
        )
    }

    fn db_path(&self, db: &str) -> String {
        format!("/organizations/{}/databases/{}", seg(&self.org), seg(db))
    }

    /// One request with bounded retries of transient failures. `retry` is false for calls
    /// that are not idempotent (creating a deploy request): the caller re-finds instead.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        retry: bool,
    ) -> Result<Value, ApiError> {
        let url = format!("{}{}", self.base, path);
        let what = format!("{method} {path}");
        let attempts = if retry { self.attempts } else { 1 };
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                // Bounded exponential backoff: backoff, 2×, 4×, … capped at 8×.
                let factor = 1u32 << (attempt - 1).min(3);
                tokio::time::sleep(self.backoff * factor).await;
            }
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("Authorization", self.auth.expose())
                .header("Accept", "application/json");
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    // reqwest errors carry the URL, never headers; redact anyway.
                    last = self.redact.clean(&format!("{what}: {e}"));
                    tracing::warn!(attempt, "PlanetScale request failed: {last}");
                    continue;
                }
            };
            let status = resp.status();
            let text = match resp.text().await {
                Ok(t) => t,
                Err(e) => {
                    last = self
                        .redact
                        .clean(&format!("{what}: reading the response: {e}"));
                    tracing::warn!(attempt, "PlanetScale request failed: {last}");
                    continue;
                }
            };
            let text = self.redact.clean(&text);
            if status.is_success() {
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_str(&text).map_err(|e| {
                    ApiError::Rejected(format!(
                        "{what} answered {status} with a body that is not JSON ({e}): {}",
                        quote(&text)
                    ))
                });
            }
            let msg = format!("{what} answered {status}: {}", quote(&text));
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                tracing::warn!(attempt, "PlanetScale transient error: {msg}");
                last = msg;
                continue;
            }
            return Err(match status {
                StatusCode::NOT_FOUND => ApiError::NotFound(msg),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::Auth(msg),
                _ => ApiError::Rejected(msg),
            });
        }
        Err(ApiError::Transient(format!(
            "{last} (gave up after {attempts} attempt(s))"
        )))
    }

    fn decode<T: for<'de> Deserialize<'de>>(what: &str, v: Value) -> Result<T, ApiError> {
        serde_json::from_value(v)
            .map_err(|e| ApiError::Rejected(format!("{what}: unexpected response shape: {e}")))
    }

    /// `GET /organizations/{org}`: the token works and sees the organisation.
    pub async fn get_organization(&self) -> Result<Value, ApiError> {
        self.send(
            Method::GET,
            &format!("/organizations/{}", seg(&self.org)),
            None,
            true,
        )
        .await
    }

    /// `GET /organizations/{org}/databases/{db}`.
    pub async fn get_database(&self, db: &str) -> Result<Value, ApiError> {
        self.send(Method::GET, &self.db_path(db), None, true).await
    }

    /// `GET …/branches/{branch}`; `None` when it does not exist.
    pub async fn get_branch(&self, db: &str, branch: &str) -> Result<Option<Branch>, ApiError> {
        let path = format!("{}/branches/{}", self.db_path(db), seg(branch));
        match self.send(Method::GET, &path, None, true).await {
            Ok(v) => Self::decode("GET branch", v).map(Some),
            Err(ApiError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST …/branches`; a name already taken is our own branch (the name is deterministic).
    pub async fn create_branch(
        &self,
        db: &str,
        branch: &str,
        parent: &str,
    ) -> Result<(), ApiError> {
        let path = format!("{}/branches", self.db_path(db));
        let body = json!({ "name": branch, "parent_branch": parent });
        match self.send(Method::POST, &path, Some(body), true).await {
            Ok(_) => Ok(()),
            Err(ApiError::Rejected(m)) if m.contains("already been taken") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST …/branches/{branch}/passwords` (role admin, short TTL).
    pub async fn create_password(
        &self,
        db: &str,
        branch: &str,
    ) -> Result<BranchCredentials, ApiError> {
        let path = format!("{}/branches/{}/passwords", self.db_path(db), seg(branch));
        let body = json!({ "name": format!("applyd-{branch}"), "role": "admin", "ttl": BRANCH_PASSWORD_TTL_S });
        let v = self.send(Method::POST, &path, Some(body), true).await?;
        let p: PasswordReply = Self::decode("POST branch password", v)?;
        if p.access_host_url.is_empty() {
            return Err(ApiError::Rejected(
                "POST branch password: the reply has no access_host_url".into(),
            ));
        }
        Ok(BranchCredentials {
            host: p.access_host_url,
            username: p.username,
            password: Secret::new(p.plain_text),
            database: db.to_string(),
            branch: branch.to_string(),
        })
    }

    /// `GET …/deploy-requests?branch=…&into_branch=…`, every page (bounded).
    pub async fn list_deploy_requests(
        &self,
        db: &str,
        branch: &str,
        into: &str,
    ) -> Result<Vec<DeployRequest>, ApiError> {
        let mut out = Vec::new();
        let mut page = 1u64;
        for _ in 0..MAX_LIST_PAGES {
            let path = format!(
                "{}/deploy-requests?branch={}&into_branch={}&page={page}&per_page=100",
                self.db_path(db),
                seg(branch),
                seg(into)
            );
            let v = self.send(Method::GET, &path, None, true).await?;
            let p: Page<DeployRequest> = Self::decode("GET deploy requests", v)?;
            // The filter is the server's; keep only what is really ours.
            out.extend(p.data.into_iter().filter(|d| d.branch == branch));
            match p.next_page {
                Some(n) if n > page => page = n,
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// `POST …/deploy-requests`. Not idempotent: never retried here.
    pub async fn create_deploy_request(
        &self,
        db: &str,
        branch: &str,
        into: &str,
        auto_cutover: bool,
    ) -> Result<DeployRequest, ApiError> {
        let path = format!("{}/deploy-requests", self.db_path(db));
        let body = json!({
            "branch": branch,
            "into_branch": into,
            "notes": "opened by applyd",
            "auto_cutover": auto_cutover,
            "auto_delete_branch": false,
        });
        let v = self.send(Method::POST, &path, Some(body), false).await?;
        Self::decode("POST deploy request", v)
    }

    /// `GET …/deploy-requests/{number}`.
    pub async fn get_deploy_request(
        &self,
        db: &str,
        number: u64,
    ) -> Result<DeployRequest, ApiError> {
        let path = format!("{}/deploy-requests/{number}", self.db_path(db));
        let v = self.send(Method::GET, &path, None, true).await?;
        Self::decode("GET deploy request", v)
    }

    /// `POST …/deploy-requests/{number}/{action}` for deploy, apply-deploy, revert, skip-revert
    /// and cancel.
    pub async fn deploy_request_action(
        &self,
        db: &str,
        number: u64,
        action: &str,
    ) -> Result<DeployRequest, ApiError> {
        let path = format!("{}/deploy-requests/{number}/{action}", self.db_path(db));
        let v = self.send(Method::POST, &path, None, true).await?;
        Self::decode("deploy request action", v)
    }

    /// `PATCH …/deploy-requests/{number}` with `state = closed`.
    pub async fn close_deploy_request(
        &self,
        db: &str,
        number: u64,
    ) -> Result<DeployRequest, ApiError> {
        let path = format!("{}/deploy-requests/{number}", self.db_path(db));
        let v = self
            .send(
                Method::PATCH,
                &path,
                Some(json!({ "state": "closed" })),
                true,
            )
            .await?;
        Self::decode("close deploy request", v)
    }
}

/// The PlanetScale engine the worker core drives.
pub struct PlanetScaleEngine {
    pub client: PlanetScaleClient,
    /// `None`: each apply's target database is the PlanetScale database.
    pub database: Option<String>,
    pub into_branch: String,
    pub branch_sql: Arc<dyn BranchSql>,
    /// Applies whose DDL this process has applied to their branch (identifier). After a restart
    /// the set is empty and the (idempotent) application simply runs again.
    applied: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl PlanetScaleEngine {
    pub fn new(
        client: PlanetScaleClient,
        database: Option<String>,
        into_branch: String,
        branch_sql: Arc<dyn BranchSql>,
    ) -> PlanetScaleEngine {
        PlanetScaleEngine {
            client,
            database,
            into_branch,
            branch_sql,
            applied: Default::default(),
        }
    }

    pub fn from_config(c: &PlanetScaleSection) -> anyhow::Result<PlanetScaleEngine> {
        Ok(PlanetScaleEngine::new(
            PlanetScaleClient::from_config(c)?,
            c.database.clone(),
            c.into_branch.clone(),
            Arc::new(MySqlBranchSql),
        ))
    }

    fn database<'a>(&'a self, apply: &'a ApplyRecord) -> &'a str {
        self.database
            .as_deref()
            .unwrap_or(apply.spec.target.database.as_str())
    }

    fn fault(&self, apply: &ApplyRecord, what: &str, e: ApiError) -> Observation {
        match &e {
            ApiError::Transient(_) => {
                tracing::warn!(apply = apply.row.id, "{what}: {e}")
            }
            _ => tracing::error!(apply = apply.row.id, "{what}: {e}"),
        }
        Observation::Fault(e.fault())
    }

    fn observe(&self, apply: &ApplyRecord, dr: &DeployRequest) -> Observation {
        match dr.engine_state() {
            Ok(state) => Observation::DeployRequest {
                id: dr.number,
                state,
            },
            Err(e) => self.fault(apply, "reading the deploy request", e),
        }
    }

    /// The deploy request an apply relies on: the persisted id, else the one found by branch.
    async fn request_of(&self, apply: &ApplyRecord) -> Result<Option<u64>, ApiError> {
        if let Some(id) = apply.row.resume.deploy_request_id {
            return Ok(Some(id));
        }
        Ok(self.find(apply).await?.map(|d| d.number))
    }

    /// The deploy request for the apply's branch: the oldest still alive, else the newest.
    async fn find(&self, apply: &ApplyRecord) -> Result<Option<DeployRequest>, ApiError> {
        let branch = branch_name(&apply.spec.identifier);
        let mut all = self
            .client
            .list_deploy_requests(self.database(apply), &branch, &self.into_branch)
            .await?;
        all.sort_by_key(|d| d.number);
        let alive = all.iter().find(|d| {
            !matches!(
                d.engine_state(),
                Ok(EngineState::Cancelled | EngineState::Failed)
            )
        });
        Ok(alive.or(all.last()).cloned())
    }

    async fn action(&self, apply: &ApplyRecord, call: EngineCall) -> Observation {
        let db = self.database(apply).to_string();
        let number = match self.request_of(apply).await {
            Ok(Some(n)) => n,
            Ok(None) if call == EngineCall::CancelDeployRequest => {
                // Nothing was ever opened: nothing to cancel.
                return Observation::DeployRequest {
                    id: 0,
                    state: EngineState::Cancelled,
                };
            }
            Ok(None) => {
                return self.fault(
                    apply,
                    &format!("{call:?}"),
                    ApiError::NotFound("no deploy request for the apply's branch".into()),
                )
            }
            Err(e) => return self.fault(apply, &format!("{call:?}"), e),
        };
        let current = match self.client.get_deploy_request(&db, number).await {
            Ok(d) => d,
            Err(e) => return self.fault(apply, &format!("{call:?}: reading #{number}"), e),
        };
        let state = match current.engine_state() {
            Ok(s) => s,
            Err(e) => return self.fault(apply, &format!("{call:?}"), e),
        };
        // Already done (a repeat after a crash or a lost reply): report, do not re-issue.
        if already_done(call, state) {
            return self.observe(apply, &current);
        }
        let result = match call {
            EngineCall::CancelDeployRequest
                if matches!(state, EngineState::Pending | EngineState::WaitingForDeploy) =>
            {
                // Never deployed: closing is how a pending or ready request is cancelled.
                self.client.close_deploy_request(&db, number).await
            }
            _ => {
                let Some(path) = action_path(call) else {
                    return Observation::Fault(EngineFault::Permanent);
                };
                self.client.deploy_request_action(&db, number, path).await
            }
        };
        match result {
            Ok(d) => self.observe(apply, &d),
            Err(ApiError::Rejected(m)) => {
                // The provider refuses a repeat (e.g. a second deploy): re-read to see whether
                // the effect is in place after all.
                match self.client.get_deploy_request(&db, number).await {
                    Ok(d) if d.engine_state().is_ok_and(|s| already_done(call, s)) => {
                        self.observe(apply, &d)
                    }
                    _ => self.fault(
                        apply,
                        &format!("{call:?} on #{number}"),
                        ApiError::Rejected(m),
                    ),
                }
            }
            Err(e) => self.fault(apply, &format!("{call:?} on #{number}"), e),
        }
    }
}

fn action_path(call: EngineCall) -> Option<&'static str> {
    Some(match call {
        EngineCall::Deploy => "deploy",
        EngineCall::Cutover => "apply-deploy",
        EngineCall::Revert => "revert",
        EngineCall::SkipRevert => "skip-revert",
        EngineCall::CancelDeployRequest => "cancel",
        _ => return None,
    })
}

/// Whether the effect of `call` is already visible in a deploy request in `state`.
fn already_done(call: EngineCall, state: EngineState) -> bool {
    use EngineState as S;
    match call {
        EngineCall::Deploy => matches!(
            state,
            S::Running | S::WaitingForCutover | S::CuttingOver | S::RevertWindow | S::Completed
        ),
        EngineCall::Cutover => matches!(state, S::CuttingOver | S::RevertWindow | S::Completed),
        EngineCall::Revert => matches!(state, S::Reverting | S::Reverted),
        EngineCall::SkipRevert => matches!(state, S::Completed),
        EngineCall::CancelDeployRequest => matches!(state, S::Cancelled),
        _ => false,
    }
}

#[async_trait]
impl Engine for PlanetScaleEngine {
    async fn probe(&self, apply: &ApplyRecord, _epoch: u64, probe: Probe) -> Observation {
        let db = self.database(apply).to_string();
        let branch = branch_name(&apply.spec.identifier);
        match probe {
            Probe::GetBranch => match self.client.get_branch(&db, &branch).await {
                Ok(None) => Observation::Branch(BranchStatus::Missing),
                Ok(Some(b)) if !b.ready => Observation::Branch(BranchStatus::Creating),
                Ok(Some(_)) => Observation::Branch(BranchStatus::Ready),
                Err(e) => self.fault(apply, "GetBranch", e),
            },
            Probe::DiffBranch => match self.client.get_branch(&db, &branch).await {
                Ok(None) => self.fault(
                    apply,
                    "DiffBranch",
                    ApiError::NotFound(format!("branch {branch} is gone")),
                ),
                Ok(Some(_)) => {
                    let done = self
                        .applied
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(&apply.spec.identifier);
                    Observation::BranchDiff { pending: !done }
                }
                Err(e) => self.fault(apply, "DiffBranch", e),
            },
            Probe::ValidateBranch => match self.client.get_branch(&db, &branch).await {
                Ok(Some(b)) if b.ready => Observation::BranchValid,
                // Not ready yet (e.g. a schema refresh): look again later.
                Ok(Some(_)) => Observation::Fault(EngineFault::Transient),
                Ok(None) => self.fault(
                    apply,
                    "ValidateBranch",
                    ApiError::NotFound(format!("branch {branch} is gone")),
                ),
                Err(e) => self.fault(apply, "ValidateBranch", e),
            },
            Probe::FindDeployRequest => match self.find(apply).await {
                Ok(None) => Observation::NoDeployRequest,
                Ok(Some(d)) => self.observe(apply, &d),
                Err(e) => self.fault(apply, "FindDeployRequest", e),
            },
            Probe::GetDeployRequest => {
                let Some(id) = apply.row.resume.deploy_request_id else {
                    return self.fault(
                        apply,
                        "GetDeployRequest",
                        ApiError::NotFound("the apply has no deploy request id".into()),
                    );
                };
                match self.client.get_deploy_request(&db, id).await {
                    Ok(d) => self.observe(apply, &d),
                    Err(e) => self.fault(apply, "GetDeployRequest", e),
                }
            }
            Probe::RunnerStatus => {
                tracing::error!(
                    apply = apply.row.id,
                    "a Spirit probe reached the PlanetScale engine"
                );
                Observation::Fault(EngineFault::Permanent)
            }
        }
    }

    async fn call(&self, apply: &ApplyRecord, _epoch: u64, call: EngineCall) -> Observation {
        // The API has no notion of our lease epochs; fencing is the store's and the core's.
        let db = self.database(apply).to_string();
        let branch = branch_name(&apply.spec.identifier);
        match call {
            EngineCall::CreateBranch => {
                match self
                    .client
                    .create_branch(&db, &branch, &self.into_branch)
                    .await
                {
                    Ok(()) => Observation::Branch(BranchStatus::Creating),
                    Err(e) => self.fault(apply, "CreateBranch", e),
                }
            }
            EngineCall::ApplyBranchChanges => {
                let creds = match self.client.create_password(&db, &branch).await {
                    Ok(c) => c,
                    Err(e) => return self.fault(apply, "creating a branch password", e),
                };
                match self.branch_sql.apply(&creds, &apply.spec.ddl).await {
                    Ok(()) => {
                        self.applied
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(apply.spec.identifier.clone());
                        Observation::BranchDiff { pending: false }
                    }
                    Err(m) => {
                        let m = Redactor::new(&[creds.password.expose()]).clean(&m);
                        tracing::error!(apply = apply.row.id, "ApplyBranchChanges: {m}");
                        Observation::Fault(EngineFault::Permanent)
                    }
                }
            }
            EngineCall::CreateDeployRequest => {
                let auto_cutover = !apply.row.options.defer_cutover;
                match self
                    .client
                    .create_deploy_request(&db, &branch, &self.into_branch, auto_cutover)
                    .await
                {
                    Ok(d) => self.observe(apply, &d),
                    Err(e) => self.fault(apply, "CreateDeployRequest", e),
                }
            }
            EngineCall::Deploy
            | EngineCall::Cutover
            | EngineCall::Revert
            | EngineCall::SkipRevert
            | EngineCall::CancelDeployRequest => self.action(apply, call).await,
            EngineCall::StartRunner
            | EngineCall::StopRunner
            | EngineCall::CancelRunner
            | EngineCall::DropSentinel => {
                tracing::error!(
                    apply = apply.row.id,
                    "a Spirit call reached the PlanetScale engine: {call:?}"
                );
                Observation::Fault(EngineFault::Permanent)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_deployment_state_is_an_error_naming_it() {
        let d = DeployRequest {
            number: 7,
            branch: "b".into(),
            state: "open".into(),
            deployment_state: "exploded_gently".into(),
        };
        let e = d.engine_state().unwrap_err();
        assert!(e.to_string().contains("exploded_gently"), "{e}");
        assert_eq!(e.fault(), EngineFault::Permanent);
    }

    #[test]
    fn closed_before_deploy_is_cancelled_and_redaction_hides_secrets() {
        let d = DeployRequest {
            number: 1,
            branch: "b".into(),
            state: "closed".into(),
            deployment_state: "ready".into(),
        };
        assert_eq!(d.engine_state().unwrap(), EngineState::Cancelled);
        let r = Redactor::new(&["pscale_tkn_abc"]);
        assert_eq!(r.clean("bad token pscale_tkn_abc!"), "bad token ***!");
        let creds = BranchCredentials {
            host: "h".into(),
            username: "u".into(),
            password: Secret::new("pw-secret"),
            database: "d".into(),
            branch: "b".into(),
        };
        assert!(!format!("{creds:?}").contains("pw-secret"));
    }
}
