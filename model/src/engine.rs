//! The abstract engines: per apply, just enough truth to answer the core's probes and calls the
//! way `engine::fake` does, with every answer the real services might also give offered as a
//! nondeterministic [`Outcome`], and the ghost facts the invariants count.
//!
//! PlanetScale cannot fence by epoch (its API has no such notion), so a call from a displaced
//! driver lands like any other. Spirit runs in the operator's process and does see the epoch:
//! like `FakeSpirit` with `fence_epochs`, an older epoch is refused and a newer one supersedes the
//! runner of the same apply. Engine work moves on its own only where someone looks: a probe may
//! first advance the work one step (or fail it), which is observably the same as the work having
//! moved at any moment since the previous look.

use applyd::machine::table::RunnerGone;
use applyd::machine::{ApplyOptions, EngineCall, EngineKind, EngineState, Probe};
use applyd::worker::{ApplySnapshot, BranchStatus, EngineFault, Observation, RunnerStatus};

use crate::state::{Eng, Outcome, Runner};

/// The engine's own view of the apply's work (for `storage agrees with engine` and friends).
pub fn truth(kind: EngineKind, e: &Eng) -> Option<EngineState> {
    match kind {
        EngineKind::PlanetScale => e.dr,
        EngineKind::Spirit => {
            if let Some(r) = e.runner {
                return Some(if r.waiting {
                    EngineState::WaitingForCutover
                } else {
                    EngineState::Running
                });
            }
            if e.applied {
                return Some(EngineState::Completed);
            }
            e.outcome.map(|o| match o {
                RunnerStatus::Completed => EngineState::Completed,
                RunnerStatus::Failed { .. } => EngineState::Failed,
                RunnerStatus::Stopped => EngineState::Stopped,
                RunnerStatus::Cancelled => EngineState::Cancelled,
                _ => EngineState::Running,
            })
        }
    }
}

fn ps_next(dr: EngineState) -> Option<EngineState> {
    use EngineState as E;
    match dr {
        E::Pending => Some(E::WaitingForDeploy),
        E::Running => Some(E::WaitingForCutover),
        E::CuttingOver => Some(E::RevertWindow),
        E::Reverting => Some(E::Reverted),
        _ => None,
    }
}

fn spirit_can_advance(e: &Eng) -> bool {
    matches!(e.runner, Some(r) if !r.waiting || !e.sentinel)
}

fn spirit_copying(e: &Eng) -> bool {
    matches!(e.runner, Some(r) if !r.waiting)
}

/// The answers a probe may get.
pub fn probe_outcomes(kind: EngineKind, e: &Eng, out: &mut Vec<Outcome>) {
    out.push(Outcome::Ok);
    match kind {
        EngineKind::PlanetScale => {
            if e.dr.and_then(ps_next).is_some() {
                out.push(Outcome::Advance);
            }
            if matches!(e.dr, Some(EngineState::Pending | EngineState::Running)) {
                out.push(Outcome::FailPermanent);
            }
        }
        EngineKind::Spirit => {
            if spirit_can_advance(e) {
                out.push(Outcome::Advance);
            }
            if spirit_copying(e) {
                out.push(Outcome::FailRetryable);
                out.push(Outcome::FailPermanent);
            }
        }
    }
}

fn spirit_complete(e: &mut Eng) {
    e.runner = None;
    e.applied = true;
    e.sentinel = false;
    e.outcome = Some(RunnerStatus::Completed);
}

fn spirit_status(e: &Eng) -> RunnerStatus {
    if let Some(r) = e.runner {
        return if r.waiting {
            RunnerStatus::WaitingOnSentinel
        } else {
            RunnerStatus::Copying
        };
    }
    if let Some(o) = e.outcome {
        return o;
    }
    if e.applied {
        RunnerStatus::Gone(RunnerGone::NothingLeft)
    } else if e.sentinel {
        RunnerStatus::Gone(RunnerGone::SentinelKept)
    } else {
        RunnerStatus::Gone(RunnerGone::WorkLeft)
    }
}

/// Answer a probe (read-only, except that the work may move first).
pub fn probe(
    kind: EngineKind,
    e: &mut Eng,
    row: &ApplySnapshot,
    options: &ApplyOptions,
    p: Probe,
    outcome: Outcome,
) -> Observation {
    match outcome {
        Outcome::Transient => return Observation::Fault(EngineFault::Transient),
        Outcome::Advance => match kind {
            EngineKind::PlanetScale => e.dr = e.dr.and_then(ps_next).or(e.dr),
            EngineKind::Spirit => {
                if let Some(r) = e.runner.as_mut() {
                    if !r.waiting && options.defer_cutover && e.sentinel {
                        r.waiting = true;
                    } else {
                        spirit_complete(e);
                    }
                }
            }
        },
        Outcome::FailRetryable | Outcome::FailPermanent => match kind {
            EngineKind::PlanetScale => e.dr = Some(EngineState::Failed),
            EngineKind::Spirit => {
                e.runner = None;
                e.outcome = Some(RunnerStatus::Failed {
                    retryable: outcome == Outcome::FailRetryable,
                });
            }
        },
        _ => {}
    }
    match (kind, p) {
        (EngineKind::Spirit, Probe::RunnerStatus) => Observation::Runner(spirit_status(e)),
        (EngineKind::Spirit, _) | (EngineKind::PlanetScale, Probe::RunnerStatus) => {
            Observation::Fault(EngineFault::Permanent)
        }
        (_, Probe::GetBranch) => Observation::Branch(if e.branch {
            BranchStatus::Ready
        } else {
            BranchStatus::Missing
        }),
        (_, Probe::DiffBranch) if e.branch => Observation::BranchDiff {
            pending: !e.changes_applied,
        },
        (_, Probe::ValidateBranch) if e.branch && e.changes_applied => Observation::BranchValid,
        (_, Probe::ValidateBranch) if e.branch => Observation::Fault(EngineFault::Permanent),
        (_, Probe::DiffBranch | Probe::ValidateBranch) => Observation::Fault(EngineFault::NotFound),
        (_, Probe::FindDeployRequest) => match e.dr {
            Some(state) => Observation::DeployRequest { id: 1, state },
            None => Observation::NoDeployRequest,
        },
        (_, Probe::GetDeployRequest) => match (row.resume.deploy_request_id, e.dr) {
            (Some(id), Some(state)) if id >= 1 && id <= e.drs as u64 => {
                Observation::DeployRequest { id, state }
            }
            _ => Observation::Fault(EngineFault::NotFound),
        },
    }
}

/// What a deploy-request call does to the request, as `FakePlanetScale` decides it.
enum DrEffect {
    To(EngineState),
    AlreadyDone,
    Inapplicable,
}

fn dr_effect(call: EngineCall, dr: EngineState) -> DrEffect {
    use EngineCall as C;
    use EngineState as E;
    match (call, dr) {
        (C::Deploy, E::WaitingForDeploy) => DrEffect::To(E::Running),
        (C::Deploy, E::Running | E::WaitingForCutover) => DrEffect::AlreadyDone,
        (C::Cutover, E::WaitingForCutover) => DrEffect::To(E::CuttingOver),
        (C::Cutover, E::CuttingOver | E::RevertWindow | E::Completed) => DrEffect::AlreadyDone,
        (C::SkipRevert, E::RevertWindow) => DrEffect::To(E::Completed),
        (C::SkipRevert, E::Completed) => DrEffect::AlreadyDone,
        (C::Revert, E::RevertWindow) => DrEffect::To(E::Reverting),
        (C::Revert, E::Reverting | E::Reverted) => DrEffect::AlreadyDone,
        (
            C::CancelDeployRequest,
            E::Pending | E::WaitingForDeploy | E::Running | E::WaitingForCutover,
        ) => DrEffect::To(E::Cancelled),
        (C::CancelDeployRequest, E::Cancelled) => DrEffect::AlreadyDone,
        _ => DrEffect::Inapplicable,
    }
}

/// Injected call faults: a reply lost after the call took effect, and a transient failure
/// before it did (the core sees the same fault; only the engine's truth differs). A permanent
/// refusal is left out: it ends the apply as a failed probe does, which the work failures cover.
const FAULTS: [Outcome; 2] = [Outcome::LostReply, Outcome::Transient];

/// The answers a call may get.
pub fn call_outcomes(
    kind: EngineKind,
    e: &Eng,
    call: EngineCall,
    epoch: u8,
    budget: u8,
    out: &mut Vec<Outcome>,
) {
    out.push(Outcome::Ok);
    let faults = |out: &mut Vec<Outcome>| {
        if budget > 0 {
            out.extend_from_slice(&FAULTS);
        }
    };
    match kind {
        EngineKind::Spirit => {
            let known = matches!(
                call,
                EngineCall::StartRunner
                    | EngineCall::StopRunner
                    | EngineCall::CancelRunner
                    | EngineCall::DropSentinel
            );
            if known && epoch >= e.seen_epoch {
                faults(out);
            }
        }
        EngineKind::PlanetScale => match call {
            EngineCall::CreateBranch | EngineCall::CreateDeployRequest => faults(out),
            EngineCall::ApplyBranchChanges => {
                if e.branch {
                    faults(out)
                }
            }
            _ => {
                if let Some(dr) = e.dr {
                    match dr_effect(call, dr) {
                        DrEffect::To(_) => faults(out),
                        DrEffect::AlreadyDone => {}
                        DrEffect::Inapplicable => out.push(Outcome::Ignored),
                    }
                }
            }
        },
    }
}

/// Execute a call. `host` is the calling worker (a Spirit runner lives in its process).
#[allow(clippy::too_many_arguments)]
pub fn call(
    kind: EngineKind,
    e: &mut Eng,
    row: &ApplySnapshot,
    options: &ApplyOptions,
    epoch: u8,
    host: u8,
    c: EngineCall,
    outcome: Outcome,
) -> Observation {
    match outcome {
        Outcome::Transient => return Observation::Fault(EngineFault::Transient),
        Outcome::Permanent => return Observation::Fault(EngineFault::Permanent),
        _ => {}
    }
    let reply = match kind {
        EngineKind::Spirit => spirit_call(e, options, epoch, host, c),
        EngineKind::PlanetScale => ps_call(e, row, c, outcome),
    };
    if outcome == Outcome::LostReply {
        Observation::Fault(EngineFault::Transient)
    } else {
        reply
    }
}

fn spirit_call(
    e: &mut Eng,
    options: &ApplyOptions,
    epoch: u8,
    host: u8,
    c: EngineCall,
) -> Observation {
    if epoch < e.seen_epoch {
        return Observation::Fault(EngineFault::StaleEpoch);
    }
    e.seen_epoch = epoch;
    match c {
        EngineCall::StartRunner => {
            if e.applied {
                return Observation::Runner(RunnerStatus::Gone(RunnerGone::NothingLeft));
            }
            if e.runner.is_none_or(|r| r.epoch < epoch) {
                e.runner = Some(Runner {
                    epoch,
                    host,
                    waiting: false,
                });
                e.outcome = None;
                if options.defer_cutover {
                    e.sentinel = true;
                }
            }
            Observation::Runner(RunnerStatus::Copying)
        }
        EngineCall::StopRunner => {
            e.runner = None;
            let status = match e.outcome {
                Some(done @ (RunnerStatus::Completed | RunnerStatus::Failed { .. })) => done,
                _ => RunnerStatus::Stopped,
            };
            e.outcome = Some(status);
            Observation::Runner(status)
        }
        EngineCall::CancelRunner => {
            e.runner = None;
            if e.applied {
                Observation::Runner(RunnerStatus::Completed)
            } else {
                e.sentinel = false;
                e.outcome = Some(RunnerStatus::Cancelled);
                Observation::Runner(RunnerStatus::Cancelled)
            }
        }
        EngineCall::DropSentinel => {
            e.sentinel = false;
            Observation::Accepted
        }
        _ => Observation::Fault(EngineFault::Permanent),
    }
}

fn ps_call(e: &mut Eng, row: &ApplySnapshot, c: EngineCall, outcome: Outcome) -> Observation {
    match c {
        EngineCall::CreateBranch => {
            // The branch name is deterministic: "already taken" is success.
            e.branch = true;
            Observation::Branch(BranchStatus::Creating)
        }
        EngineCall::ApplyBranchChanges => {
            if e.branch {
                e.changes_applied = true;
                Observation::BranchDiff { pending: false }
            } else {
                Observation::Fault(EngineFault::NotFound)
            }
        }
        EngineCall::CreateDeployRequest => {
            e.drs = e.drs.saturating_add(1);
            if e.dr.is_none() {
                e.dr = Some(EngineState::Pending);
            }
            Observation::DeployRequest {
                id: e.drs as u64,
                state: EngineState::Pending,
            }
        }
        _ => {
            let id = row.resume.deploy_request_id.unwrap_or(1);
            let Some(dr) = e.dr else {
                // A cancel with no deploy request yet has nothing to cancel.
                return if c == EngineCall::CancelDeployRequest {
                    Observation::DeployRequest {
                        id: 0,
                        state: EngineState::Cancelled,
                    }
                } else {
                    Observation::Fault(EngineFault::NotFound)
                };
            };
            match dr_effect(c, dr) {
                DrEffect::To(next) => e.dr = Some(next),
                DrEffect::AlreadyDone => {}
                DrEffect::Inapplicable if outcome == Outcome::Ignored => {}
                DrEffect::Inapplicable => return Observation::Fault(EngineFault::Permanent),
            }
            Observation::DeployRequest {
                id,
                state: e.dr.unwrap_or(dr),
            }
        }
    }
}
