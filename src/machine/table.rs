//! The transition table as data: `(engine, from, event) -> (to, effects)`.
//!
//! The worker core, the model and the simulator all step through [`TABLE`]; the state diagram
//! is rendered from it. Each rule is one `row!` line in `build`, listing its states explicitly
//! or by a named set: the builder is the table's text, not logic that runs per transition.
//!
//! The words the rows are written in are in [`super::vocabulary`], the policies read off the
//! table in [`super::policy`]; both are re-exported here so `table::` paths name them too.

use std::sync::LazyLock;

use super::claim::{ClaimArm, REVERT_PHASE, SETUP_PHASE};
use super::rules::{Mutant, Rules};
use super::states::{ApplyState, ApplyState::*, ControlOp, EngineKind, EngineState};

pub use super::policy::{is_settled, probe_for, ApplyOptions};
pub use super::vocabulary::{
    AutoAction, Effect, EngineCall, Event, Probe, ResumeField, RunnerGone, SetupSignal,
};

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
    /// The rows leaving each (engine, state), in table order: a short slice to scan, looked up
    /// by position (every step of every driver, the model's and the simulator's included, goes
    /// through `lookup`).
    index: Vec<Vec<(Event, RowId)>>,
}

fn slot(engine: EngineKind, from: ApplyState) -> usize {
    engine as usize * ApplyState::ALL.len() + from as usize
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
        // A mutant row shadows the shipped one it replaces.
        let mut shipped = None;
        for &(e, id) in &self.index[slot(engine, from)] {
            if e != event {
                continue;
            }
            match self.rows[id as usize].only_with {
                Some(m) if rules.has(m) => return Some(id),
                None if shipped.is_none() => shipped = Some(id),
                _ => {}
            }
        }
        shipped
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

/// PlanetScale states in which a deploy request exists and is polled.
pub(super) const PS_WITH_DEPLOY_REQUEST: &[ApplyState] = &[
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
pub(super) const SPIRIT_LIVE: &[ApplyState] = &[
    Running,
    Resuming,
    WaitingForCutover,
    Recovering,
    CuttingOver,
];

const PS: EngineKind = EngineKind::PlanetScale;
const SP: EngineKind = EngineKind::Spirit;

/// The sets in order, one after the other.
fn concat(sets: &[&[ApplyState]]) -> Vec<ApplyState> {
    sets.concat()
}

/// `set` in its order, without the states in `drop`.
fn except(set: &[ApplyState], drop: &[ApplyState]) -> Vec<ApplyState> {
    set.iter().copied().filter(|s| !drop.contains(s)).collect()
}

#[derive(Default)]
struct Builder {
    rows: Vec<Row>,
}

impl Builder {
    /// One row per `from` state; `to: None` keeps each in its state.
    fn add(
        &mut self,
        engine: EngineKind,
        from: &[ApplyState],
        event: Event,
        to: Option<ApplyState>,
        effects: &'static [Effect],
        only_with: Option<Mutant>,
    ) {
        for f in from {
            self.rows.push(Row {
                engine,
                from: *f,
                event,
                to: to.unwrap_or(*f),
                effects,
                only_with,
            });
        }
    }
}

// The row syntax: an event or effect names its variant and the argument's variant, whose enum
// is implied (`Engine(Running)` is `Event::Engine(EngineState::Running)`).
#[rustfmt::skip]
macro_rules! event {
    (Claim($v:ident)) => { Event::Claim(ClaimArm::$v) };
    (Setup($v:ident)) => { Event::Setup(SetupSignal::$v) };
    (Engine($v:ident)) => { Event::Engine(EngineState::$v) };
    (RunnerGone($v:ident)) => { Event::RunnerGone(RunnerGone::$v) };
    (Control($v:ident)) => { Event::Control(ControlOp::$v) };
    (Auto($v:ident)) => { Event::Auto(AutoAction::$v) };
    ($e:ident) => { Event::$e };
}

#[rustfmt::skip]
macro_rules! effect {
    (Record($v:ident)) => { Effect::Record(ResumeField::$v) };
    (Call($v:ident)) => { Effect::Call(EngineCall::$v) };
    (CompleteRequest($v:ident)) => { Effect::CompleteRequest(ControlOp::$v) };
    (Persist) => { Effect::Persist };
}

#[rustfmt::skip]
macro_rules! target {
    (same) => { None };
    ($s:ident) => { Some($s) };
}

#[rustfmt::skip]
macro_rules! only_with {
    () => { None };
    ($m:ident) => { Some(Mutant::$m) };
}

#[rustfmt::skip]
fn build() -> Table {
    let mut b = Builder::default();
    // `row!(engine, from, event => to, [effects])`: `from` is a bracketed list or a named set,
    // `to` a state or `same` (each `from` state stays); `, only_with(M)` marks a mutant row.
    macro_rules! row {
        (@ $e:expr, $from:expr, $ev:ident $(($a:ident))? => $to:ident, [$($x:ident $(($y:ident))?),*] $(, only_with($m:ident))?) => {
            b.add($e, $from, event!($ev $(($a))?), target!($to), &[$(effect!($x $(($y))?)),*], only_with!($($m)?))
        };
        ($e:expr, [$($f:ident),+], $($rest:tt)+) => { row!(@ $e, &[$($f),+], $($rest)+) };
        ($e:expr, $set:ident, $($rest:tt)+) => { row!(@ $e, &$set, $($rest)+) };
    }

    // Claims, for both engines. A claim is itself the fenced write that takes the lease.
    let open: Vec<ApplyState> = ApplyState::ALL.iter().copied().filter(|s| !s.is_terminal()).collect();
    for e in [PS, SP] {
        row!(e, [Pending], Claim(A1Pending) => Running, []);
        row!(e, [Pending], Claim(A4PendingStart) => Running, []);
        row!(e, [FailedRetryable], Claim(A3Retry) => Running, []);
        row!(e, [Stopped], Claim(A7StoppedCancel) => same, []);
        row!(e, [Paused], Claim(A8PausedControl) => same, []);
        row!(e, [FailedRetryable], RetryExpired => Failed, []);
        row!(e, open, FailClosed => Failed, []);
        row!(e, [Pending], Withdraw => Cancelled, []);
    }
    // A single-operation apply is never degraded, and a PlanetScale apply never resumes from a
    // stop: a reclaim normalises both to `running`, where the drive knows what to do.
    // A parked wait taken back by a request (A9) lands where its wake time (A2) would.
    row!(PS, [Resuming, RunningDegraded], Claim(A2Stale) => Running, []);
    row!(PS, [Resuming, RunningDegraded], Claim(A9ParkedRequest) => Running, []);
    row!(SP, [RunningDegraded], Claim(A2Stale) => Running, []);
    row!(SP, [RunningDegraded], Claim(A9ParkedRequest) => Running, []);
    let ps_after_setup = [WaitingForDeploy, WaitingForCutover, CuttingOver, RevertWindow, SkippingRevert, Reverting];
    let ps_stale = concat(&[&[Running], SETUP_PHASE, &ps_after_setup]);
    row!(PS, ps_stale, Claim(A2Stale) => same, []);
    row!(PS, ps_stale, Claim(A9ParkedRequest) => same, []);
    row!(PS, [WaitingForDeploy], Claim(A6DeferredDeployStart) => same, []);
    row!(SP, SPIRIT_LIVE, Claim(A2Stale) => same, []);
    row!(SP, SPIRIT_LIVE, Claim(A9ParkedRequest) => same, []);
    row!(SP, [Stopped], Claim(A5StoppedStart) => Resuming, []);

    // ---- PlanetScale setup: every intent is persisted before the effect it guards.
    row!(PS, [Running], Dispatch => PreparingBranch, [Record(Branch), Persist]);
    row!(PS, [PreparingBranch], Setup(BranchMissing) => same, [Call(CreateBranch)]);
    row!(PS, [PreparingBranch], Setup(BranchReady) => ApplyingBranchChanges, [Persist]);
    row!(PS, [ApplyingBranchChanges], Setup(BranchChangesPending) => same, [Call(ApplyBranchChanges)]);
    row!(PS, [ApplyingBranchChanges], Setup(BranchChangesApplied) => ValidatingBranch, [Persist]);
    row!(PS, [ValidatingBranch], Setup(BranchValidated) => CreatingDeployRequest, [Record(DeployRequestIntent), Persist]);
    row!(PS, [CreatingDeployRequest], Setup(DeployRequestMissing) => same, [Call(CreateDeployRequest)]);
    row!(PS, [CreatingDeployRequest], Setup(DeployRequestFound) => ValidatingDeployRequest, [Record(DeployRequestId), Persist]);
    // #186 mutant: the deploy-request intent is written only after the creating call.
    row!(PS, [ValidatingBranch], Setup(BranchValidated) => CreatingDeployRequest, [Call(CreateDeployRequest), Record(DeployRequestIntent), Persist], only_with(StateNotSetBeforeEngineCall));
    // #265 mutant: a reclaimed apply that lost sight of its persisted deploy request starts its
    // setup over (and, as upstream's fresh path did, creates without looking up).
    let ps_past_dispatch = except(PS_WITH_DEPLOY_REQUEST, &[Running]);
    row!(PS, ps_past_dispatch, Dispatch => PreparingBranch, [Record(Branch), Persist], only_with(ResumeWithoutEngineState));

    // ---- PlanetScale deploy request (reference §3.3).
    row!(PS, [ValidatingDeployRequest], Engine(WaitingForDeploy) => WaitingForDeploy, [Persist]);
    row!(PS, [WaitingForDeploy], Auto(Deploy) => Running, [Call(Deploy), Persist]);
    row!(PS, [WaitingForDeploy], Control(Start) => Running, [Call(Deploy), Persist, CompleteRequest(Start)]);
    row!(PS, [ValidatingDeployRequest, WaitingForDeploy], Engine(Running) => Running, [Persist]);
    // Running means a deploy was intended: a request still `ready` lost its deploy call (#306).
    row!(PS, [Running], Engine(WaitingForDeploy) => same, [Call(Deploy)]);
    row!(PS, [ValidatingDeployRequest, Running, WaitingForDeploy], Engine(WaitingForCutover) => WaitingForCutover, [Persist]);
    row!(PS, [WaitingForCutover], Auto(Cutover) => CuttingOver, [Persist, Call(Cutover)]);
    row!(PS, [WaitingForCutover], Control(Cutover) => CuttingOver, [Persist, Call(Cutover), CompleteRequest(Cutover)]);
    // A crash after the cutover intent was persisted but before the call: issue it again.
    row!(PS, [CuttingOver], Engine(WaitingForCutover) => same, [Call(Cutover)]);
    let ps_before_revert = except(PS_WITH_DEPLOY_REQUEST, REVERT_PHASE);
    let ps_before_cutover = except(&ps_before_revert, &[CuttingOver]);
    row!(PS, ps_before_cutover, Engine(CuttingOver) => CuttingOver, [Persist]);
    row!(PS, ps_before_revert, Engine(RevertWindow) => RevertWindow, [Persist]);
    row!(PS, [RevertWindow], Auto(SkipRevert) => SkippingRevert, [Persist, Call(SkipRevert)]);
    row!(PS, [RevertWindow], Control(SkipRevert) => SkippingRevert, [Persist, Call(SkipRevert), CompleteRequest(SkipRevert)]);
    row!(PS, [SkippingRevert], Engine(RevertWindow) => same, [Call(SkipRevert)]);
    row!(PS, [RevertWindow], Control(Revert) => Reverting, [Persist, Call(Revert), CompleteRequest(Revert)]);
    row!(PS, [Reverting], Engine(RevertWindow) => same, [Call(Revert)]);
    row!(PS, [RevertWindow], Engine(Reverting) => Reverting, [Persist]);
    let ps_completable = except(PS_WITH_DEPLOY_REQUEST, &[Reverting]);
    row!(PS, ps_completable, Engine(Completed) => Completed, [Persist]);
    row!(PS, [RevertWindow, Reverting], Engine(Reverted) => Reverted, [Persist]);
    row!(PS, PS_WITH_DEPLOY_REQUEST, Engine(Failed) => Failed, [Persist]);
    // A cancel is recorded only once the engine confirms it (S7); the confirming observation
    // completes the request.
    let mut ps_cancelled = concat(&[PS_WITH_DEPLOY_REQUEST, SETUP_PHASE]);
    ps_cancelled.sort();
    ps_cancelled.dedup();
    row!(PS, ps_cancelled, Engine(Cancelled) => Cancelled, [Persist, CompleteRequest(Cancel)]);
    row!(PS, [CreatingDeployRequest], Engine(Failed) => Failed, [Persist]);
    // `cutting_over` too: a deploy request that vanishes mid-cutover must end the apply, not
    // leave its owner polling a request that no longer exists.
    let ps_active = concat(&[PS_CANCELLABLE, &[CuttingOver], REVERT_PHASE]);
    row!(PS, ps_active, PermanentFailure => Failed, [Persist]);
    // PlanetScale errors are permanent; a retryable one still ends the apply (reference §2.1).
    row!(PS, ps_active, RetryableFailure => Failed, [Persist]);
    row!(PS, PS_CANCELLABLE, Control(Cancel) => same, [Call(CancelDeployRequest)]);
    // #269 mutant: a stop in the revert window records a deployed change as cancelled.
    row!(PS, [RevertWindow], Control(Stop) => Cancelled, [Call(CancelDeployRequest), Persist, CompleteRequest(Stop)], only_with(StopInRevertWindow));

    // ---- Spirit (reference §3.4): one runner per apply; deferred cutover through the sentinel.
    row!(SP, [Running, Resuming, Recovering, CuttingOver], RunnerGone(WorkLeft) => same, [Call(StartRunner)]);
    row!(SP, [Running, Resuming, Recovering, CuttingOver], RunnerGone(SentinelKept) => same, [Call(StartRunner)]);
    row!(SP, SPIRIT_LIVE, RunnerGone(NothingLeft) => Completed, [Persist]);
    row!(SP, [WaitingForCutover], RunnerGone(SentinelKept) => Recovering, [Persist, Call(StartRunner)]);
    row!(SP, [WaitingForCutover], RunnerGone(WorkLeft) => Failed, [Persist]);
    row!(SP, [Resuming], Control(Start) => Running, [Call(StartRunner), Persist, CompleteRequest(Start)]);
    row!(SP, [Resuming, Recovering], Engine(Running) => Running, [Persist]);
    row!(SP, [Running, Resuming, Recovering], Engine(WaitingForCutover) => WaitingForCutover, [Persist]);
    row!(SP, [WaitingForCutover], Control(Cutover) => CuttingOver, [Persist, Call(DropSentinel), CompleteRequest(Cutover)]);
    row!(SP, [CuttingOver], Engine(WaitingForCutover) => same, [Call(DropSentinel)]);
    row!(SP, SPIRIT_LIVE, Engine(Completed) => Completed, [Persist]);
    row!(SP, SPIRIT_LIVE, Engine(Failed) => Failed, [Persist]);
    row!(SP, SPIRIT_LIVE, PermanentFailure => Failed, [Persist]);
    row!(SP, SPIRIT_LIVE, RetryableFailure => FailedRetryable, [Persist]);
    // Spirit's "ownership ambiguous": no re-run until a person has checked the table; held in
    // `paused` with the reason, left by a stop (then a start runs it again) or a cancel.
    row!(SP, SPIRIT_LIVE, NeedsPerson => Paused, [Persist]);
    // Stop: the engine stops first; storage says `stopped` only once the engine confirms.
    let stoppable = concat(&[SPIRIT_LIVE, &[FailedRetryable]]);
    row!(SP, stoppable, Control(Stop) => same, [Call(StopRunner)]);
    row!(SP, stoppable, Engine(Stopped) => Stopped, [Persist, CompleteRequest(Stop)]);
    // A stop of a `failed_retryable` apply finds the runner already failed: the engine has no
    // live work and the checkpoint is kept, so the stop holds (else the owner re-issues the stop
    // forever and never releases the row).
    row!(SP, [FailedRetryable], RetryableFailure => Stopped, [Persist, CompleteRequest(Stop)]);
    // With a start also pending, the owner resumes in the same claim (#424).
    row!(SP, [Stopped], Control(Start) => Resuming, [Persist]);
    let sp_cancellable = concat(&[&stoppable, &[Stopped]]);
    row!(SP, sp_cancellable, Control(Cancel) => same, [Call(CancelRunner)]);
    let sp_cancelled = concat(&[&sp_cancellable, &[Paused]]);
    row!(SP, sp_cancelled, Engine(Cancelled) => Cancelled, [Persist, CompleteRequest(Cancel)]);
    row!(PS, [Paused], Control(Cancel) => same, [Call(CancelDeployRequest)]);
    row!(PS, [Paused], Engine(Cancelled) => Cancelled, [Persist, CompleteRequest(Cancel)]);
    row!(SP, [Paused], Control(Cancel) => same, [Call(CancelRunner)]);
    row!(SP, [Paused], Control(Stop) => same, [Call(StopRunner)]);
    row!(SP, [Paused], Engine(Stopped) => Stopped, [Persist, CompleteRequest(Stop)]);
    // A hold's change may be in place after all (Spirit's RENAME did commit): a cancel, or a
    // stop, that finds it so records it; the request is then refused as too late.
    row!(SP, [Paused, Stopped], Engine(Completed) => Completed, [Persist]);

    let mut index = vec![Vec::new(); EngineKind::ALL.len() * ApplyState::ALL.len()];
    for (i, r) in b.rows.iter().enumerate() {
        index[slot(r.engine, r.from)].push((r.event, i as RowId));
    }
    Table { rows: b.rows, index }
}

#[cfg(test)]
mod tests {
    use super::super::claim::ClaimClass;
    use super::*;

    #[test]
    fn terminal_states_absorb_except_the_documented_stopped_exits() {
        for r in TABLE.shipped() {
            if r.from.is_terminal() && r.to != r.from {
                // A stopped apply resumes or is cancelled; or a cancel finds its change in place
                // after all (a hold whose RENAME did commit), which is recorded as it is.
                assert!(
                    r.from == Stopped
                        && (matches!(r.to, Resuming | Cancelled)
                            || (r.to == Completed
                                && r.event == Event::Engine(EngineState::Completed))),
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
    fn every_state_that_hands_ddl_to_an_engine_can_fail_closed_instead() {
        // The core swaps such a call for failing the apply closed when its change drifted; the
        // swap must be a step the table allows, and no terminal state hands anything over.
        let mut handing = 0;
        for r in TABLE.shipped() {
            for e in r.effects {
                if let Effect::Call(call) = e {
                    if call.hands_over_ddl() {
                        handing += 1;
                        let id = TABLE
                            .lookup(&Rules::default(), r.engine, r.from, Event::FailClosed)
                            .unwrap_or_else(|| {
                                panic!("{} {} cannot fail closed", r.engine, r.from)
                            });
                        assert_eq!(TABLE.row(id).to, Failed);
                    }
                }
            }
        }
        assert!(
            handing >= 5,
            "StartRunner and ApplyBranchChanges rows: {handing}"
        );
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
