//! What an engine reply says once normalised: the worker core maps these to table events. Types
//! only; the engine adapters produce them, the core reads them.

use super::states::EngineState;
use super::table::RunnerGone;

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
    Failed {
        retryable: bool,
    },
    /// The runner ended asking that a person check the target before anything runs again
    /// (Spirit's "ownership ambiguous": a DDL or RENAME may have committed unseen). Neither a
    /// retry nor a failure: the apply is held for a person.
    NeedsPerson,
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

impl Observation {
    /// What a failure this observation leads to means, for when the engine said no more: the
    /// reason a failed state is written with is never empty.
    pub const fn failure_account(self) -> &'static str {
        match self {
            Observation::Fault(EngineFault::NotFound) => {
                "the engine no longer has the branch or deploy request the apply relies on"
            }
            Observation::Fault(EngineFault::Permanent) => "the engine refused the change for good",
            Observation::Runner(RunnerStatus::Failed { retryable: true }) => {
                "the schema-change runner failed; the apply will be retried"
            }
            Observation::Runner(RunnerStatus::Failed { retryable: false }) => {
                "the schema-change runner failed"
            }
            Observation::Runner(RunnerStatus::NeedsPerson) => {
                "the schema-change runner asks a person to check the target before it runs again"
            }
            Observation::DeployRequest { .. } => "the deploy request failed",
            _ => "the engine reported a failure",
        }
    }
}
