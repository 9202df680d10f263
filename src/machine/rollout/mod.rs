//! Rollouts: one reviewed change across several deployments (and, for big changes, table by
//! table), as operations of one apply. The rules here are pure and are the only statement of
//! them: how operations are keyed and ordered, when an operation may start (`gates`) and cut
//! over, which never-started operations are orphaned, and the parent apply's state as a
//! function of its operations and the policy (`derive`).
//!
//! Upstream's rollouts (the reference this follows) went through several fixes of its parent
//! derivation; each is a property tested here: a continuable failure delays the verdict, settled
//! is not terminal, a fail-closed operation dominates, pause holds only while later work remains,
//! orphans count as settled, and the driver cap never gates recovery.

mod derive;
mod gates;
mod plan;
pub mod requests;
mod rules;

pub use derive::derive_parent;
pub use gates::{cutover_gate, is_orphaned, member_gate, start_gate, CutoverGate, StartGate};
pub use plan::{PlanRefusal, PlannedOperation, RolloutPlan, MAX_DEPLOYMENT, MAX_OPERATIONS};

use super::states::ApplyState;

/// How the operations of a rollout take turns.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CutoverPolicy {
    /// An operation starts only once every earlier one has completed.
    #[default]
    Rolling,
    /// Every operation copies; none cuts over before all are at the cutover gate; then they cut
    /// over one at a time, in order. With table steps the barrier is per step: every
    /// deployment's step N reaches the gate before any cuts over.
    Barrier,
    /// Up to `max_drivers` operations copy at once; cutovers one at a time, in order.
    Parallel,
}

/// What a failed operation does to the rest of the rollout.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// No new operation starts; those already started run on; the verdict is `failed`.
    #[default]
    Halt,
    /// Later operations still run; the verdict is still `failed` once everything settled.
    Continue,
    /// The rollout holds (`paused`) while later work remains, until a person releases it (then
    /// it continues) or stops or cancels it.
    Pause,
}

impl CutoverPolicy {
    pub const ALL: [CutoverPolicy; 3] = [
        CutoverPolicy::Rolling,
        CutoverPolicy::Barrier,
        CutoverPolicy::Parallel,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            CutoverPolicy::Rolling => "rolling",
            CutoverPolicy::Barrier => "barrier",
            CutoverPolicy::Parallel => "parallel",
        }
    }
}

impl OnFailure {
    pub const ALL: [OnFailure; 3] = [OnFailure::Halt, OnFailure::Continue, OnFailure::Pause];

    pub const fn as_str(self) -> &'static str {
        match self {
            OnFailure::Halt => "halt",
            OnFailure::Continue => "continue",
            OnFailure::Pause => "pause",
        }
    }

    /// A stored value read back: an unknown one behaves like `halt` (fail closed).
    pub fn read_stored(text: &str) -> OnFailure {
        OnFailure::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .unwrap_or(OnFailure::Halt)
    }
}

/// A rollout's policy, fixed at submit, and the release latch a person sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RolloutPolicy {
    pub cutover: CutoverPolicy,
    pub on_failure: OnFailure,
    /// How many operations may hold a driver for engine work at once (start gates only).
    pub max_drivers: u32,
    /// Released from a `pause` hold: one-way; afterwards a failure behaves like `continue`.
    pub released: bool,
    /// Stopped by a person: no operation starts until a start (a stop acts on the whole
    /// rollout, also when nothing is running to stop).
    pub held: bool,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            cutover: CutoverPolicy::Rolling,
            on_failure: OnFailure::Halt,
            max_drivers: 1,
            released: false,
            held: false,
        }
    }
}

/// How a failure is handled now: `pause` becomes `continue` once released, and a fail-closed
/// operation turns every policy into `halt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureMode {
    Halt,
    Continue,
    Hold,
}

impl RolloutPolicy {
    pub(crate) fn failure_mode(&self, failed_closed: bool) -> FailureMode {
        match (failed_closed, self.on_failure, self.released) {
            (true, _, _) | (false, OnFailure::Halt, _) => FailureMode::Halt,
            (false, OnFailure::Continue, _) | (false, OnFailure::Pause, true) => {
                FailureMode::Continue
            }
            (false, OnFailure::Pause, false) => FailureMode::Hold,
        }
    }
}

/// One operation of a rollout as the rules see it. Operations are given in rollout order:
/// by deployment (its position in the plan), then by table step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Member {
    /// The deployment's position in the plan.
    pub deployment: u32,
    /// The table step within the deployment (0 without table steps).
    pub step: u32,
    pub state: ApplyState,
    /// The operation failed closed (an inconsistency, not an engine failure): it dominates
    /// every policy.
    pub failed_closed: bool,
}

impl Member {
    pub const fn new(deployment: u32, step: u32, state: ApplyState) -> Member {
        Member {
            deployment,
            step,
            state,
            failed_closed: false,
        }
    }

    /// Earlier in rollout order: by deployment, then by table step.
    fn before(&self, other: &Member) -> bool {
        (self.deployment, self.step) < (other.deployment, other.step)
    }

    /// Cuts over before `other`. A rolling rollout finishes one deployment before the next, so
    /// its order is the rollout order; otherwise deployments move through the table steps
    /// together, so step by step, then by deployment (in rollout order a later step of an
    /// earlier deployment would wait on a step that waits on it).
    fn cuts_over_before(&self, other: &Member, policy: CutoverPolicy) -> bool {
        match policy {
            CutoverPolicy::Rolling => self.before(other),
            CutoverPolicy::Barrier | CutoverPolicy::Parallel => {
                (self.step, self.deployment) < (other.step, other.deployment)
            }
        }
    }

    fn failed(&self) -> bool {
        self.state == ApplyState::Failed
    }

    /// A table step that ended without its change: later steps of its deployment never run.
    fn ends_its_steps(&self) -> bool {
        matches!(
            self.state,
            ApplyState::Failed | ApplyState::Cancelled | ApplyState::Reverted
        )
    }

    /// Terminal in the claim sense: nothing more happens to it (`stopped` is not: a start
    /// resumes it, and it keeps its engine state on the target).
    fn terminal(&self) -> bool {
        matches!(
            self.state,
            ApplyState::Completed
                | ApplyState::Failed
                | ApplyState::Cancelled
                | ApplyState::Reverted
        )
    }

    /// Copying: started, not finished, not stopped, and not yet at the cutover gate. What the
    /// driver cap counts. An operation at the gate or past it is not copying: counting the gate
    /// would never let a barrier whose operations outnumber the cap fill. A deploy waiting to
    /// start counts, so a deferred deploy keeps its slot.
    fn in_flight(&self) -> bool {
        !self.terminal()
            && !matches!(
                self.state,
                ApplyState::Pending
                    | ApplyState::Stopped
                    | ApplyState::WaitingForCutover
                    | ApplyState::CuttingOver
                    | ApplyState::RevertWindow
                    | ApplyState::SkippingRevert
                    | ApplyState::Reverting
            )
    }

    /// The cutover is behind it (or it will never cut over).
    fn past_cutover(&self) -> bool {
        self.terminal()
            || matches!(
                self.state,
                ApplyState::RevertWindow | ApplyState::SkippingRevert | ApplyState::Reverting
            )
    }
}

/// The operation key of a table step (`step-N`, from 1), or `""` for a whole deployment, as
/// stored in `apply_operations.operation_key`.
pub fn operation_key(table_steps: bool, step: u32) -> String {
    if table_steps {
        format!("step-{}", step + 1)
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests;
