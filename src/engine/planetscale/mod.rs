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

use std::sync::Arc;

use async_trait::async_trait;

use client::BRANCH_PASSWORD_TTL_S;
pub use client::{
    ApiError, Branch, BranchCredentials, BranchPassword, DeployRequest, PlanetScaleClient, Redactor,
};

use super::fake::branch_name;
use super::Engine;
use crate::config::PlanetScaleSection;
use crate::machine::apply::ApplyRecord;
use crate::machine::observe::{BranchStatus, EngineFault, Observation};
use crate::machine::{EngineCall, EngineState, Probe};

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

    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Observation {
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
                let name = password_name(&branch, epoch);
                let creds = match self.client.create_password(&db, &branch, &name).await {
                    Ok(c) => c,
                    Err(e) => return self.fault(apply, "creating a branch password", e),
                };
                let applied = self.branch_sql.apply(&creds, &apply.spec.ddl).await;
                self.delete_passwords(apply, &db, &branch, epoch, &creds.password_id)
                    .await;
                match applied {
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
    use crate::config::Secret;

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
