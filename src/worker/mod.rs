//! The sans-IO worker core. Given the claimed apply as persisted, its pending control requests
//! and the latest engine observation, [`Drive::next`] returns the next command — a fenced
//! write, a request completion, an engine call or probe, a wait, or the end of the drive. It
//! never performs I/O and never restates a rule: every state change is a row of
//! [`crate::machine::TABLE`].

mod core;

pub use self::core::{Drive, Finish};
pub use crate::machine::apply::{ApplyId, ApplySnapshot, ResumeState, WriteOutcome};
pub use crate::machine::observe::{BranchStatus, EngineFault, Observation, RunnerStatus};

use crate::machine::{ApplyState, ControlOp, EngineCall, PendingControls, Probe, Refusal};

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
