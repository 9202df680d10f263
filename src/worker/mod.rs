//! The sans-IO worker core. Given the claimed apply as persisted, its pending control requests
//! and the latest engine observation, [`Drive::next`] returns the next command — a fenced
//! write, a request completion, an engine call or probe, a wait, or the end of the drive. It
//! never performs I/O and never restates a rule: every state change is a row of
//! [`crate::machine::TABLE`].

mod core;
pub mod executor;
pub mod sync_exec;

pub use self::core::{Drive, Finish};
pub use self::executor::{run_drive, DriveReport, Immediate, Pacing};

use crate::machine::table::RunnerGone;
use crate::machine::{
    ApplyOptions, ApplyState, ControlOp, EngineCall, EngineKind, EngineState, PendingControls,
    Probe, Refusal,
};

pub type ApplyId = u64;

/// The engine resume state persisted on the operation row, written in the same fenced write as
/// the state it accompanies. Branch names are derived from the apply, so flags suffice.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct ResumeState {
    /// The deterministic branch is ours (recorded before it is created).
    #[serde(default)]
    pub branch: bool,
    /// A deploy request may exist for the branch (recorded before it is created).
    #[serde(default)]
    pub deploy_request_intent: bool,
    /// The deploy request found or created for the branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_request_id: Option<u64>,
}

/// The apply row as the owner last read or wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApplySnapshot {
    pub id: ApplyId,
    pub engine: EngineKind,
    pub state: ApplyState,
    pub epoch: u64,
    pub attempt: u32,
    pub options: ApplyOptions,
    pub resume: ResumeState,
}

/// Everything the core looks at when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DriveView {
    pub row: ApplySnapshot,
    pub controls: PendingControls,
    /// The revert window's deadline has passed (computed by the database clock).
    pub revert_window_expired: bool,
    /// Time since this driver's last successful heartbeat, by the driver's own clock.
    pub heartbeat_ok_age_ms: u64,
}

/// A branch as a probe sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BranchStatus {
    Missing,
    Creating,
    Ready,
}

/// A Spirit runner as a probe sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RunnerStatus {
    Gone(RunnerGone),
    Copying,
    WaitingOnSentinel,
    Completed,
    Failed { retryable: bool },
    Stopped,
    Cancelled,
}

/// Why an engine call or probe did not produce a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EngineFault {
    /// Timeout, 5xx, connection reset: the call may or may not have happened. Retry later.
    Transient,
    /// The engine refuses for good (bad DDL, unsupported database).
    Permanent,
    /// The deploy request or branch the apply relies on is gone.
    NotFound,
    /// The engine has seen a newer lease epoch for this apply: we were displaced.
    StaleEpoch,
}

/// An engine reply, normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Observation {
    Branch(BranchStatus),
    BranchDiff { pending: bool },
    BranchValid,
    NoDeployRequest,
    DeployRequest { id: u64, state: EngineState },
    Runner(RunnerStatus),
    Accepted,
    Fault(EngineFault),
}

/// Why the core asks the driver to wait before the next decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitFor {
    /// Nothing changed; poll again after the poll interval.
    Poll,
    /// Something failed transiently; back off before retrying.
    Backoff,
}

/// One thing for the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Fenced write of the state and resume state (`WHERE id = ? AND lease_epoch = ?`).
    Write {
        to: ApplyState,
        resume: ResumeState,
    },
    Complete(ControlOp),
    Fail(ControlOp, Refusal),
    Call(EngineCall),
    Probe(Probe),
    Wait(WaitFor),
    Finish(Finish),
}

/// The result of a fenced write or a request completion, as the store reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteOutcome {
    Ok,
    /// 0 rows, and a re-read shows another epoch: the lease is gone.
    LeaseLost,
    /// The row no longer exists.
    RowGone,
    /// Re-activating the apply would give its target two active applies.
    TargetBusy,
    /// The store did not answer; nothing is known to have been written.
    Unavailable,
}
