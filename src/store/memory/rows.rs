//! The rows the memory store keeps: applies, their operations and tasks, control requests and
//! the audit log, with what a driver reads of them.

use super::*;

/// One apply row, as the memory store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRow {
    pub id: ApplyId,
    pub spec: Arc<ApplySpec>,
    pub engine: EngineKind,
    pub state: ApplyState,
    pub options: ApplyOptions,
    pub resume: ResumeState,
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_epoch: u64,
    pub lease_acquired_at: Option<u64>,
    /// Position of the last claim in the store's sequence of changes (orders a claim against a
    /// request made in the same millisecond, as the database's microsecond clock does).
    pub lease_acquired_seq: u64,
    pub heartbeat_at: Option<u64>,
    /// Set while the row rests in a parked wait: when it wakes (`Store::park`).
    pub parked_until: Option<u64>,
    pub updated_at: u64,
    pub state_entered_at: u64,
    pub created_at: u64,
    pub error_message: Option<String>,
    /// A rollout's policy and release latch; `None` for an apply without deployments.
    pub rollout: Option<RolloutPolicy>,
    /// The operation rows, in rollout order: one for an apply without deployments (its state
    /// mirrors the apply's; its lease is the apply's), one per deployment and table step for a
    /// rollout (each with its own lease; the apply's state is derived from them, and its
    /// `lease_epoch` is the counter their epochs are drawn from).
    pub operations: Vec<MemoryOperation>,
    /// One task per DDL statement of each operation, in order.
    pub tasks: Vec<MemoryTask>,
}

/// An operation row. For an apply without deployments its lease is taken, renewed and released
/// together with the parent's, at the same epoch, and the apply row holds its resume state;
/// a rollout's operations hold their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryOperation {
    pub id: OperationId,
    /// The deployment's name and position in the plan (`""` and 0 without deployments).
    pub deployment: String,
    pub deployment_index: u32,
    /// The table step within the deployment (0 without table steps).
    pub step: u32,
    /// `step-N` for a table step, `""` for a whole deployment (`rollout::operation_key`).
    pub key: String,
    /// What the operation runs: its own identifier, deployment and statements.
    pub spec: Arc<ApplySpec>,
    pub state: ApplyState,
    pub resume: ResumeState,
    pub state_entered_at: u64,
    pub error_message: Option<String>,
    /// Failed closed (an inconsistency, not an engine failure).
    pub failed_closed: bool,
    /// A rollout's requests this operation has done its part of, with the request's issue
    /// sequence: it no longer sees them while others still act on them.
    pub acked: Vec<(ControlOp, u64)>,
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_epoch: u64,
    pub lease_acquired_at: Option<u64>,
    pub lease_acquired_seq: u64,
    pub heartbeat_at: Option<u64>,
    pub parked_until: Option<u64>,
    pub updated_at: u64,
    pub created_at: u64,
}

/// One task row.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryTask {
    /// Index of its operation in `MemoryRow::operations`.
    pub operation: usize,
    pub state: TaskState,
    pub attempt: u32,
    /// The table its statement touches.
    pub table: Option<String>,
    /// Why it failed, when it did.
    pub error_message: Option<String>,
    /// What the engine last said of the work (`Store::record_progress`).
    pub progress: Option<crate::store::progress::TaskProgress>,
}

/// One control request row (unique per apply and operation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRequest {
    pub status: ControlStatus,
    pub updated_at: u64,
    /// Position of the last (re)issue in the store's sequence of changes.
    pub updated_seq: u64,
    pub message: Option<String>,
    /// When it was last asked for (`updated_at` also moves when it ends).
    pub requested_at: u64,
    /// Who last asked (`cli:alice@db-7`, `api`, `dashboard`), when known.
    pub requested_by: Option<String>,
}

/// One audit entry: every state change with the epoch and owner that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub apply: ApplyId,
    /// The rollout operation that moved; `None` for an apply without deployments, and for a
    /// rollout's derived parent state (cause `derived`).
    pub operation: Option<OperationId>,
    pub from: ApplyState,
    pub to: ApplyState,
    pub epoch: u64,
    pub owner: Option<String>,
    pub at_ms: u64,
    pub cause: String,
    /// Why, for a move into a failed state: the engine's words.
    pub detail: Option<String>,
}

impl MemoryRow {
    /// What the driver of operation `i` reads: the apply row for an apply without
    /// deployments, the operation's own record for a rollout's.
    pub fn record_of(&self, i: usize) -> ApplyRecord {
        match self.rollout {
            None => self.record(),
            Some(_) => member_record(self, i),
        }
    }

    /// The operations as the rollout rules see them, in rollout order.
    pub fn members(&self) -> Vec<crate::machine::rollout::Member> {
        rollout::members(self)
    }

    /// Whether operation `i` may cut over now (always, without deployments).
    pub fn cutover_open(&self, i: usize) -> bool {
        self.rollout.is_none() || rollout::cutover_open(&Rules::default(), self, i)
    }

    /// The operation a lease at `epoch` holds (the only one, without deployments).
    pub fn operation_at(&self, epoch: u64) -> Option<usize> {
        match self.rollout {
            None => Some(0),
            Some(_) => self.operations.iter().position(|o| o.lease_epoch == epoch),
        }
    }

    /// What a driver knows of this row.
    pub fn record(&self) -> ApplyRecord {
        ApplyRecord {
            row: ApplySnapshot {
                id: self.id,
                operation: self.operations[0].id,
                engine: self.engine,
                state: self.state,
                epoch: self.lease_epoch,
                attempt: self.attempt,
                options: self.options,
                resume: self.resume,
            },
            spec: self.spec.clone(),
        }
    }
}
