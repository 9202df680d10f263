//! The PlanetScale engine: an HTTP client for the documented PlanetScale API v1 and the
//! worker core's probes and calls on top of it (reference §6.1).
//!
//! Endpoints (all under `{api_url}/organizations/{org}/databases/{db}`):
//! `GET branches/{b}`, `POST branches`, `POST`/`GET branches/{b}/passwords`,
//! `DELETE branches/{b}/passwords/{id}`,
//! `GET deploy-requests?branch=&into_branch=`, `POST deploy-requests`,
//! `GET deploy-requests/{n}`, `PATCH deploy-requests/{n}` (close), `POST deploy-requests/{n}/deploy`,
//! `…/apply-deploy`, `…/revert`, `…/skip-revert`, `…/cancel`; and `GET /organizations/{org}`,
//! `GET …/databases/{db}` for `check-config`.
//!
//! Auth is the documented service-token header `Authorization: <SERVICE_TOKEN_ID>:<SERVICE_TOKEN>`.
//! The token never reaches a log line or an error message: every text we report is passed
//! through [`Redactor`] first.
//!
//! The client and its wire types are `client`; this file is the engine on top of it.

mod client;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use client::BRANCH_PASSWORD_TTL_S;
pub use client::{
    ApiError, Branch, BranchCredentials, BranchPassword, DeployRequest, PlanetScaleClient, Reading,
    Redactor,
};

use super::fake::branch_name;
use super::{Engine, Reply};
use crate::config::PlanetScaleSection;
use crate::machine::apply::{ApplyId, ApplyRecord};
use crate::machine::observe::{BranchStatus, EngineFault, Observation};
use crate::machine::{EngineCall, EngineState, Probe};
use crate::store::progress::TaskProgress;

/// Applies the reviewed DDL to a branch over the MySQL protocol. A trait so tests can stand in
/// for the branch's MySQL endpoint.
#[async_trait]
pub trait BranchSql: Send + Sync {
    /// Apply every statement; statements that are already in effect (duplicate column, index
    /// or table, nothing to drop) count as applied, so a repeat after a crash is harmless.
    async fn apply(&self, conn: &BranchCredentials, ddl: &[String]) -> Result<(), BranchSqlError>;
}

/// Why DDL did not reach a branch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BranchSqlError {
    /// The branch did not take the connection (refused, reset, timed out, not serving yet): a
    /// branch just created may not accept connections for a while.
    #[error("{0}")]
    Unreachable(String),
    /// Authentication, TLS, or a statement the branch refuses: the same attempt cannot succeed.
    #[error("{0}")]
    Refused(String),
}

/// The production [`BranchSql`]: sqlx over TLS to the branch's host.
pub struct MySqlBranchSql;

/// MySQL errors that mean "this statement is already in effect".
const ALREADY_APPLIED: &[u16] = &[1050, 1051, 1060, 1061, 1091];
/// MySQL errors that refuse the account: access denied (1044, 1045), no such plugin user (1698).
const AUTH_REFUSED: &[u16] = &[1044, 1045, 1698];

fn mysql_code(e: &sqlx::Error) -> Option<u16> {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .map(|d| d.number())
}

/// A failed connection to a branch: refused for good when the account or TLS is refused,
/// otherwise the branch may simply not serve yet.
fn connect_error(branch: &str, host: &str, e: &sqlx::Error) -> BranchSqlError {
    let text = format!("cannot connect to branch {branch} at {host}: {e}");
    match e {
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => BranchSqlError::Refused(text),
        _ if mysql_code(e).is_some_and(|c| AUTH_REFUSED.contains(&c)) => {
            BranchSqlError::Refused(text)
        }
        _ => BranchSqlError::Unreachable(text),
    }
}

/// Whether a branch host is this machine. A PlanetScale branch never is; only a stand-in for
/// one (`applyd fake-engines --branch-server` pointing at a local MariaDB) may do without TLS.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[async_trait]
impl BranchSql for MySqlBranchSql {
    async fn apply(&self, conn: &BranchCredentials, ddl: &[String]) -> Result<(), BranchSqlError> {
        use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
        use sqlx::{ConnectOptions, Executor};
        let (host, port) = match conn.host.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h.to_string(), p),
                Err(_) => {
                    return Err(BranchSqlError::Refused(format!(
                        "branch {} has an unreadable host {:?}",
                        conn.branch, conn.host
                    )))
                }
            },
            None => (conn.host.clone(), 3306),
        };
        let tls = if is_loopback(&host) {
            MySqlSslMode::Preferred
        } else {
            MySqlSslMode::Required
        };
        let mut opts = MySqlConnectOptions::new()
            .host(&host)
            .port(port)
            .username(&conn.username)
            .database(&conn.database)
            .ssl_mode(tls);
        // An empty password is no password (a local stand-in's account), not an empty one.
        if !conn.password.expose().is_empty() {
            opts = opts.password(conn.password.expose());
        }
        let mut c = opts
            .connect()
            .await
            .map_err(|e| connect_error(&conn.branch, &host, &e))?;
        for stmt in ddl {
            if let Err(e) = c.execute(stmt.as_str()).await {
                if mysql_code(&e).is_some_and(|c| ALREADY_APPLIED.contains(&c)) {
                    tracing::info!(branch = %conn.branch, "statement already in effect on the branch: {e}");
                    continue;
                }
                let text = format!("applying DDL to branch {}: {e}", conn.branch);
                return Err(match e {
                    // The connection broke mid-way: what ran is in effect, the rest runs again.
                    sqlx::Error::Io(_) => BranchSqlError::Unreachable(text),
                    _ => BranchSqlError::Refused(text),
                });
            }
        }
        Ok(())
    }
}

/// Conditions that may pass, retried until they have lasted `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Condition {
    UnknownDeployState,
    BranchRefusesConnections,
}

/// Since when each apply has been seeing each condition.
struct Patience {
    limit: Duration,
    since: std::sync::Mutex<BTreeMap<(ApplyId, Condition), Instant>>,
}

impl Patience {
    fn lasted(&self, apply: ApplyId, c: Condition) -> Duration {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        since
            .entry((apply, c))
            .or_insert_with(Instant::now)
            .elapsed()
    }
    fn clear(&self, apply: ApplyId, c: Condition) {
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(apply, c));
    }
    /// Forget an apply this process no longer drives: a later drive starts counting afresh.
    fn forget(&self, apply: ApplyId) {
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(a, _), _| *a != apply);
    }
}

/// How long a condition that may pass (an unknown deploy-request state, a new branch that
/// refuses connections) is retried before the apply fails with it.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// The name of the branch password an apply's drive of lease `epoch` creates: the prefix is
/// the apply's (its branch's), so every password applyd made for it can be found and deleted,
/// also one whose creation reply was lost.
pub fn password_name(branch: &str, epoch: u64) -> String {
    format!("{}e{epoch}", password_prefix(branch))
}

fn password_prefix(branch: &str) -> String {
    format!("applyd-{branch}-")
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
    patience: Patience,
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
            patience: Patience {
                limit: DEFAULT_PATIENCE,
                since: Default::default(),
            },
        }
    }

    /// Retry conditions that may pass for `limit` instead of [`DEFAULT_PATIENCE`].
    pub fn with_patience(mut self, limit: Duration) -> PlanetScaleEngine {
        self.patience.limit = limit;
        self
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

    /// Delete the passwords applyd made on the apply's branch up to this drive's lease epoch
    /// (this drive's, and any an earlier attempt or a lost reply left). A failure only leaves
    /// them to their short TTL.
    async fn delete_passwords(
        &self,
        apply: &ApplyRecord,
        db: &str,
        branch: &str,
        epoch: u64,
        used: &str,
    ) {
        let prefix = password_prefix(branch);
        let result = async {
            // The one just used first: it goes even if the list below fails.
            if !used.is_empty() {
                self.client.delete_password(db, branch, used).await?;
            }
            for p in self.client.list_passwords(db, branch).await? {
                // This drive's epoch and older ones: a newer lease's drive may be about to
                // use its own.
                let epoch_of = p
                    .name
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_prefix('e'))
                    .and_then(|n| n.parse::<u64>().ok());
                if epoch_of.is_some_and(|e| e <= epoch) {
                    self.client.delete_password(db, branch, &p.id).await?;
                }
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(
                apply = apply.row.id,
                "branch passwords of {branch} left to expire (TTL {BRANCH_PASSWORD_TTL_S} s): {e}"
            );
        }
    }

    fn fault(&self, apply: &ApplyRecord, what: &str, e: ApiError) -> Reply {
        match &e {
            ApiError::Transient(_) => {
                tracing::warn!(apply = apply.row.id, "{what}: {e}")
            }
            _ => tracing::error!(apply = apply.row.id, "{what}: {e}"),
        }
        Reply::fault(e.fault(), format!("{what}: {e}"))
    }

    /// A condition that may pass is retried (as a transient fault, so with the driver's
    /// backoff) until it has lasted the engine's patience; then it is a permanent failure.
    fn wait_or_fail(&self, apply: &ApplyRecord, condition: Condition, what: String) -> Reply {
        let lasted = self.patience.lasted(apply.row.operation, condition);
        if lasted > self.patience.limit {
            self.patience.clear(apply.row.operation, condition);
            let why = format!(
                "{what}, for {} s (more than the {} s applyd waits)",
                lasted.as_secs(),
                self.patience.limit.as_secs()
            );
            tracing::error!(apply = apply.row.id, "{why}");
            return Reply::fault(EngineFault::Permanent, why);
        }
        tracing::warn!(apply = apply.row.id, "{what}; looking again");
        Reply::fault(EngineFault::Transient, what)
    }

    fn observe(&self, apply: &ApplyRecord, dr: &DeployRequest) -> Reply {
        self.observe_only(apply, dr).with_progress(deploy_progress(
            dr,
            format!("deploy request #{}", dr.number),
        ))
    }

    fn observe_only(&self, apply: &ApplyRecord, dr: &DeployRequest) -> Reply {
        match dr.reading() {
            Reading::State(state, meaning) => {
                self.patience
                    .clear(apply.row.operation, Condition::UnknownDeployState);
                let obs = Observation::DeployRequest {
                    id: dr.number,
                    state,
                };
                match meaning {
                    Some(m) => Reply::explained(
                        obs,
                        format!(
                            "deploy request #{} is {}: {m}",
                            dr.number, dr.deployment_state
                        ),
                    ),
                    None => obs.into(),
                }
            }
            // Transitional: the deploy may still be running until it resolves.
            Reading::Cancelling => Reply::fault(
                EngineFault::Transient,
                format!(
                    "deploy request #{} is being cancelled (in_progress_cancel); waiting for \
                     complete_cancel",
                    dr.number
                ),
            ),
            Reading::Unknown(s) => self.wait_or_fail(
                apply,
                Condition::UnknownDeployState,
                format!(
                    "deploy request #{} reports deployment state {s:?}, which this applyd does \
                     not know",
                    dr.number
                ),
            ),
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
                d.reading(),
                Reading::State(EngineState::Cancelled | EngineState::Failed, _)
                    | Reading::Cancelling
            )
        });
        Ok(alive.or(all.last()).cloned())
    }

    async fn action(&self, apply: &ApplyRecord, call: EngineCall) -> Reply {
        let db = self.database(apply).to_string();
        let number = match self.request_of(apply).await {
            Ok(Some(n)) => n,
            Ok(None) if call == EngineCall::CancelDeployRequest => {
                // Nothing was ever opened: nothing to cancel.
                return Observation::DeployRequest {
                    id: 0,
                    state: EngineState::Cancelled,
                }
                .into();
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
        // Nothing is asked of a request that has not settled: the call is made once it has.
        let Some(state) = current.engine_state() else {
            return self.observe(apply, &current);
        };
        // Already done (a repeat after a crash or a lost reply): report, do not re-issue.
        if already_done(call, state) {
            return self.observe(apply, &current);
        }
        // Its checks say it cannot deploy as it is: no waiting makes it deployable.
        if call == EngineCall::Deploy {
            if let Some(lint) = current.lint_block() {
                let why = format!(
                    "deploy request #{number} is blocked by lint: {lint}; fix the change and \
                     submit it again"
                );
                tracing::error!(apply = apply.row.id, "{why}");
                return Reply::fault(EngineFault::Permanent, why);
            }
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
                    return Reply::fault(
                        EngineFault::Permanent,
                        format!("{call:?} is not a deploy-request action"),
                    );
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
                    Ok(d) if d.engine_state().is_some_and(|s| already_done(call, s)) => {
                        self.observe(apply, &d)
                    }
                    // A cancel already under way: no answer until it settles.
                    Ok(d)
                        if call == EngineCall::CancelDeployRequest
                            && d.reading() == Reading::Cancelling =>
                    {
                        self.observe(apply, &d)
                    }
                    // A database may require a review before a deploy: a person's move, waited
                    // for with backoff, never a failure.
                    Ok(d) if call == EngineCall::Deploy && !d.approved => {
                        let why = format!(
                            "deploy request #{number} is waiting for approval ({})",
                            ApiError::Rejected(m)
                        );
                        tracing::warn!(apply = apply.row.id, "{why}");
                        Reply::fault(EngineFault::Transient, why.clone())
                            .with_progress(deploy_progress(&d, why))
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

/// Where a deploy request stands, for the task rows: its state as the API names it, and `note`.
fn deploy_progress(dr: &DeployRequest, note: String) -> TaskProgress {
    TaskProgress {
        phase: Some(dr.deployment_state.clone()),
        note: Some(note),
        ..TaskProgress::default()
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
    async fn probe(&self, apply: &ApplyRecord, _epoch: u64, probe: Probe) -> Reply {
        let db = self.database(apply).to_string();
        let branch = branch_name(&apply.spec.identifier);
        match probe {
            Probe::GetBranch => match self.client.get_branch(&db, &branch).await {
                Ok(None) => Observation::Branch(BranchStatus::Missing).into(),
                Ok(Some(b)) if !b.ready => Observation::Branch(BranchStatus::Creating).into(),
                Ok(Some(_)) => Observation::Branch(BranchStatus::Ready).into(),
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
                    Observation::BranchDiff { pending: !done }.into()
                }
                Err(e) => self.fault(apply, "DiffBranch", e),
            },
            Probe::ValidateBranch => match self.client.get_branch(&db, &branch).await {
                Ok(Some(b)) if b.ready => Observation::BranchValid.into(),
                // Not ready yet (e.g. a schema refresh): look again later.
                Ok(Some(_)) => Reply::fault(
                    EngineFault::Transient,
                    format!("branch {branch} is not ready yet"),
                ),
                Ok(None) => self.fault(
                    apply,
                    "ValidateBranch",
                    ApiError::NotFound(format!("branch {branch} is gone")),
                ),
                Err(e) => self.fault(apply, "ValidateBranch", e),
            },
            Probe::FindDeployRequest => match self.find(apply).await {
                Ok(None) => Observation::NoDeployRequest.into(),
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
                let why = "a Spirit probe reached the PlanetScale engine";
                tracing::error!(apply = apply.row.id, "{why}");
                Reply::fault(EngineFault::Permanent, why)
            }
        }
    }

    /// Nothing runs here for an apply; what it was waiting out starts afresh with its next drive.
    async fn abandon(&self, apply: &ApplyRecord, _epoch: u64) {
        self.patience.forget(apply.row.operation);
    }

    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Reply {
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
                    Ok(()) => Observation::Branch(BranchStatus::Creating).into(),
                    Err(e) => self.fault(apply, "CreateBranch", e),
                }
            }
            EngineCall::ApplyBranchChanges => {
                let name = password_name(&branch, epoch);
                let creds = match self.client.create_password(&db, &branch, &name).await {
                    Ok(c) => c,
                    Err(e) => return self.fault(apply, "creating a branch password", e),
                };
                let applied = self.branch_sql.apply(&creds, &apply.spec.ddl).await;
                self.delete_passwords(apply, &db, &branch, epoch, &creds.password_id)
                    .await;
                let redact = Redactor::new(&[creds.password.expose()]);
                match applied {
                    Ok(()) => {
                        self.patience
                            .clear(apply.row.operation, Condition::BranchRefusesConnections);
                        self.applied
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(apply.spec.identifier.clone());
                        Observation::BranchDiff { pending: false }.into()
                    }
                    // A branch just created may not take connections yet.
                    Err(BranchSqlError::Unreachable(m)) => self.wait_or_fail(
                        apply,
                        Condition::BranchRefusesConnections,
                        redact.clean(&m),
                    ),
                    Err(BranchSqlError::Refused(m)) => {
                        self.patience
                            .clear(apply.row.operation, Condition::BranchRefusesConnections);
                        let m = redact.clean(&m);
                        tracing::error!(apply = apply.row.id, "ApplyBranchChanges: {m}");
                        Reply::fault(EngineFault::Permanent, m)
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
                let why = format!("a Spirit call reached the PlanetScale engine: {call:?}");
                tracing::error!(apply = apply.row.id, "{why}");
                Reply::fault(EngineFault::Permanent, why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn request(deployment_state: &str) -> DeployRequest {
        DeployRequest {
            number: 7,
            branch: "b".into(),
            state: "open".into(),
            deployment_state: deployment_state.into(),
            approved: false,
            deployment: None,
        }
    }

    #[test]
    fn a_cancel_in_progress_and_an_unknown_state_are_no_answer_yet() {
        assert_eq!(request("in_progress_cancel").reading(), Reading::Cancelling);
        assert_eq!(request("in_progress_cancel").engine_state(), None);
        assert_eq!(
            request("exploded_gently").reading(),
            Reading::Unknown("exploded_gently".into())
        );
        assert_eq!(
            request("complete_cancel").engine_state(),
            Some(EngineState::Cancelled)
        );
    }

    #[test]
    fn a_failed_revert_says_the_change_is_probably_still_live() {
        match request("complete_revert_error").reading() {
            Reading::State(EngineState::Failed, Some(m)) => {
                assert!(m.contains("probably still live"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn closed_before_deploy_is_cancelled_and_redaction_hides_secrets() {
        let d = DeployRequest {
            number: 1,
            branch: "b".into(),
            state: "closed".into(),
            deployment_state: "ready".into(),
            approved: false,
            deployment: None,
        };
        assert_eq!(d.engine_state().unwrap(), EngineState::Cancelled);
        let r = Redactor::new(&["pscale_tkn_abc"]);
        assert_eq!(r.clean("bad token pscale_tkn_abc!"), "bad token ***!");
        let creds = BranchCredentials {
            password_id: "pw1".into(),
            host: "h".into(),
            username: "u".into(),
            password: Secret::new("pw-secret"),
            database: "d".into(),
            branch: "b".into(),
        };
        assert!(!format!("{creds:?}").contains("pw-secret"));
    }
}
