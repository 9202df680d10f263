//! The transition table as data: `(engine, from, event) -> (to, effects)`.
//!
//! The worker core, the model and the simulator all step through [`TABLE`]; the state diagram
//! is rendered from it. Rows are built by listing states explicitly — the builder below is the
//! table's text, not logic that runs per transition.
//!
//! Over 700 lines because each row still spans several lines; the rows are to become one line
//! each, with the vocabulary types in a file of their own.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::claim::{ClaimArm, ClaimClass, REVERT_PHASE, SETUP_PHASE};
use super::rules::{Mutant, Rules};
use super::states::{ApplyState, ApplyState::*, ControlOp, EngineKind, EngineState};

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
    /// A pending control request is processed by the owner.
    Control(ControlOp),
    Auto(AutoAction),
    /// `failed_retryable` past its budget or freshness.
    RetryExpired,
    /// The operator itself failed while driving the apply (a drive that panicked): the apply
    /// fails for good, never retryable, so a panic cannot loop.
    OperatorFailure,
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
            Event::Control(op) => format!("{} request", op.as_str()),
            Event::Auto(a) => format!("auto {}", format!("{a:?}").to_snake()),
            Event::RetryExpired => "retry expired".into(),
            Event::OperatorFailure => "operator failure".into(),
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

pub type RowId = u16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub engine: EngineKind,
    pub from: ApplyState,
    pub event: Event,
    pub to: ApplyState,
    pub effects: &'static [Effect],
    /// A row that exists only while this historical bug is switched on.
    pub only_with: Option<Mutant>,
}

pub struct Table {
    pub rows: Vec<Row>,
    index: BTreeMap<(EngineKind, ApplyState, Event), Vec<RowId>>,
}

impl Table {
    /// The row for a step under the given rules, if the step is legal.
    pub fn lookup(
        &self,
        rules: &Rules,
        engine: EngineKind,
        from: ApplyState,
        event: Event,
    ) -> Option<RowId> {
        let ids = self.index.get(&(engine, from, event))?;
        // A mutant row shadows the shipped one it replaces.
        ids.iter()
            .copied()
            .find(|id| matches!(self.rows[*id as usize].only_with, Some(m) if rules.has(m)))
            .or_else(|| {
                ids.iter()
                    .copied()
                    .find(|id| self.rows[*id as usize].only_with.is_none())
            })
    }

    pub fn row(&self, id: RowId) -> &Row {
        &self.rows[id as usize]
    }

    /// Shipped rows only, in table order.
    pub fn shipped(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.only_with.is_none())
    }

    /// Whether `from -> to` is a step of some shipped row of this engine.
    pub fn is_shipped_step(&self, engine: EngineKind, from: ApplyState, to: ApplyState) -> bool {
        self.shipped()
            .any(|r| r.engine == engine && r.from == from && r.to == to)
    }

    /// Every distinct event in the shipped table.
    pub fn events(&self) -> Vec<Event> {
        let mut v: Vec<Event> = self.shipped().map(|r| r.event).collect();
        v.sort();
        v.dedup();
        v
    }
}

pub static TABLE: LazyLock<Table> = LazyLock::new(build);

use Effect::{Call, CompleteRequest, Persist, Record};
use EngineCall as C;

const PERSIST: &[Effect] = &[Persist];
const NONE: &[Effect] = &[];

/// PlanetScale states in which a deploy request exists and is polled.
const PS_WITH_DEPLOY_REQUEST: &[ApplyState] = &[
    ValidatingDeployRequest,
    Running,
    WaitingForDeploy,
    WaitingForCutover,
    CuttingOver,
    RevertWindow,
    SkippingRevert,
    Reverting,
];

/// PlanetScale states that a cancel may end (nothing deployed yet, or not yet cut over).
const PS_CANCELLABLE: &[ApplyState] = &[
    Running,
    PreparingBranch,
    ApplyingBranchChanges,
    ValidatingBranch,
    CreatingDeployRequest,
    ValidatingDeployRequest,
    WaitingForDeploy,
    WaitingForCutover,
];

/// Spirit states with live work (a runner may exist).
const SPIRIT_LIVE: &[ApplyState] = &[
    Running,
    Resuming,
    WaitingForCutover,
    Recovering,
    CuttingOver,
];

#[derive(Default)]
struct Builder {
    rows: Vec<Row>,
}

impl Builder {
    fn add(
        &mut self,
        engine: EngineKind,
        from: &[ApplyState],
        event: Event,
        to: Option<ApplyState>,
        effects: &'static [Effect],
    ) {
        for f in from {
            self.rows.push(Row {
                engine,
                from: *f,
                event,
                to: to.unwrap_or(*f),
                effects,
                only_with: None,
            });
        }
    }
}

fn build() -> Table {
    let mut b = Builder::default();
    let both = [EngineKind::PlanetScale, EngineKind::Spirit];
    let ps = EngineKind::PlanetScale;
    let sp = EngineKind::Spirit;
    let same = None;

    // Claims, for both engines. A claim is itself the fenced write that takes the lease.
    for e in both {
        b.add(
            e,
            &[Pending],
            Event::Claim(ClaimArm::A1Pending),
            Some(Running),
            NONE,
        );
        b.add(
            e,
            &[Pending],
            Event::Claim(ClaimArm::A4PendingStart),
            Some(Running),
            NONE,
        );
        b.add(
            e,
            &[FailedRetryable],
            Event::Claim(ClaimArm::A3Retry),
            Some(Running),
            NONE,
        );
        b.add(
            e,
            &[Stopped],
            Event::Claim(ClaimArm::A7StoppedCancel),
            same,
            NONE,
        );
        b.add(
            e,
            &[Paused],
            Event::Claim(ClaimArm::A8PausedControl),
            same,
            NONE,
        );
        b.add(
            e,
            &[FailedRetryable],
            Event::RetryExpired,
            Some(Failed),
            NONE,
        );
        let open: Vec<ApplyState> = ApplyState::ALL
            .iter()
            .copied()
            .filter(|s| !s.is_terminal())
            .collect();
        b.add(e, &open, Event::OperatorFailure, Some(Failed), NONE);
    }
    // A single-operation apply is never degraded, and a PlanetScale apply never resumes from a
    // stop: a reclaim normalises both to `running`, where the drive knows what to do.
    b.add(
        ps,
        &[Resuming, RunningDegraded],
        Event::Claim(ClaimArm::A2Stale),
        Some(Running),
        NONE,
    );
    b.add(
        sp,
        &[RunningDegraded],
        Event::Claim(ClaimArm::A2Stale),
        Some(Running),
        NONE,
    );
    let ps_stale: Vec<ApplyState> = [Running]
        .into_iter()
        .chain(SETUP_PHASE.iter().copied())
        .chain([
            WaitingForDeploy,
            WaitingForCutover,
            CuttingOver,
            RevertWindow,
            SkippingRevert,
            Reverting,
        ])
        .collect();
    b.add(ps, &ps_stale, Event::Claim(ClaimArm::A2Stale), same, NONE);
    b.add(
        ps,
        &[WaitingForDeploy],
        Event::Claim(ClaimArm::A6DeferredDeployStart),
        same,
        NONE,
    );
    b.add(sp, SPIRIT_LIVE, Event::Claim(ClaimArm::A2Stale), same, NONE);
    b.add(
        sp,
        &[Stopped],
        Event::Claim(ClaimArm::A5StoppedStart),
        Some(Resuming),
        NONE,
    );

    // ---- PlanetScale setup: every intent is persisted before the effect it guards.
    b.add(
        ps,
        &[Running],
        Event::Dispatch,
        Some(PreparingBranch),
        &[Record(ResumeField::Branch), Persist],
    );
    b.add(
        ps,
        &[PreparingBranch],
        Event::Setup(SetupSignal::BranchMissing),
        same,
        &[Call(C::CreateBranch)],
    );
    b.add(
        ps,
        &[PreparingBranch],
        Event::Setup(SetupSignal::BranchReady),
        Some(ApplyingBranchChanges),
        PERSIST,
    );
    b.add(
        ps,
        &[ApplyingBranchChanges],
        Event::Setup(SetupSignal::BranchChangesPending),
        same,
        &[Call(C::ApplyBranchChanges)],
    );
    b.add(
        ps,
        &[ApplyingBranchChanges],
        Event::Setup(SetupSignal::BranchChangesApplied),
        Some(ValidatingBranch),
        PERSIST,
    );
    b.add(
        ps,
        &[ValidatingBranch],
        Event::Setup(SetupSignal::BranchValidated),
        Some(CreatingDeployRequest),
        &[Record(ResumeField::DeployRequestIntent), Persist],
    );
    b.add(
        ps,
        &[CreatingDeployRequest],
        Event::Setup(SetupSignal::DeployRequestMissing),
        same,
        &[Call(C::CreateDeployRequest)],
    );
    b.add(
        ps,
        &[CreatingDeployRequest],
        Event::Setup(SetupSignal::DeployRequestFound),
        Some(ValidatingDeployRequest),
        &[Record(ResumeField::DeployRequestId), Persist],
    );
    // #186 mutant: the deploy-request intent is written only after the creating call.
    b.rows.push(Row {
        engine: ps,
        from: ValidatingBranch,
        event: Event::Setup(SetupSignal::BranchValidated),
        to: CreatingDeployRequest,
        effects: &[
            Call(C::CreateDeployRequest),
            Record(ResumeField::DeployRequestIntent),
            Persist,
        ],
        only_with: Some(Mutant::StateNotSetBeforeEngineCall),
    });

    // #265 mutant: a reclaimed apply that lost sight of its persisted deploy request starts its
    // setup over (and, as upstream's fresh path did, creates without looking up).
    for from in PS_WITH_DEPLOY_REQUEST
        .iter()
        .copied()
        .filter(|s| *s != Running)
    {
        b.rows.push(Row {
            engine: ps,
            from,
            event: Event::Dispatch,
            to: PreparingBranch,
            effects: &[Record(ResumeField::Branch), Persist],
            only_with: Some(Mutant::ResumeWithoutEngineState),
        });
    }

    // ---- PlanetScale deploy request (reference §3.3).
    b.add(
        ps,
        &[ValidatingDeployRequest],
        Event::Engine(EngineState::WaitingForDeploy),
        Some(WaitingForDeploy),
        PERSIST,
    );
    b.add(
        ps,
        &[WaitingForDeploy],
        Event::Auto(AutoAction::Deploy),
        Some(Running),
        &[Call(C::Deploy), Persist],
    );
    b.add(
        ps,
        &[WaitingForDeploy],
        Event::Control(ControlOp::Start),
        Some(Running),
        &[Call(C::Deploy), Persist, CompleteRequest(ControlOp::Start)],
    );
    b.add(
        ps,
        &[ValidatingDeployRequest, WaitingForDeploy],
        Event::Engine(EngineState::Running),
        Some(Running),
        PERSIST,
    );
    // Running means a deploy was intended: a request still `ready` lost its deploy call (#306).
    b.add(
        ps,
        &[Running],
        Event::Engine(EngineState::WaitingForDeploy),
        same,
        &[Call(C::Deploy)],
    );
    b.add(
        ps,
        &[ValidatingDeployRequest, Running, WaitingForDeploy],
        Event::Engine(EngineState::WaitingForCutover),
        Some(WaitingForCutover),
        PERSIST,
    );
    b.add(
        ps,
        &[WaitingForCutover],
        Event::Auto(AutoAction::Cutover),
        Some(CuttingOver),
        &[Persist, Call(C::Cutover)],
    );
    b.add(
        ps,
        &[WaitingForCutover],
        Event::Control(ControlOp::Cutover),
        Some(CuttingOver),
        &[
            Persist,
            Call(C::Cutover),
            CompleteRequest(ControlOp::Cutover),
        ],
    );
    // A crash after the cutover intent was persisted but before the call: issue it again.
    b.add(
        ps,
        &[CuttingOver],
        Event::Engine(EngineState::WaitingForCutover),
        same,
        &[Call(C::Cutover)],
    );
    b.add(
        ps,
        &[
            ValidatingDeployRequest,
            Running,
            WaitingForDeploy,
            WaitingForCutover,
        ],
        Event::Engine(EngineState::CuttingOver),
        Some(CuttingOver),
        PERSIST,
    );
    b.add(
        ps,
        &[
            ValidatingDeployRequest,
            Running,
            WaitingForDeploy,
            WaitingForCutover,
            CuttingOver,
        ],
        Event::Engine(EngineState::RevertWindow),
        Some(RevertWindow),
        PERSIST,
    );
    b.add(
        ps,
        &[RevertWindow],
        Event::Auto(AutoAction::SkipRevert),
        Some(SkippingRevert),
        &[Persist, Call(C::SkipRevert)],
    );
    b.add(
        ps,
        &[RevertWindow],
        Event::Control(ControlOp::SkipRevert),
        Some(SkippingRevert),
        &[
            Persist,
            Call(C::SkipRevert),
            CompleteRequest(ControlOp::SkipRevert),
        ],
    );
    b.add(
        ps,
        &[SkippingRevert],
        Event::Engine(EngineState::RevertWindow),
        same,
        &[Call(C::SkipRevert)],
    );
    b.add(
        ps,
        &[RevertWindow],
        Event::Control(ControlOp::Revert),
        Some(Reverting),
        &[Persist, Call(C::Revert), CompleteRequest(ControlOp::Revert)],
    );
    b.add(
        ps,
        &[Reverting],
        Event::Engine(EngineState::RevertWindow),
        same,
        &[Call(C::Revert)],
    );
    b.add(
        ps,
        &[RevertWindow],
        Event::Engine(EngineState::Reverting),
        Some(Reverting),
        PERSIST,
    );
    b.add(
        ps,
        &[
            ValidatingDeployRequest,
            Running,
            WaitingForDeploy,
            WaitingForCutover,
            CuttingOver,
            RevertWindow,
            SkippingRevert,
        ],
        Event::Engine(EngineState::Completed),
        Some(Completed),
        PERSIST,
    );
    b.add(
        ps,
        &[RevertWindow, Reverting],
        Event::Engine(EngineState::Reverted),
        Some(Reverted),
        PERSIST,
    );
    b.add(
        ps,
        PS_WITH_DEPLOY_REQUEST,
        Event::Engine(EngineState::Failed),
        Some(Failed),
        PERSIST,
    );
    // A cancel is recorded only once the engine confirms it (S7); the confirming observation
    // completes the request.
    let mut ps_cancelled: Vec<ApplyState> = PS_WITH_DEPLOY_REQUEST
        .iter()
        .chain(SETUP_PHASE)
        .copied()
        .collect();
    ps_cancelled.sort();
    ps_cancelled.dedup();
    b.add(
        ps,
        &ps_cancelled,
        Event::Engine(EngineState::Cancelled),
        Some(Cancelled),
        &[Persist, CompleteRequest(ControlOp::Cancel)],
    );
    b.add(
        ps,
        &[CreatingDeployRequest],
        Event::Engine(EngineState::Failed),
        Some(Failed),
        PERSIST,
    );
    // `cutting_over` too: a deploy request that vanishes mid-cutover must end the apply, not
    // leave its owner polling a request that no longer exists.
    let ps_active: Vec<ApplyState> = PS_CANCELLABLE
        .iter()
        .chain(&[CuttingOver])
        .chain(REVERT_PHASE)
        .copied()
        .collect();
    b.add(
        ps,
        &ps_active,
        Event::PermanentFailure,
        Some(Failed),
        PERSIST,
    );
    // PlanetScale errors are permanent; a retryable one still ends the apply (reference §2.1).
    b.add(
        ps,
        &ps_active,
        Event::RetryableFailure,
        Some(Failed),
        PERSIST,
    );
    b.add(
        ps,
        PS_CANCELLABLE,
        Event::Control(ControlOp::Cancel),
        same,
        &[Call(C::CancelDeployRequest)],
    );
    // #269 mutant: a stop in the revert window records a deployed change as cancelled.
    b.rows.push(Row {
        engine: ps,
        from: RevertWindow,
        event: Event::Control(ControlOp::Stop),
        to: Cancelled,
        effects: &[
            Call(C::CancelDeployRequest),
            Persist,
            CompleteRequest(ControlOp::Stop),
        ],
        only_with: Some(Mutant::StopInRevertWindow),
    });

    // ---- Spirit (reference §3.4): one runner per apply; deferred cutover through the sentinel.
    b.add(
        sp,
        &[Running, Resuming, Recovering, CuttingOver],
        Event::RunnerGone(RunnerGone::WorkLeft),
        same,
        &[Call(C::StartRunner)],
    );
    b.add(
        sp,
        &[Running, Resuming, Recovering, CuttingOver],
        Event::RunnerGone(RunnerGone::SentinelKept),
        same,
        &[Call(C::StartRunner)],
    );
    b.add(
        sp,
        SPIRIT_LIVE,
        Event::RunnerGone(RunnerGone::NothingLeft),
        Some(Completed),
        PERSIST,
    );
    b.add(
        sp,
        &[WaitingForCutover],
        Event::RunnerGone(RunnerGone::SentinelKept),
        Some(Recovering),
        &[Persist, Call(C::StartRunner)],
    );
    b.add(
        sp,
        &[WaitingForCutover],
        Event::RunnerGone(RunnerGone::WorkLeft),
        Some(Failed),
        PERSIST,
    );
    b.add(
        sp,
        &[Resuming],
        Event::Control(ControlOp::Start),
        Some(Running),
        &[
            Call(C::StartRunner),
            Persist,
            CompleteRequest(ControlOp::Start),
        ],
    );
    b.add(
        sp,
        &[Resuming, Recovering],
        Event::Engine(EngineState::Running),
        Some(Running),
        PERSIST,
    );
    b.add(
        sp,
        &[Running, Resuming, Recovering],
        Event::Engine(EngineState::WaitingForCutover),
        Some(WaitingForCutover),
        PERSIST,
    );
    b.add(
        sp,
        &[WaitingForCutover],
        Event::Control(ControlOp::Cutover),
        Some(CuttingOver),
        &[
            Persist,
            Call(C::DropSentinel),
            CompleteRequest(ControlOp::Cutover),
        ],
    );
    b.add(
        sp,
        &[CuttingOver],
        Event::Engine(EngineState::WaitingForCutover),
        same,
        &[Call(C::DropSentinel)],
    );
    b.add(
        sp,
        SPIRIT_LIVE,
        Event::Engine(EngineState::Completed),
        Some(Completed),
        PERSIST,
    );
    b.add(
        sp,
        SPIRIT_LIVE,
        Event::Engine(EngineState::Failed),
        Some(Failed),
        PERSIST,
    );
    b.add(
        sp,
        SPIRIT_LIVE,
        Event::PermanentFailure,
        Some(Failed),
        PERSIST,
    );
    b.add(
        sp,
        SPIRIT_LIVE,
        Event::RetryableFailure,
        Some(FailedRetryable),
        PERSIST,
    );
    // Stop: the engine stops first; storage says `stopped` only once the engine confirms.
    let stoppable: Vec<ApplyState> = SPIRIT_LIVE
        .iter()
        .copied()
        .chain([FailedRetryable])
        .collect();
    b.add(
        sp,
        &stoppable,
        Event::Control(ControlOp::Stop),
        same,
        &[Call(C::StopRunner)],
    );
    b.add(
        sp,
        &stoppable,
        Event::Engine(EngineState::Stopped),
        Some(Stopped),
        &[Persist, CompleteRequest(ControlOp::Stop)],
    );
    // A stop of a `failed_retryable` apply finds the runner already failed: the engine has no
    // live work and the checkpoint is kept, so the stop holds (else the owner re-issues the stop
    // forever and never releases the row).
    b.add(
        sp,
        &[FailedRetryable],
        Event::RetryableFailure,
        Some(Stopped),
        &[Persist, CompleteRequest(ControlOp::Stop)],
    );
    // With a start also pending, the owner resumes in the same claim (#424).
    b.add(
        sp,
        &[Stopped],
        Event::Control(ControlOp::Start),
        Some(Resuming),
        PERSIST,
    );
    let cancellable: Vec<ApplyState> = stoppable.iter().copied().chain([Stopped]).collect();
    b.add(
        sp,
        &cancellable,
        Event::Control(ControlOp::Cancel),
        same,
        &[Call(C::CancelRunner)],
    );
    let sp_cancelled: Vec<ApplyState> = cancellable.iter().copied().chain([Paused]).collect();
    b.add(
        sp,
        &sp_cancelled,
        Event::Engine(EngineState::Cancelled),
        Some(Cancelled),
        &[Persist, CompleteRequest(ControlOp::Cancel)],
    );
    b.add(
        ps,
        &[Paused],
        Event::Control(ControlOp::Cancel),
        same,
        &[Call(C::CancelDeployRequest)],
    );
    b.add(
        ps,
        &[Paused],
        Event::Engine(EngineState::Cancelled),
        Some(Cancelled),
        &[Persist, CompleteRequest(ControlOp::Cancel)],
    );
    b.add(
        sp,
        &[Paused],
        Event::Control(ControlOp::Cancel),
        same,
        &[Call(C::CancelRunner)],
    );
    b.add(
        sp,
        &[Paused],
        Event::Control(ControlOp::Stop),
        same,
        &[Call(C::StopRunner)],
    );
    b.add(
        sp,
        &[Paused],
        Event::Engine(EngineState::Stopped),
        Some(Stopped),
        &[Persist, CompleteRequest(ControlOp::Stop)],
    );
    let mut index: BTreeMap<(EngineKind, ApplyState, Event), Vec<RowId>> = BTreeMap::new();
    for (i, r) in b.rows.iter().enumerate() {
        index
            .entry((r.engine, r.from, r.event))
            .or_default()
            .push(i as RowId);
    }
    Table {
        rows: b.rows,
        index,
    }
}

/// Whether an apply has settled: terminal, or resting in an explicit human wait.
pub fn is_settled(state: ApplyState, options: &ApplyOptions) -> bool {
    super::claim::shipped_class(state) == ClaimClass::Terminal
        || super::waits::is_human_wait(state, options)
}

/// The user's options on an apply that change which rows fire.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct ApplyOptions {
    #[serde(default)]
    pub defer_deploy: bool,
    #[serde(default)]
    pub defer_cutover: bool,
    #[serde(default)]
    pub skip_revert: bool,
}

/// The read-only query that observes an apply in a state, if the state is observed at all.
pub fn probe_for(engine: EngineKind, state: ApplyState) -> Option<Probe> {
    match (engine, state) {
        (EngineKind::PlanetScale, PreparingBranch) => Some(Probe::GetBranch),
        (EngineKind::PlanetScale, ApplyingBranchChanges) => Some(Probe::DiffBranch),
        (EngineKind::PlanetScale, ValidatingBranch) => Some(Probe::ValidateBranch),
        (EngineKind::PlanetScale, CreatingDeployRequest) => Some(Probe::FindDeployRequest),
        (EngineKind::PlanetScale, s) if PS_WITH_DEPLOY_REQUEST.contains(&s) => {
            Some(Probe::GetDeployRequest)
        }
        (EngineKind::Spirit, s) if SPIRIT_LIVE.contains(&s) || s == FailedRetryable => {
            Some(Probe::RunnerStatus)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_absorb_except_the_documented_stopped_exits() {
        for r in TABLE.shipped() {
            if r.from.is_terminal() && r.to != r.from {
                assert!(
                    r.from == Stopped && matches!(r.to, Resuming | Cancelled),
                    "terminal {} leaves to {} on {:?}",
                    r.from,
                    r.to,
                    r.event
                );
            }
            if super::super::claim::shipped_class(r.from) == ClaimClass::Terminal {
                assert_eq!(r.to, r.from, "{} is absorbing", r.from);
            }
        }
    }

    #[test]
    fn keys_are_unique_among_shipped_rows() {
        let mut seen = std::collections::BTreeSet::new();
        for r in TABLE.shipped() {
            assert!(
                seen.insert((r.engine, r.from, r.event)),
                "duplicate row {:?}",
                (r.engine, r.from, r.event)
            );
        }
    }

    #[test]
    fn every_apply_state_appears_in_the_table() {
        for s in ApplyState::ALL {
            assert!(
                TABLE.shipped().any(|r| r.from == *s || r.to == *s),
                "{s} is in no row"
            );
        }
    }

    #[test]
    fn every_persist_before_a_call_in_setup_holds_for_deploy_request_creation() {
        // The deploy request is created only from `creating_deploy_request`, whose intent was
        // persisted by the row that entered it.
        for r in TABLE.shipped() {
            if r.effects
                .contains(&Effect::Call(EngineCall::CreateDeployRequest))
            {
                assert_eq!(r.from, CreatingDeployRequest);
                assert_eq!(r.event, Event::Setup(SetupSignal::DeployRequestMissing));
            }
            if r.to == CreatingDeployRequest && r.from != CreatingDeployRequest {
                let persist = r
                    .effects
                    .iter()
                    .position(|e| *e == Effect::Persist)
                    .unwrap();
                assert!(!r.effects[..persist]
                    .iter()
                    .any(|e| matches!(e, Effect::Call(_))));
            }
        }
    }

    #[test]
    fn every_non_terminal_state_reachable_by_an_engine_has_a_probe_or_is_a_wait() {
        for r in TABLE.shipped() {
            let s = r.to;
            if s.is_terminal() || s == Pending || s == Paused {
                continue;
            }
            assert!(
                probe_for(r.engine, s).is_some(),
                "{} {} has no probe",
                r.engine,
                s
            );
        }
    }
}
