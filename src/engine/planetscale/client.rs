//! The PlanetScale API client: requests with bounded retries, the wire types, error replies
//! read for their code, and the redaction of secrets (`planetscale/*.go` of planetscale-go
//! name the same paths, verbs and fields).

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::planetscale_states::DeployState;
use crate::config::{PlanetScaleSection, Secret};
use crate::machine::observe::EngineFault;
use crate::machine::EngineState;

/// How long a branch password created for applying DDL stays valid: long enough to apply a
/// change to a branch (schema only), short enough that one left behind by a lost reply dies
/// soon. The ones applyd can see are deleted as soon as the DDL is applied.
pub(super) const BRANCH_PASSWORD_TTL_S: u64 = 600;
/// Deploy-request list pages read at most, and their size (the API's largest), when looking
/// one up by branch.
const MAX_LIST_PAGES: u32 = 20;
const LIST_PER_PAGE: u32 = 100;
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
    /// PlanetScale accepts deploy requests only into a branch with safe migrations on.
    #[serde(default)]
    pub safe_migrations: bool,
}

/// A branch password as a list reports it (`planetscale/passwords.go`: `id`, `name`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BranchPassword {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// Credentials of a branch password: what DDL is applied to the branch with.
#[derive(Clone)]
pub struct BranchCredentials {
    /// The password's id, to delete it once the DDL is applied.
    pub password_id: String,
    pub host: String,
    pub username: String,
    pub password: Secret,
    pub database: String,
    pub branch: String,
}

impl std::fmt::Debug for BranchCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BranchCredentials")
            .field("password_id", &self.password_id)
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
    /// Whether a reviewer approved it (`approved`); a database may require it before a deploy.
    #[serde(default)]
    pub approved: bool,
    #[serde(default)]
    pub deployment: Option<Deployment>,
}

/// The deployment of a deploy request (`planetscale/deploy_requests.go`, `type Deployment`):
/// only the fields that say whether it may be deployed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct Deployment {
    #[serde(default)]
    pub deployable: Option<bool>,
    /// Free-form objects (`lint_error`, `table_name`, `error_description`, …): read as text.
    #[serde(default)]
    pub lint_errors: Vec<Value>,
}

/// What a deploy request's `deployment_state` tells the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// A state the rules know, with what a failed state means for the user.
    State(EngineState, Option<&'static str>),
    /// `in_progress_cancel`: no answer yet; it resolves to `complete_cancel`.
    Cancelling,
    /// A state this build does not know (a newer API): no answer yet either.
    Unknown(String),
}

impl DeployRequest {
    /// Why the request cannot be deployed as it is, if its checks say so: its lint errors.
    pub fn lint_block(&self) -> Option<String> {
        let d = self.deployment.as_ref()?;
        if d.deployable != Some(false) && d.lint_errors.is_empty() {
            return None;
        }
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let errors: Vec<String> = d
            .lint_errors
            .iter()
            .map(|e| {
                let what = text(e, "error_description")
                    .or_else(|| text(e, "lint_error"))
                    .unwrap_or_else(|| e.to_string());
                match text(e, "table_name") {
                    Some(t) if !t.is_empty() => format!("{t}: {what}"),
                    _ => what,
                }
            })
            .collect();
        Some(if errors.is_empty() {
            "PlanetScale marks it not deployable".to_string()
        } else {
            errors.join("; ")
        })
    }

    pub fn reading(&self) -> Reading {
        let Ok(d) = self.deployment_state.parse::<DeployState>() else {
            return Reading::Unknown(self.deployment_state.clone());
        };
        // A request closed before it was ever deployed will never move again: it is cancelled.
        if self.state == "closed" && matches!(d, DeployState::Pending | DeployState::Ready) {
            return Reading::State(EngineState::Cancelled, None);
        }
        match d.engine_state() {
            Some(s) => Reading::State(s, d.failure_meaning()),
            None => Reading::Cancelling,
        }
    }

    /// The engine state, when the request has settled on a known one.
    pub fn engine_state(&self) -> Option<EngineState> {
        match self.reading() {
            Reading::State(s, _) => Some(s),
            Reading::Cancelling | Reading::Unknown(_) => None,
        }
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
    id: String,
    #[serde(default)]
    access_host_url: String,
    username: String,
    plain_text: String,
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
    /// Pages read at most and page size, for lists (a test makes them small).
    list_limits: (u32, u32),
}

/// An error reply as the API writes it (`{"code": …, "message": …}`, as planetscale-go's
/// `handleResponse` reads it in `planetscale/client.go`): the code is kept in every message,
/// and decisions are taken on it or on a fresh read, never on the English text.
fn api_error_text(status: StatusCode, text: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(ErrorBody {
            code: Some(code),
            message,
        }) => format!(
            "{status} (code {code}): {}",
            quote(message.as_deref().unwrap_or(""))
        ),
        _ => format!("{status}: {}", quote(text)),
    }
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
            list_limits: (MAX_LIST_PAGES, LIST_PER_PAGE),
        })
    }

    /// Read lists `per_page` at a time and refuse one longer than `pages` pages.
    pub fn with_list_limits(mut self, pages: u32, per_page: u32) -> PlanetScaleClient {
        self.list_limits = (pages.max(1), per_page.clamp(1, LIST_PER_PAGE));
        self
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
            let msg = format!("{what} answered {}", api_error_text(status, &text));
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

    /// `POST …/branches`. A refusal is read again as the branch itself: if it exists, it is our
    /// own (the name is deterministic) — made by an earlier attempt whose reply was lost. The
    /// refusal's wording is not relied on.
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
            Err(refused @ ApiError::Rejected(_)) => match self.get_branch(db, branch).await? {
                Some(_) => Ok(()),
                None => Err(refused),
            },
            Err(e) => Err(e),
        }
    }

    /// `POST …/branches/{branch}/passwords` (role admin, short TTL), named `name`.
    pub async fn create_password(
        &self,
        db: &str,
        branch: &str,
        name: &str,
    ) -> Result<BranchCredentials, ApiError> {
        let path = format!("{}/branches/{}/passwords", self.db_path(db), seg(branch));
        let body = json!({ "name": name, "role": "admin", "ttl": BRANCH_PASSWORD_TTL_S });
        let v = self.send(Method::POST, &path, Some(body), true).await?;
        let p: PasswordReply = Self::decode("POST branch password", v)?;
        if p.access_host_url.is_empty() {
            return Err(ApiError::Rejected(
                "POST branch password: the reply has no access_host_url".into(),
            ));
        }
        Ok(BranchCredentials {
            password_id: p.id,
            host: p.access_host_url,
            username: p.username,
            password: Secret::new(p.plain_text),
            database: db.to_string(),
            branch: branch.to_string(),
        })
    }

    /// `GET …/branches/{branch}/passwords`, every page (bounded as the deploy-request list).
    pub async fn list_passwords(
        &self,
        db: &str,
        branch: &str,
    ) -> Result<Vec<BranchPassword>, ApiError> {
        let mut out = Vec::new();
        let mut page = 1u64;
        let (max_pages, per_page) = self.list_limits;
        for _ in 0..max_pages {
            let path = format!(
                "{}/branches/{}/passwords?page={page}&per_page={per_page}",
                self.db_path(db),
                seg(branch)
            );
            let v = self.send(Method::GET, &path, None, true).await?;
            let p: Page<BranchPassword> = Self::decode("GET branch passwords", v)?;
            out.extend(p.data);
            match p.next_page {
                Some(n) if n > page => page = n,
                _ => return Ok(out),
            }
        }
        Err(ApiError::Rejected(format!(
            "GET passwords of branch {branch}: more than {max_pages} page(s) of {per_page}; \
             refusing a partial list"
        )))
    }

    /// `DELETE …/branches/{branch}/passwords/{id}`; one already gone counts as deleted.
    pub async fn delete_password(&self, db: &str, branch: &str, id: &str) -> Result<(), ApiError> {
        let path = format!(
            "{}/branches/{}/passwords/{}",
            self.db_path(db),
            seg(branch),
            seg(id)
        );
        match self.send(Method::DELETE, &path, None, true).await {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
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
        let (max_pages, per_page) = self.list_limits;
        for _ in 0..max_pages {
            let path = format!(
                "{}/deploy-requests?branch={}&into_branch={}&page={page}&per_page={per_page}",
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
        // A partial list could miss the deploy request this apply already made, and a second
        // one would follow.
        Err(ApiError::Rejected(format!(
            "GET deploy requests of branch {branch}: more than {max_pages} page(s) of {per_page}; \
             refusing a partial list"
        )))
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
