//! Control requests: precedence, what the owner does with each in each state, and how pending
//! requests settle once the apply is terminal (reference §3.7).

use super::claim::{PendingControls, REVERT_PHASE, SETUP_PHASE};
use super::rules::Rules;
use super::states::{ApplyState, ApplyState::*, ControlOp, EngineKind};
use super::table::{ApplyOptions, Event, RowId, TABLE};

/// The order in which the owner looks at pending requests: cancel beats stop, stop beats start
/// (a start waits for a pending stop), skip-revert is checked before revert.
pub const PRECEDENCE: &[ControlOp] = &[
    ControlOp::Cancel,
    ControlOp::Stop,
    ControlOp::Start,
    ControlOp::Cutover,
    ControlOp::SkipRevert,
    ControlOp::Revert,
];

/// Why a request was refused; the text is shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    StopNotSupported,
    InRevertPhase,
    TargetBusy,
    AlreadyTerminal(ApplyState),
    RevertAlreadyChosen,
    SkipRevertAlreadyChosen,
    NotApplicable(ApplyState),
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::StopNotSupported => {
                "planetscale applies cannot be stopped; cancel the deploy request instead".into()
            }
            Refusal::InRevertPhase => {
                "the change is deployed and in its revert phase; revert or skip the revert instead"
                    .into()
            }
            Refusal::TargetBusy => {
                "start refused: another active apply exists on the same target".into()
            }
            Refusal::AlreadyTerminal(s) => format!("the apply is already {s}"),
            Refusal::RevertAlreadyChosen => "a revert was already accepted".into(),
            Refusal::SkipRevertAlreadyChosen => "skip-revert was already accepted".into(),
            Refusal::NotApplicable(s) => format!("not applicable while the apply is {s}"),
        }
    }
}

/// What the owner does with one pending request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// Take this table row.
    Take(RowId),
    /// Leave the request pending; look at the next one.
    Wait,
    /// Mark the request completed: its effect already holds.
    Complete,
    /// Mark the request failed, with the reason.
    Refuse(Refusal),
}

impl Rules {
    /// Whether a pending request is one the apply acts on in `state` (taken, completed or
    /// refused), rather than one that waits for a later state: only those wake a parked wait
    /// (arms A9/O6) or keep a driver from parking it.
    pub fn acts_now(
        &self,
        engine: EngineKind,
        state: ApplyState,
        pending: &PendingControls,
        options: &ApplyOptions,
    ) -> bool {
        PRECEDENCE.iter().any(|op| {
            pending.has(*op)
                && self.disposition(engine, state, *op, pending, options) != Disposition::Wait
        })
    }

    /// The owner's decision for one pending request on a non-settled apply.
    pub fn disposition(
        &self,
        engine: EngineKind,
        state: ApplyState,
        op: ControlOp,
        pending: &PendingControls,
        options: &ApplyOptions,
    ) -> Disposition {
        if let Some(row) = TABLE.lookup(self, engine, state, Event::Control(op)) {
            if op == ControlOp::Start && pending.stop {
                return Disposition::Wait;
            }
            return Disposition::Take(row);
        }
        let revert_phase = REVERT_PHASE.contains(&state);
        match op {
            ControlOp::Cancel if revert_phase => Disposition::Refuse(Refusal::InRevertPhase),
            ControlOp::Cancel => Disposition::Refuse(Refusal::NotApplicable(state)),
            ControlOp::Stop if engine == EngineKind::PlanetScale => {
                Disposition::Refuse(Refusal::StopNotSupported)
            }
            ControlOp::Stop => Disposition::Refuse(Refusal::NotApplicable(state)),
            ControlOp::Start if pending.stop => Disposition::Wait,
            ControlOp::Start => {
                let before_deploy_gate =
                    state == ValidatingDeployRequest || SETUP_PHASE.contains(&state);
                if options.defer_deploy && before_deploy_gate {
                    Disposition::Wait
                } else if matches!(state, Stopped | Paused | WaitingForDeploy) {
                    Disposition::Refuse(Refusal::NotApplicable(state))
                } else {
                    Disposition::Complete
                }
            }
            ControlOp::Cutover => match state {
                CuttingOver | RevertWindow | SkippingRevert | Reverting => Disposition::Complete,
                _ => Disposition::Wait,
            },
            ControlOp::SkipRevert => match state {
                SkippingRevert => Disposition::Complete,
                Reverting => Disposition::Refuse(Refusal::RevertAlreadyChosen),
                _ => Disposition::Wait,
            },
            ControlOp::Revert => match state {
                Reverting => Disposition::Complete,
                SkippingRevert => Disposition::Refuse(Refusal::SkipRevertAlreadyChosen),
                _ => Disposition::Wait,
            },
            ControlOp::Release | ControlOp::Volume => Disposition::Complete,
        }
    }
}

/// How a pending request ends once the apply is terminal (including `stopped` when no start or
/// cancel can resume it).
pub fn settle_on_terminal(op: ControlOp, state: ApplyState) -> Disposition {
    let done = match op {
        ControlOp::Stop | ControlOp::Release | ControlOp::Volume => true,
        ControlOp::Cancel => state == Cancelled,
        ControlOp::Start => false,
        ControlOp::Cutover => matches!(state, Completed | Reverted),
        ControlOp::Revert => state == Reverted,
        ControlOp::SkipRevert => state == Completed,
    };
    if done {
        Disposition::Complete
    } else {
        Disposition::Refuse(Refusal::AlreadyTerminal(state))
    }
}

/// Whether the owner settles the pending requests of an apply in `state` (it is terminal), rather
/// than acting on them: a stopped apply with a start or a cancel pending is still acted on.
pub fn settles_requests(state: ApplyState, pending: &PendingControls) -> bool {
    state.is_terminal() && !(state == Stopped && (pending.start || pending.cancel))
}

/// A request may be marked completed only once its effect holds in the persisted state.
pub fn completion_is_justified(op: ControlOp, state: ApplyState) -> bool {
    match op {
        ControlOp::Start => !matches!(state, Stopped | Paused | WaitingForDeploy | Pending),
        ControlOp::Stop => state.is_terminal(),
        ControlOp::Cancel => state == Cancelled,
        ControlOp::Cutover => {
            matches!(
                state,
                CuttingOver | RevertWindow | SkippingRevert | Reverting | Completed | Reverted
            )
        }
        ControlOp::Revert => matches!(state, Reverting | Reverted),
        ControlOp::SkipRevert => matches!(state, SkippingRevert | Completed),
        ControlOp::Release | ControlOp::Volume => true,
    }
}

impl Rules {
    /// Whether the HTTP/CLI surface accepts a new request (before it becomes durable): the one
    /// entry every store calls. The #269 switch re-opens the hole upstream's API had: a stop
    /// reaching a deployed PlanetScale apply in its revert window.
    pub fn accepts_request(
        &self,
        engine: EngineKind,
        state: ApplyState,
        op: ControlOp,
        pending: &PendingControls,
    ) -> Result<(), Refusal> {
        if self.has(super::rules::Mutant::StopInRevertWindow)
            && op == ControlOp::Stop
            && state == RevertWindow
        {
            return Ok(());
        }
        shipped_accepts_request(engine, state, op, pending)
    }
}

impl Rules {
    /// Whether a new request on this apply is accepted, with the text people are shown when
    /// not: [`Rules::accepts_request`], and a release only on a rollout. Both stores call this
    /// before a request becomes durable; the dashboard enables its buttons by it.
    pub fn request_admitted(
        &self,
        engine: EngineKind,
        state: ApplyState,
        op: ControlOp,
        pending: &PendingControls,
        is_rollout: bool,
    ) -> Result<(), String> {
        self.accepts_request(engine, state, op, pending)
            .map_err(|r| r.message())?;
        match super::rollout::requests::refused_without_rollout(op) {
            Some(why) if !is_rollout => Err(format!("not a rollout: {why}")),
            _ => Ok(()),
        }
    }
}

fn shipped_accepts_request(
    engine: EngineKind,
    state: ApplyState,
    op: ControlOp,
    pending: &PendingControls,
) -> Result<(), Refusal> {
    let revert_phase = REVERT_PHASE.contains(&state);
    let refuse_terminal = || {
        if state.is_terminal() {
            Err(Refusal::AlreadyTerminal(state))
        } else {
            Ok(())
        }
    };
    match op {
        ControlOp::Stop if engine == EngineKind::PlanetScale => Err(Refusal::StopNotSupported),
        ControlOp::Stop if revert_phase => Err(Refusal::InRevertPhase),
        ControlOp::Stop => refuse_terminal(),
        ControlOp::Cancel if revert_phase => Err(Refusal::InRevertPhase),
        ControlOp::Cancel if state == Stopped => Ok(()),
        ControlOp::Cancel => refuse_terminal(),
        ControlOp::Start if state == Stopped => Ok(()),
        ControlOp::Start => refuse_terminal(),
        ControlOp::Cutover if state == Recovering => Err(Refusal::NotApplicable(state)),
        ControlOp::Cutover => refuse_terminal(),
        ControlOp::Revert | ControlOp::SkipRevert if engine != EngineKind::PlanetScale => {
            Err(Refusal::NotApplicable(state))
        }
        ControlOp::Revert if pending.skip_revert => Err(Refusal::SkipRevertAlreadyChosen),
        ControlOp::SkipRevert if pending.revert => Err(Refusal::RevertAlreadyChosen),
        ControlOp::Revert | ControlOp::SkipRevert => refuse_terminal(),
        ControlOp::Release | ControlOp::Volume => refuse_terminal(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_waits_for_a_pending_stop_and_cutover_waits_while_recovering() {
        let rules = Rules::default();
        let both = PendingControls {
            stop: true,
            start: true,
            ..Default::default()
        };
        let opts = ApplyOptions::default();
        assert_eq!(
            rules.disposition(EngineKind::Spirit, Stopped, ControlOp::Start, &both, &opts),
            Disposition::Wait
        );
        let only_start = PendingControls {
            start: true,
            ..Default::default()
        };
        assert!(matches!(
            rules.disposition(
                EngineKind::Spirit,
                Stopped,
                ControlOp::Start,
                &only_start,
                &opts
            ),
            Disposition::Take(_)
        ));
        let cut = PendingControls {
            cutover: true,
            ..Default::default()
        };
        assert_eq!(
            rules.disposition(
                EngineKind::Spirit,
                Recovering,
                ControlOp::Cutover,
                &cut,
                &opts
            ),
            Disposition::Wait
        );
    }

    #[test]
    fn planetscale_stop_is_refused_and_revert_phase_cancel_is_refused() {
        let rules = Rules::default();
        let p = PendingControls {
            stop: true,
            cancel: true,
            ..Default::default()
        };
        let opts = ApplyOptions::default();
        for s in [Running, RevertWindow, PreparingBranch] {
            assert_eq!(
                rules.disposition(EngineKind::PlanetScale, s, ControlOp::Stop, &p, &opts),
                Disposition::Refuse(Refusal::StopNotSupported)
            );
        }
        assert_eq!(
            rules.disposition(
                EngineKind::PlanetScale,
                RevertWindow,
                ControlOp::Cancel,
                &p,
                &opts
            ),
            Disposition::Refuse(Refusal::InRevertPhase)
        );
    }

    #[test]
    fn every_settlement_that_completes_is_justified() {
        for op in ControlOp::ALL {
            for s in ApplyState::ALL.iter().filter(|s| s.is_terminal()) {
                if settle_on_terminal(*op, *s) == Disposition::Complete {
                    assert!(completion_is_justified(*op, *s), "{op} on {s}");
                }
            }
        }
    }

    #[test]
    fn every_row_that_completes_a_request_lands_in_a_state_that_justifies_it() {
        for r in TABLE.shipped() {
            for e in r.effects {
                if let super::super::table::Effect::CompleteRequest(op) = e {
                    assert!(
                        completion_is_justified(*op, r.to),
                        "{:?} completes {op} in {}",
                        r.event,
                        r.to
                    );
                }
            }
        }
    }
}
