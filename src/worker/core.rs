use crate::machine::control::{settle_on_terminal, settles_requests, Disposition, PRECEDENCE};
use crate::machine::table::{
    probe_for, AutoAction, Effect, Event, ResumeField, RowId, SetupSignal, TABLE,
};
use crate::machine::waits::{auto_action, Rest};
use crate::machine::{
    ApplyState, ClaimClass, ControlOp, EngineKind, EngineState, Mutant, Probe, Refusal, Rules,
};

use super::{
    ApplyId, Command, DriveView, EngineFault, FailCause, Observation, ResumeState, RunnerStatus,
    WaitFor, WriteOutcome,
};
use crate::worker::BranchStatus;

/// Why a drive ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Finish {
    /// Terminal, with every pending request settled.
    Settled,
    /// `failed_retryable`: release the lease so the retry arm may pick it up.
    ReleaseForRetry,
    /// Held for a person (`paused`) with no request to take: release the lease; their request
    /// is taken by arm A8.
    Held,
    /// A wait the engine confirmed, where nothing local must stay alive: park the row
    /// (`Store::park`) and give the driver back; a request or the wake time brings it back.
    Parked,
    /// A wait the engine confirmed, where a local runner waits on its gate: the process keeps
    /// the lease and watches without a driver (`waits::Rest::Watch`). Nothing is written.
    Watched,
    /// A fenced write bounced, or the engine saw a newer epoch.
    LeaseLost,
    /// Heartbeats failed past the presumed-loss bound: stop before a peer can reclaim.
    PresumedLost,
    RowGone,
    /// The persisted resume state cannot support this state; fail closed and leave the row for
    /// an operator to inspect (it stays claimable, so a fixed build picks it up).
    Inconsistent(&'static str),
}

/// A transition in progress: the row and how far through its effects we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Cursor {
    row: RowId,
    next: u8,
    resume: ResumeState,
    deploy_request_id: Option<u64>,
}

/// What the last command is waiting to hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Awaiting {
    Nothing,
    Write,
    Request(ControlOp),
    Engine,
}

/// The in-memory state of one driver for one claimed apply. Lost on crash, by design: a
/// reclaiming driver starts a new `Drive` from what the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Drive {
    pub apply: ApplyId,
    pub epoch: u64,
    pub engine: EngineKind,
    /// The state the row had before this claim: `pending` means a fresh dispatch.
    pub pre_claim: ApplyState,
    cursor: Option<Cursor>,
    obs: Option<Observation>,
    awaiting: Awaiting,
    backoff: bool,
    refusal: Option<(ControlOp, Refusal)>,
    extra_completion: Option<ControlOp>,
    finished: Option<Finish>,
    /// #265 switch: the persisted resume state is ignored for this drive.
    discard_resume: bool,
    /// This drive has seen the engine at its cutover gate. A cutover is taken only then: after a
    /// reclaim the previous owner's runner may have died with it, so readiness is re-proven
    /// first (#218).
    gate_seen: bool,
}

enum Mapped {
    Event(Event, Option<u64>),
    Poll,
    Backoff,
    LeaseLost,
    Nothing,
}

impl Drive {
    pub fn new(
        apply: ApplyId,
        epoch: u64,
        engine: EngineKind,
        pre_claim: ApplyState,
        rules: &Rules,
    ) -> Drive {
        Drive {
            apply,
            epoch,
            engine,
            pre_claim,
            cursor: None,
            obs: None,
            awaiting: Awaiting::Nothing,
            backoff: false,
            refusal: None,
            extra_completion: None,
            finished: None,
            discard_resume: rules.has(Mutant::ResumeWithoutEngineState)
                && pre_claim != ApplyState::Pending,
            gate_seen: false,
        }
    }

    pub fn finished(&self) -> Option<Finish> {
        self.finished
    }

    /// The engine answered the last `Call` or `Probe`.
    pub fn on_engine(&mut self, obs: Observation) {
        debug_assert_eq!(self.awaiting, Awaiting::Engine);
        self.awaiting = Awaiting::Nothing;
        if matches!(obs, Observation::Fault(_)) {
            // The rest of the transition depended on this call.
            self.cursor = None;
        }
        self.obs = Some(obs);
    }

    /// The store answered the last `Write`, `Complete` or `Fail`.
    pub fn on_store(&mut self, outcome: WriteOutcome) {
        let awaited = std::mem::replace(&mut self.awaiting, Awaiting::Nothing);
        match outcome {
            WriteOutcome::Ok => {
                if let Some(c) = self.cursor.as_mut() {
                    let expected = TABLE.row(c.row).effects.get(c.next as usize).copied();
                    let matches = match (awaited, expected) {
                        (Awaiting::Write, Some(Effect::Persist)) => true,
                        (Awaiting::Request(op), Some(Effect::CompleteRequest(want))) => op == want,
                        _ => false,
                    };
                    if matches {
                        c.next += 1;
                    }
                }
            }
            WriteOutcome::LeaseLost => self.finished = Some(Finish::LeaseLost),
            WriteOutcome::RowGone => self.finished = Some(Finish::RowGone),
            WriteOutcome::TargetBusy => {
                self.cursor = None;
                self.refusal = Some((ControlOp::Start, Refusal::TargetBusy));
            }
            WriteOutcome::Unavailable => self.backoff = true,
        }
    }

    /// The next command. Call it again after feeding the result of the previous one.
    pub fn next(&mut self, view: &DriveView, rules: &Rules) -> Command {
        let cmd = self.decide(view, rules);
        self.awaiting = match cmd {
            Command::Write { .. } | Command::FailClosed(_) => Awaiting::Write,
            Command::Complete(op) | Command::Fail(op, _) => Awaiting::Request(op),
            Command::Call(_) | Command::Probe(_) => Awaiting::Engine,
            Command::Wait(_) | Command::Finish(_) => Awaiting::Nothing,
        };
        match cmd {
            Command::Finish(f) => self.finished = Some(f),
            // The gate is proven afresh after every wait: a runner seen at its gate may have
            // died since (with its process, possibly not this one), and a cutover taken on an
            // old sighting drops the sentinel of no one (#218).
            Command::Wait(_) => self.gate_seen = false,
            _ => {}
        }
        cmd
    }

    fn resume(&self, view: &DriveView) -> ResumeState {
        if self.discard_resume {
            ResumeState::default()
        } else {
            view.row.resume
        }
    }

    fn decide(&mut self, view: &DriveView, rules: &Rules) -> Command {
        if let Some(f) = self.finished {
            return Command::Finish(f);
        }
        if rules.presumed_lost(view.heartbeat_ok_age_ms) {
            return Command::Finish(Finish::PresumedLost);
        }
        if std::mem::take(&mut self.backoff) {
            return Command::Wait(WaitFor::Backoff);
        }
        if let Some((op, why)) = self.refusal.take() {
            return Command::Fail(op, why);
        }
        if let Some(op) = self.extra_completion.take() {
            return Command::Complete(op);
        }
        if let Some(cmd) = self.continue_plan(view, rules) {
            return cmd;
        }
        let engine = self.engine;
        let state = view.row.state;
        let controls = view.controls;

        let mut observed = false;
        if let Some(obs) = self.obs.take() {
            observed = true;
            match self.map_observation(obs, view, rules) {
                Mapped::Event(event, dr) => {
                    if event == Event::Engine(EngineState::WaitingForCutover) {
                        self.gate_seen = true;
                    }
                    if let Some(row) = TABLE.lookup(rules, engine, state, event) {
                        return self.start_plan(row, dr, view, rules);
                    }
                }
                Mapped::Poll => return Command::Wait(WaitFor::Poll),
                Mapped::Backoff => return Command::Wait(WaitFor::Backoff),
                Mapped::LeaseLost => return Command::Finish(Finish::LeaseLost),
                Mapped::Nothing => {}
            }
        }

        if settles_requests(state, &controls) {
            if let Some(op) = PRECEDENCE.iter().copied().find(|op| controls.has(*op)) {
                return match settle_on_terminal(op, state) {
                    Disposition::Refuse(why) => Command::Fail(op, why),
                    _ => Command::Complete(op),
                };
            }
            return Command::Finish(Finish::Settled);
        }

        for op in PRECEDENCE.iter().copied().filter(|op| controls.has(*op)) {
            match rules.disposition(engine, state, op, &controls, &view.row.options) {
                // A cutover needs the engine freshly seen at its gate and the rollout's turn.
                Disposition::Take(_)
                    if op == ControlOp::Cutover && !(self.gate_seen && view.cutover_open) =>
                {
                    continue
                }
                Disposition::Take(row) => return self.start_plan(row, None, view, rules),
                Disposition::Wait => continue,
                Disposition::Complete => return Command::Complete(op),
                Disposition::Refuse(why) => return Command::Fail(op, why),
            }
        }
        if state == ApplyState::FailedRetryable {
            return Command::Finish(Finish::ReleaseForRetry);
        }
        // Held for a person (an engine asked for one): nothing moves it but their request, which
        // arm A8 takes.
        if rules.class_of(state) == ClaimClass::HumanHeld {
            return Command::Finish(Finish::Held);
        }

        if let Some(action) = auto_action(
            self.engine,
            view.row.state,
            &view.row.options,
            view.revert_window_expired,
        )
        .filter(|a| *a != AutoAction::Cutover || (self.gate_seen && view.cutover_open))
        {
            if let Some(row) = TABLE.lookup(rules, engine, state, Event::Auto(action)) {
                return self.start_plan(row, None, view, rules);
            }
        }

        let resume = self.resume(view);
        let probe = probe_for(engine, state);
        if engine == EngineKind::PlanetScale
            && resume.deploy_request_id.is_none()
            && (state == ApplyState::Running || probe == Some(Probe::GetDeployRequest))
        {
            return match TABLE.lookup(rules, engine, state, Event::Dispatch) {
                Some(row) => self.start_plan(row, None, view, rules),
                None => Command::Finish(Finish::Inconsistent(
                    "the persisted resume state has no deploy request id",
                )),
            };
        }

        match probe {
            // A wait the engine just confirmed costs no driver, unless a request it acts on now
            // is in hand (one for a later state, e.g. a cutover before the deploy, waits parked).
            Some(_) if observed && !rules.has(Mutant::WaitsHoldDrivers) => {
                match rules.rests_now(
                    engine,
                    state,
                    &controls,
                    &view.row.options,
                    view.cutover_open,
                ) {
                    Some(Rest::Park) => Command::Finish(Finish::Parked),
                    Some(Rest::Watch) if self.gate_seen => Command::Finish(Finish::Watched),
                    _ => Command::Wait(WaitFor::Poll),
                }
            }
            Some(_) if observed => Command::Wait(WaitFor::Poll),
            Some(Probe::FindDeployRequest)
                if rules.has(Mutant::DeployRequestCreateNotIdempotent)
                    || rules.has(Mutant::ResumeWithoutEngineState) =>
            {
                // Upstream's fresh path: create without looking for an earlier request.
                match TABLE.lookup(
                    rules,
                    engine,
                    state,
                    Event::Setup(SetupSignal::DeployRequestMissing),
                ) {
                    Some(row) => self.start_plan(row, None, view, rules),
                    None => Command::Wait(WaitFor::Poll),
                }
            }
            Some(p) => Command::Probe(p),
            None => Command::Wait(WaitFor::Poll),
        }
    }

    fn map_observation(&self, obs: Observation, view: &DriveView, rules: &Rules) -> Mapped {
        use Observation as O;
        let ev = |e| Mapped::Event(e, None);
        let mapped = match obs {
            O::Branch(BranchStatus::Missing) => ev(Event::Setup(SetupSignal::BranchMissing)),
            O::Branch(BranchStatus::Creating) => Mapped::Poll,
            O::Branch(BranchStatus::Ready) => ev(Event::Setup(SetupSignal::BranchReady)),
            O::BranchDiff { pending: true } => ev(Event::Setup(SetupSignal::BranchChangesPending)),
            O::BranchDiff { pending: false } => ev(Event::Setup(SetupSignal::BranchChangesApplied)),
            O::BranchValid => ev(Event::Setup(SetupSignal::BranchValidated)),
            O::NoDeployRequest => ev(Event::Setup(SetupSignal::DeployRequestMissing)),
            O::DeployRequest { id, state }
                if view.row.state == ApplyState::CreatingDeployRequest
                    && !matches!(state, EngineState::Cancelled | EngineState::Failed) =>
            {
                Mapped::Event(Event::Setup(SetupSignal::DeployRequestFound), Some(id))
            }
            O::DeployRequest {
                state: EngineState::Pending,
                ..
            } => Mapped::Poll,
            O::DeployRequest { state, .. } => ev(Event::Engine(state)),
            O::Runner(RunnerStatus::Gone(g)) => ev(Event::RunnerGone(g)),
            O::Runner(RunnerStatus::Copying) => ev(Event::Engine(EngineState::Running)),
            O::Runner(RunnerStatus::WaitingOnSentinel) => {
                ev(Event::Engine(EngineState::WaitingForCutover))
            }
            O::Runner(RunnerStatus::Completed) => ev(Event::Engine(EngineState::Completed)),
            O::Runner(RunnerStatus::Failed { retryable: true }) => ev(Event::RetryableFailure),
            O::Runner(RunnerStatus::Failed { retryable: false }) => {
                ev(Event::Engine(EngineState::Failed))
            }
            O::Runner(RunnerStatus::NeedsPerson) => ev(Event::NeedsPerson),
            O::Runner(RunnerStatus::Stopped) => ev(Event::Engine(EngineState::Stopped)),
            O::Runner(RunnerStatus::Cancelled) => ev(Event::Engine(EngineState::Cancelled)),
            O::Accepted => Mapped::Nothing,
            O::Fault(EngineFault::Transient) => Mapped::Backoff,
            O::Fault(EngineFault::Permanent | EngineFault::NotFound) => ev(Event::PermanentFailure),
            O::Fault(EngineFault::StaleEpoch) => Mapped::LeaseLost,
        };
        // #262 switch: a stop that finds the work already failed records it as completed.
        if rules.has(Mutant::StopIgnoresTerminalTasks) && view.controls.stop {
            if let Mapped::Event(Event::Engine(EngineState::Failed) | Event::RetryableFailure, dr) =
                mapped
            {
                return Mapped::Event(Event::Engine(EngineState::Completed), dr);
            }
        }
        mapped
    }

    fn start_plan(
        &mut self,
        row: RowId,
        deploy_request_id: Option<u64>,
        view: &DriveView,
        rules: &Rules,
    ) -> Command {
        self.cursor = Some(Cursor {
            row,
            next: 0,
            resume: self.resume(view),
            deploy_request_id,
        });
        self.continue_plan(view, rules)
            .unwrap_or(Command::Wait(WaitFor::Poll))
    }

    /// The next effect of the transition in progress, if any remains.
    fn continue_plan(&mut self, view: &DriveView, rules: &Rules) -> Option<Command> {
        loop {
            let cursor = self.cursor.as_mut()?;
            let row = TABLE.row(cursor.row);
            let Some(effect) = row.effects.get(cursor.next as usize).copied() else {
                self.cursor = None;
                return None;
            };
            match effect {
                Effect::Record(field) => {
                    match field {
                        ResumeField::Branch => cursor.resume.branch = true,
                        ResumeField::DeployRequestIntent => {
                            cursor.resume.deploy_request_intent = true
                        }
                        ResumeField::DeployRequestId => {
                            cursor.resume.deploy_request_id = cursor.deploy_request_id
                        }
                    }
                    cursor.next += 1;
                }
                Effect::Persist => {
                    return Some(Command::Write {
                        to: row.to,
                        resume: cursor.resume,
                    })
                }
                Effect::Call(call) => {
                    // Controls are looked at before every engine call: a stop or cancel that
                    // arrived mid-transition wins over the rest of it.
                    if crate::machine::invariants::stop_dominance(&view.controls, self.engine, call)
                        .is_err()
                    {
                        self.cursor = None;
                        return None;
                    }
                    // A change that drifted from its review is never handed to an engine; the
                    // apply fails closed instead, whichever start or resume this is.
                    if call.hands_over_ddl()
                        && !view.change_reviewed
                        && !rules.has(Mutant::RunsDriftedChange)
                        && rules
                            .fail_closed_move(self.engine, view.row.state)
                            .is_some()
                    {
                        self.cursor = None;
                        return Some(Command::FailClosed(FailCause::ChangeDrifted));
                    }
                    cursor.next += 1;
                    return Some(Command::Call(call));
                }
                Effect::CompleteRequest(op) => {
                    if !view.controls.has(op) {
                        cursor.next += 1;
                        continue;
                    }
                    if op == ControlOp::Stop
                        && view.controls.start
                        && rules.has(Mutant::StopStartRaceDropsStart)
                    {
                        self.extra_completion = Some(ControlOp::Start);
                    }
                    return Some(Command::Complete(op));
                }
            }
        }
    }
}
