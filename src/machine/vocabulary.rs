//! The words the transition table is written in: events, engine calls, probes and effects.

use super::claim::ClaimArm;
use super::states::{ControlOp, EngineState};

/// A PlanetScale setup-phase observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetupSignal {
    BranchMissing,
    BranchReady,
    BranchChangesPending,
    BranchChangesApplied,
    BranchValidated,
    DeployRequestMissing,
    DeployRequestFound,
}

/// What a Spirit probe finds when no runner of this apply is alive (after a crash or restart).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum RunnerGone {
    /// The `_spirit_sentinel` table is still there: a deferred cutover was never done.
    SentinelKept,
    /// No sentinel and the target already has the reviewed schema.
    NothingLeft,
    /// No sentinel and work is left (resume from the checkpoint).
    WorkLeft,
}

/// An action the owner takes on its own, from the apply's options or a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AutoAction {
    /// A ready deploy request without `defer_deploy`.
    Deploy,
    /// At the cutover gate without `defer_cutover`.
    Cutover,
    /// In the revert window with `skip_revert`, or after its deadline.
    SkipRevert,
}

/// Something that moves an apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// The row was claimed through this arm.
    Claim(ClaimArm),
    /// A freshly claimed PlanetScale apply begins its setup.
    Dispatch,
    Setup(SetupSignal),
    /// The engine reports this normalised state for the apply's work.
    Engine(EngineState),
    RunnerGone(RunnerGone),
    /// The engine failed in a way that may succeed on retry.
    RetryableFailure,
    /// The engine refused for good (bad DDL, deleted deploy request, ...).
    PermanentFailure,
    /// The engine asks a person to check before anything runs again: the apply is held.
    NeedsPerson,
    /// A pending control request is processed by the owner.
    Control(ControlOp),
    Auto(AutoAction),
    /// `failed_retryable` past its budget or freshness.
    RetryExpired,
    /// The owner fails the apply closed, keeping its engine state for people to inspect: its
    /// drive panicked (never retryable, so a panic cannot loop), or its stored change no longer
    /// matches the fingerprint reviewed at submit (upstream #613: never run a drifted change).
    FailClosed,
    /// A rollout's operation that never started is withdrawn by a cancel of its apply: nobody
    /// holds it, and starting it only to cancel it would touch the engine for nothing.
    Withdraw,
}

impl Event {
    pub fn label(&self) -> String {
        match self {
            Event::Claim(arm) => format!("claim {}", arm.code()),
            Event::Dispatch => "dispatch".into(),
            Event::Setup(s) => format!("{s:?}").to_snake(),
            Event::Engine(s) => format!("engine {}", s.as_str()),
            Event::RunnerGone(g) => format!("runner gone, {}", format!("{g:?}").to_snake()),
            Event::RetryableFailure => "retryable failure".into(),
            Event::PermanentFailure => "permanent failure".into(),
            Event::NeedsPerson => "needs a person".into(),
            Event::Control(op) => format!("{} request", op.as_str()),
            Event::Auto(a) => format!("auto {}", format!("{a:?}").to_snake()),
            Event::RetryExpired => "retry expired".into(),
            Event::FailClosed => "fail closed".into(),
            Event::Withdraw => "withdraw".into(),
        }
    }
}

trait ToSnake {
    fn to_snake(&self) -> String;
}

impl ToSnake for String {
    fn to_snake(&self) -> String {
        let mut out = String::new();
        for (i, ch) in self.chars().enumerate() {
            if ch.is_uppercase() {
                if i > 0 {
                    out.push(' ');
                }
                out.extend(ch.to_lowercase());
            } else {
                out.push(ch);
            }
        }
        out
    }
}

/// An engine call with an external effect. Each is idempotent or guarded (see `effects`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum EngineCall {
    /// Idempotent: a deterministic name; "already taken" means reuse.
    CreateBranch,
    /// Idempotent: applies only the difference between branch and reviewed schema.
    ApplyBranchChanges,
    /// NOT idempotent upstream: guarded by the persisted intent and a look-up by branch.
    CreateDeployRequest,
    /// The provider refuses a second deploy of one request.
    Deploy,
    Cutover,
    Revert,
    SkipRevert,
    CancelDeployRequest,
    /// Re-running the same DDL resumes from the checkpoint in the target.
    StartRunner,
    /// Checkpoints, then stops; reports `stopped` when nothing runs.
    StopRunner,
    CancelRunner,
    /// `DROP TABLE IF EXISTS _spirit_sentinel`: idempotent.
    DropSentinel,
}

impl EngineCall {
    /// The call hands the apply's stored DDL to the engine (a Spirit run or resume, the
    /// branch's schema change). It is made only while that DDL still matches the fingerprint
    /// reviewed at submit; otherwise the apply fails closed (upstream #613).
    pub const fn hands_over_ddl(self) -> bool {
        matches!(
            self,
            EngineCall::StartRunner | EngineCall::ApplyBranchChanges
        )
    }
}

/// A read-only engine query that produces the next observation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Probe {
    GetBranch,
    DiffBranch,
    ValidateBranch,
    /// Look a deploy request up by the apply's deterministic branch name.
    FindDeployRequest,
    GetDeployRequest,
    RunnerStatus,
}

/// A field of the persisted engine resume state, recorded in the same fenced write as the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResumeField {
    /// The deterministic branch name is ours (recorded before the branch is created).
    Branch,
    /// A deploy request may be created from now on (recorded before creation).
    DeployRequestIntent,
    /// The id of the deploy request just found or created.
    DeployRequestId,
}

/// One step a transition makes, executed in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    /// Include this resume field in the next `Persist`.
    Record(ResumeField),
    /// Fenced write of the row's target state (and any recorded resume fields).
    Persist,
    Call(EngineCall),
    CompleteRequest(ControlOp),
}
