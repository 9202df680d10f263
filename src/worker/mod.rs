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
    /// The stored DDL still matches the fingerprint reviewed at submit (`ddl::pinned`).
    pub change_reviewed: bool,
    /// The rollout lets this operation cut over now (see [`crate::machine::apply::DriveInputs`]).
    pub cutover_open: bool,
}

/// The engine's last reply, kept by a driver beside its drive (the drive holds no text): a
/// move into a failed state is written with the engine's words when it gave any, else with
/// what the observation means — never without a reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureAccount(Option<(Observation, Option<String>)>);

/// The longest reason kept: engine output is untrusted and may be long; a reason cut here
/// still fits the TEXT columns it is written to many times over.
pub const MAX_REASON_BYTES: usize = 4096;

impl FailureAccount {
    pub fn heard(&mut self, obs: Observation, why: Option<String>) {
        self.0 = Some((obs, why));
    }

    /// The reason a write into `to` carries: `Some` exactly when `to` is a failed state or the
    /// hold `paused` ([`ApplyState::is_written_with_reason`]). The
    /// account is kept until the next reply: a write retried after the store was unavailable
    /// carries the same words.
    pub fn reason_for(&self, to: ApplyState) -> Option<String> {
        if !to.is_written_with_reason() {
            return None;
        }
        let why = match &self.0 {
            Some((_, Some(why))) => why.clone(),
            Some((obs, None)) => obs.failure_account().to_string(),
            None => "the apply failed without a reply from the engine".to_string(),
        };
        Some(cut(why, MAX_REASON_BYTES))
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
fn cut(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
    text
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
    /// Fenced move to the table's fail-closed state, keeping the resume state, with the reason
    /// shown to people (`Store::fail_apply`).
    FailClosed(FailCause),
    Finish(Finish),
}

/// Why the core fails an apply closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailCause {
    /// The stored DDL no longer matches its reviewed fingerprint: it is never handed to an
    /// engine (upstream #613).
    ChangeDrifted,
}

impl FailCause {
    pub const fn message(self) -> &'static str {
        match self {
            FailCause::ChangeDrifted => {
                "the stored change no longer matches the change reviewed at submit; it was not run"
            }
        }
    }

    /// The reason recorded with the apply: the message, and what the read found.
    pub fn reason(self, read: &Read) -> String {
        match (self, &read.pin) {
            (FailCause::ChangeDrifted, Err(why)) => format!("{}: {why}", self.message()),
            (FailCause::ChangeDrifted, Ok(())) => self.message().to_string(),
        }
    }
}

/// One read of the owned apply as the core sees it, with what the pin check found.
pub struct Read {
    pub view: DriveView,
    pub pin: Result<(), crate::ddl::PinError>,
}

impl Read {
    /// The drive's view of what its owner just read: the stored change is checked against its
    /// reviewed fingerprint on every read, so a change altered mid-drive is seen before the
    /// next engine start.
    pub fn of(inputs: &crate::machine::apply::DriveInputs, heartbeat_ok_age_ms: u64) -> Read {
        let record = &inputs.record;
        let pin = crate::ddl::pinned(record.row.engine, &record.spec);
        Read {
            view: DriveView {
                row: record.row,
                controls: inputs.controls,
                revert_window_expired: inputs.revert_window_expired,
                heartbeat_ok_age_ms,
                change_reviewed: pin.is_ok(),
                cutover_open: inputs.cutover_open,
            },
            pin,
        }
    }
}
