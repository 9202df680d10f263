//! The store interface: claims, fenced writes, heartbeats, control requests. `memory` is the
//! reference semantics (simulator, demo, tests); the MySQL store implements the same trait.

pub mod audit;
pub mod memory;
pub mod mysql;
pub mod progress;
pub mod status;
pub mod timeline;
pub mod webhooks;

use async_trait::async_trait;

/// Who asked, as kept: printable, at most 255 bytes (cut at a character boundary).
pub fn requester(by: &str) -> String {
    let clean: String = by.chars().filter(|c| !c.is_control()).collect();
    let mut end = clean.len().min(255);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_string()
}

use crate::machine::apply::{ApplyId, ResumeState, WriteOutcome};
pub use crate::machine::apply::{ApplyRecord, ApplySpec, DriveInputs, Target};
pub use crate::machine::claim::{ClaimLevel, ClaimPath};
use crate::machine::{ApplyOptions, ApplyState, ClaimedVia, ControlOp, EngineKind};

/// The longest database or environment name a target may have (MySQL's identifier limit; the
/// MySQL store's columns are this wide).
pub use crate::ddl::MAX_NAME as MAX_TARGET_NAME;

/// What a user submits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewApply {
    pub target: Target,
    pub engine: EngineKind,
    pub ddl: Vec<String>,
    #[serde(default)]
    pub options: ApplyOptions,
    /// Accept statements that can lose data (DROP TABLE, DROP COLUMN, …); see [`crate::ddl`].
    #[serde(default)]
    pub allow_destructive: bool,
    /// The deployments and table steps the change rolls across, with its policies; `None`
    /// runs it as one operation on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::machine::rollout::RolloutPlan>,
}

/// What a fenced lease change does to one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    Renew,
    Release,
    /// Release it until the wait's wake time (`Store::park`).
    Park,
}

/// The owner's capability: every guarded write carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub apply: ApplyId,
    pub owner: String,
    pub epoch: u64,
}

/// A successful claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub lease: Lease,
    /// The arm that matched: an apply arm, or an operation arm plus the apply arm that moved the
    /// parent.
    pub arm: ClaimedVia,
    /// The row's state before the claim (the drive uses it to tell dispatch from resume).
    pub pre_claim: ApplyState,
    pub record: ApplyRecord,
}

/// Claim the next unit of work the way `path` says.
pub async fn claim_next(
    store: &dyn Store,
    path: ClaimPath,
    owner: &str,
) -> Result<Option<Claimed>, StoreError> {
    for level in path.levels() {
        let claimed = match level {
            ClaimLevel::Operation => store.claim_operation(owner).await?,
            ClaimLevel::Apply => store.claim(owner).await?,
        };
        if claimed.is_some() {
            return Ok(claimed);
        }
    }
    Ok(None)
}

/// The outcome of a control request submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RequestOutcome {
    Created,
    /// A request of this kind was already pending.
    AlreadyPending,
    /// A finished request of this kind was reset to pending.
    Reset,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("lease lost on apply {apply}: epoch {epoch} is no longer current")]
    LeaseLost { apply: ApplyId, epoch: u64 },
    #[error("apply {0} does not exist")]
    RowGone(ApplyId),
    #[error("another active apply ({existing}) exists on target {target}")]
    ActiveApplyExists { target: String, existing: ApplyId },
    #[error("request refused: {0}")]
    Refused(String),
    /// A submission that can never be accepted as it is (a bad name, a refused statement).
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("apply {apply} has an unreadable {column}: {detail}")]
    BadRow {
        apply: ApplyId,
        column: &'static str,
        detail: String,
    },
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// What a submission led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Submitted {
    pub id: ApplyId,
    /// The change was already live on its target: this is that apply, nothing was created.
    pub adopted: bool,
}

/// Whether a submission is the live apply on its target again (a retried CI job): the same
/// engine and the same reviewed change, by fingerprint. An apply stored without a fingerprint
/// is never adopted.
pub fn adopts(
    live: (EngineKind, Option<&str>),
    new: &NewApply,
    change: &crate::ddl::CheckedChange,
) -> bool {
    live.0 == new.engine && live.1 == Some(change.fingerprint.as_str())
}

/// One operation of a rollout as submitted: where it runs, its statements and their tables, and
/// the fingerprint of its part of the change.
#[derive(Debug, Clone)]
pub struct RolloutOperation {
    pub planned: crate::machine::rollout::PlannedOperation,
    pub ddl: Vec<String>,
    pub tables: Vec<String>,
    pub fingerprint: String,
}

/// The checks every store applies before creating a rollout: the change as any submission
/// (`validate_new_apply`), the plan field by field (`RolloutPlan::operations`), and each
/// operation's part of the change. Returns the checked change and the operations in rollout
/// order.
pub fn validate_rollout(
    new: &NewApply,
    plan: &crate::machine::rollout::RolloutPlan,
) -> Result<(crate::ddl::CheckedChange, Vec<RolloutOperation>), StoreError> {
    let change = validate_new_apply(new)?;
    let tables: Vec<Option<String>> = change
        .statements
        .iter()
        .map(|s| Some(s.table.clone()).filter(|t| !t.is_empty()))
        .collect();
    let refused = |r: crate::machine::rollout::PlanRefusal| StoreError::Invalid {
        field: r.field,
        message: r.message,
    };
    plan.check_engine(new.engine, &new.options)
        .map_err(refused)?;
    let planned = plan.operations(&tables).map_err(refused)?;
    let mut out = Vec::with_capacity(planned.len());
    for p in planned {
        let ddl: Vec<String> = p.statements.iter().map(|i| new.ddl[*i].clone()).collect();
        let tables = p
            .statements
            .iter()
            .map(|i| change.statements[*i].table.clone())
            .collect();
        // Each part is checked as the whole was: the same fingerprint an engine call
        // re-checks it against (`ddl::pinned`), without parsing it again.
        let fingerprint =
            change
                .fingerprint_of(&p.statements)
                .ok_or_else(|| StoreError::Invalid {
                    field: "table_steps",
                    message: format!(
                        "an operation names statements {:?} of a change of {}",
                        p.statements,
                        change.statements.len()
                    ),
                })?;
        out.push(RolloutOperation {
            planned: p,
            ddl,
            tables,
            fingerprint,
        });
    }
    Ok((change, out))
}

/// The checks every store applies before creating an apply, so that both stores accept and
/// refuse the same submissions: the target's names ([`crate::ddl::check_name`]) and the change
/// itself ([`crate::ddl::check_change`]). Returns the checked change.
pub fn validate_new_apply(new: &NewApply) -> Result<crate::ddl::CheckedChange, StoreError> {
    for (field, name) in [
        ("database", &new.target.database),
        ("environment", &new.target.environment),
    ] {
        crate::ddl::check_name(field, name).map_err(|e| StoreError::Invalid {
            field,
            message: e.to_string(),
        })?;
    }
    crate::ddl::check_change(
        new.engine,
        &new.target.database,
        &new.ddl,
        new.allow_destructive,
    )
    .map_err(|e| StoreError::Invalid {
        field: "ddl",
        message: e.to_string(),
    })
}

/// How a store result reads to the worker core (the operator's executor and the test kit's).
pub fn store_outcome(result: Result<(), StoreError>) -> WriteOutcome {
    match result {
        Ok(()) => WriteOutcome::Ok,
        Err(StoreError::LeaseLost { .. }) => WriteOutcome::LeaseLost,
        Err(StoreError::RowGone(_)) => WriteOutcome::RowGone,
        Err(StoreError::ActiveApplyExists { .. }) => WriteOutcome::TargetBusy,
        Err(_) => WriteOutcome::Unavailable,
    }
}

#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync {
    /// Create an apply with its children, atomically. A second active apply on a target is
    /// refused, unless it is the same change ([`adopts`]): then the live apply is returned.
    async fn submit_or_adopt(&self, new: NewApply) -> Result<Submitted, StoreError>;
    /// [`Store::submit_or_adopt`], for callers that only need the id.
    async fn submit(&self, new: NewApply) -> Result<ApplyId, StoreError> {
        Ok(self.submit_or_adopt(new).await?.id)
    }
    /// Claim at most one row through the first matching arm, taking a new lease epoch.
    async fn claim(&self, owner: &str) -> Result<Option<Claimed>, StoreError>;
    /// Claim at most one operation row through the first matching operation arm (O1–O7), in
    /// `(created_at, id)` order, together with its parent apply: both rows take the same new
    /// lease epoch, and the parent moves by the apply arm that matches it (a parent no apply arm
    /// matches, e.g. under a peer's fresh lease, leaves the operation alone).
    async fn claim_operation(&self, owner: &str) -> Result<Option<Claimed>, StoreError>;
    /// Re-read the owned row and its pending control requests (fenced: a lost lease is an error).
    async fn load(&self, lease: &Lease) -> Result<DriveInputs, StoreError>;
    /// Fenced write of state and resume state; the operation row (fenced by its own lease) and
    /// the task rows follow in the same transaction. `why`, given with a move into a failed
    /// state, is written on the apply (a rollout's names the operation), the operation, the task
    /// rows that failed, and the audit entry of the move.
    async fn write(
        &self,
        lease: &Lease,
        to: ApplyState,
        resume: ResumeState,
        why: Option<String>,
    ) -> Result<(), StoreError>;
    /// Fenced completion of a pending request.
    async fn complete_request(&self, lease: &Lease, op: ControlOp) -> Result<(), StoreError>;
    /// Fenced failure of a pending request, with the reason shown to the user.
    async fn fail_request(
        &self,
        lease: &Lease,
        op: ControlOp,
        reason: &str,
    ) -> Result<(), StoreError>;
    async fn heartbeat(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Renew every lease a process holds at once, each still fenced by its own epoch (the
    /// MySQL store does it in one statement). Returns the leases found lost (the epoch moved
    /// on, or the row is gone), in the order given; every other lease was renewed. Leases, not
    /// applies: a process may hold several operations of one rollout.
    async fn heartbeat_all(&self, leases: &[Lease]) -> Result<Vec<Lease>, StoreError> {
        let mut lost = Vec::new();
        for lease in leases {
            match self.heartbeat(lease).await {
                Ok(()) => {}
                Err(StoreError::LeaseLost { .. } | StoreError::RowGone(_)) => {
                    lost.push(lease.clone())
                }
                Err(e) => return Err(e),
            }
        }
        Ok(lost)
    }
    /// Give the row back so a peer may claim it at once (graceful shutdown).
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Fenced: park a wait that gives its driver back (`waits::parks`). The lease is released
    /// on the apply and its operation, and both rest until `Rules::park_wake_ms` from now (by
    /// the store's clock); a request wakes them earlier (arms A9/O6). A state that does not
    /// park is refused and the lease kept.
    async fn park(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Which of `applies` have a pending control request (one read, however many): how a
    /// process watching waits without a driver hears of a request.
    async fn pending_requests(&self, applies: &[ApplyId]) -> Result<Vec<ApplyId>, StoreError>;
    /// Record a user's control request (unfenced, from the API).
    async fn request(&self, apply: ApplyId, op: ControlOp) -> Result<RequestOutcome, StoreError>;
    /// [`Store::request`], recording who asked (`cli:alice@db-7`, `api`, `dashboard`) for the
    /// timeline, where the store keeps it.
    async fn request_by(
        &self,
        apply: ApplyId,
        op: ControlOp,
        by: &str,
    ) -> Result<RequestOutcome, StoreError> {
        let _ = by;
        self.request(apply, op).await
    }
    /// Move expired `failed_retryable` applies to `failed`; returns how many.
    async fn expire_retryable(&self) -> Result<u32, StoreError>;
    /// Whether a claim (either path) or a retry expiry may find something now. Never false
    /// when one would: a superset, like the claim prefilters, so that an idle process polls
    /// with one cheap read.
    async fn may_have_work(&self) -> Result<bool, StoreError>;
    /// Fenced move of a non-terminal apply to `failed` with the reason shown to people, keeping
    /// its persisted engine state (the operator's answer to a drive that panicked: never
    /// retryable, so a panic cannot loop). A terminal row is refused, never rewritten.
    async fn fail_apply(&self, lease: &Lease, reason: &str) -> Result<(), StoreError>;
    /// Fenced by the lease of the operation being driven: what its engine last said of its
    /// work, on its task rows. Advisory — no rule reads it — so it changes no state.
    async fn record_progress(
        &self,
        lease: &Lease,
        progress: &progress::TaskProgress,
    ) -> Result<(), StoreError>;
    /// The webhook events recorded for `apply`, oldest first (see [`webhooks`]): each was
    /// written in the transaction of the change it reports. A store without an outbox has none.
    async fn webhook_events(
        &self,
        _apply: ApplyId,
    ) -> Result<Vec<webhooks::OutboxEvent>, StoreError> {
        Ok(Vec::new())
    }
}
