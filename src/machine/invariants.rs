//! Safety invariants as pure functions over a snapshot of the world. The model checker, the
//! simulator and the integration tests all call these; none restates them.

use std::collections::BTreeMap;

use super::apply::ApplyId;
use super::claim::PendingControls;
use super::states::{ApplyState, EngineKind, EngineState};
use super::table::{EngineCall, TABLE};

/// What an invariant needs to know about one apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApplyFacts {
    pub id: u32,
    pub target: u32,
    pub engine: EngineKind,
    pub state: ApplyState,
    /// It holds `target` (an apply while active; for a rollout, its first operation on each
    /// deployment while the rollout is active).
    pub holds_target: bool,
    pub attempt: u32,
    pub controls: PendingControls,
    /// Deploy requests ever created for this apply.
    pub deploy_requests_created: u32,
    /// The engine's own view of this apply's work, if the engine has any.
    pub engine_truth: Option<EngineState>,
    /// A runner of this apply is alive.
    pub runner_alive: bool,
}

/// A broken invariant, with enough words to read in a counterexample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

pub const ONE_ACTIVE_PER_TARGET: &str = "one active apply per target";
pub const ONE_DEPLOY_REQUEST: &str = "at most one deploy request per apply";
pub const ONE_RUNNER_PER_TARGET: &str = "at most one spirit runner per target";
pub const STORAGE_AGREES_WITH_ENGINE: &str = "storage agrees with engine";
pub const RETRY_BUDGET: &str = "retry attempt within budget";

/// Checks every state invariant over a world snapshot.
pub fn check_world(
    applies: &[ApplyFacts],
    runners_per_target: &BTreeMap<u32, u32>,
    retry_budget: u32,
) -> Result<(), Violation> {
    let mut active: BTreeMap<u32, u32> = BTreeMap::new();
    for a in applies {
        if a.holds_target {
            if let Some(other) = active.insert(a.target, a.id) {
                return Err(Violation {
                    invariant: ONE_ACTIVE_PER_TARGET,
                    detail: format!(
                        "applies {other} and {} are both active on target {}",
                        a.id, a.target
                    ),
                });
            }
        }
        if a.deploy_requests_created > 1 {
            return Err(Violation {
                invariant: ONE_DEPLOY_REQUEST,
                detail: format!(
                    "apply {} created {} deploy requests",
                    a.id, a.deploy_requests_created
                ),
            });
        }
        if a.attempt > retry_budget {
            return Err(Violation {
                invariant: RETRY_BUDGET,
                detail: format!(
                    "apply {} at attempt {} > budget {retry_budget}",
                    a.id, a.attempt
                ),
            });
        }
        storage_agrees_with_engine(a)?;
    }
    for (target, n) in runners_per_target {
        if *n > 1 {
            return Err(Violation {
                invariant: ONE_RUNNER_PER_TARGET,
                detail: format!("{n} runners alive on target {target}"),
            });
        }
    }
    Ok(())
}

/// Storage may record an outcome only once the engine made it true (S7).
pub fn storage_agrees_with_engine(a: &ApplyFacts) -> Result<(), Violation> {
    use ApplyState as A;
    use EngineState as E;
    let ok = match a.state {
        A::Completed => matches!(a.engine_truth, Some(E::Completed)),
        A::Reverted => matches!(a.engine_truth, Some(E::Reverted)),
        A::Cancelled => {
            !a.runner_alive
                && !matches!(
                    a.engine_truth,
                    Some(
                        E::Completed
                            | E::RevertWindow
                            | E::Reverting
                            | E::Reverted
                            | E::CuttingOver
                    )
                )
        }
        A::Stopped => !a.runner_alive,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Violation {
            invariant: STORAGE_AGREES_WITH_ENGINE,
            detail: format!(
                "apply {} is {} but the engine says {} (runner alive: {})",
                a.id,
                a.state,
                a.engine_truth.map_or("nothing", |s| s.as_str()),
                a.runner_alive
            ),
        })
    }
}

pub const LEGAL_STEP: &str = "every state change is a row of the table";
pub const STALE_EPOCH_WRITE: &str = "a stale epoch never writes";
pub const STOP_DOMINANCE: &str = "a pending stop blocks deploy, cutover and completion";
pub const CUTOVER_AFTER_GATE: &str = "cutover only after waiting_for_cutover";
pub const JUSTIFIED_COMPLETION: &str = "a request completes only once its effect holds";

/// A persisted state change must be a shipped row (terminal states absorb).
pub fn legal_step(engine: EngineKind, from: ApplyState, to: ApplyState) -> Result<(), Violation> {
    if from == to || TABLE.is_shipped_step(engine, from, to) {
        Ok(())
    } else {
        Err(Violation {
            invariant: LEGAL_STEP,
            detail: format!("{engine} apply moved {from} -> {to}"),
        })
    }
}

/// A write landed with an epoch older than the row's current epoch.
pub fn stale_write(row_epoch: u64, writer_epoch: u64) -> Result<(), Violation> {
    if writer_epoch == row_epoch {
        Ok(())
    } else {
        Err(Violation {
            invariant: STALE_EPOCH_WRITE,
            detail: format!(
                "a write with epoch {writer_epoch} landed on a row at epoch {row_epoch}"
            ),
        })
    }
}

/// Calls that move an apply forward; none may be issued while a stop or cancel is pending.
pub fn advances_apply(call: EngineCall) -> bool {
    !matches!(
        call,
        EngineCall::StopRunner | EngineCall::CancelRunner | EngineCall::CancelDeployRequest
    )
}

pub fn stop_dominance(
    controls: &PendingControls,
    engine: EngineKind,
    call: EngineCall,
) -> Result<(), Violation> {
    // A PlanetScale stop is refused, so it blocks nothing; a cancel blocks both engines.
    let blocking = controls.cancel || (controls.stop && engine == EngineKind::Spirit);
    if blocking && advances_apply(call) {
        Err(Violation {
            invariant: STOP_DOMINANCE,
            detail: format!("{call:?} issued while a stop or cancel is pending"),
        })
    } else {
        Ok(())
    }
}

/// A cutover call needs the engine at (or past) its cutover gate.
pub fn cutover_after_gate(
    call: EngineCall,
    engine_truth: Option<EngineState>,
) -> Result<(), Violation> {
    let is_cutover = matches!(call, EngineCall::Cutover | EngineCall::DropSentinel);
    let at_gate = matches!(
        engine_truth,
        Some(
            EngineState::WaitingForCutover
                | EngineState::CuttingOver
                | EngineState::RevertWindow
                | EngineState::Completed
        )
    );
    if is_cutover && !at_gate {
        Err(Violation {
            invariant: CUTOVER_AFTER_GATE,
            detail: format!(
                "{call:?} issued while the engine is {}",
                engine_truth.map_or("idle", |s| s.as_str())
            ),
        })
    } else {
        Ok(())
    }
}

pub fn justified_completion(
    op: super::states::ControlOp,
    state: ApplyState,
) -> Result<(), Violation> {
    if super::control::completion_is_justified(op, state) {
        Ok(())
    } else {
        Err(Violation {
            invariant: JUSTIFIED_COMPLETION,
            detail: format!("{op} request completed while the apply is {state}"),
        })
    }
}

pub const REVIEWED_CHANGE_ONLY: &str = "only the reviewed change is handed to an engine";

/// S8: a call that hands the stored DDL to an engine is made only while that DDL is the change
/// reviewed at submit (`change_reviewed` is what the caller read alongside it).
pub fn reviewed_change_only(call: EngineCall, change_reviewed: bool) -> Result<(), Violation> {
    if call.hands_over_ddl() && !change_reviewed {
        Err(Violation {
            invariant: REVIEWED_CHANGE_ONLY,
            detail: format!("{call:?} issued with a change that drifted from its review"),
        })
    } else {
        Ok(())
    }
}

pub const RESUBMISSION_ADOPTS: &str = "a repeated submission never starts a second apply";

/// A submission repeated while its apply is live answers with that apply (`answered` is the id
/// and whether it was adopted); one repeated while another apply holds the target is refused
/// naming it (`answered` is `None`, `named` the apply the refusal names).
pub fn resubmission_adopts(
    live: ApplyId,
    answered: Option<(ApplyId, bool)>,
    named: Option<ApplyId>,
    original_is_live: bool,
) -> Result<(), Violation> {
    let ok = match (original_is_live, answered) {
        (true, Some((id, adopted))) => adopted && id == live,
        (true, None) => false,
        (false, Some(_)) => false,
        (false, None) => named.is_some_and(|n| n != live),
    };
    if ok {
        Ok(())
    } else {
        Err(Violation {
            invariant: RESUBMISSION_ADOPTS,
            detail: format!(
                "apply {live} ({}) resubmitted: answered {answered:?}, refusal naming {named:?}",
                if original_is_live {
                    "live"
                } else {
                    "not live, its target busy"
                }
            ),
        })
    }
}

pub const ROLLOUT_PARENT_DERIVED: &str = "a rollout's state is the derivation of its operations";
pub const ROLLOUT_START_GATE: &str = "an operation starts only through an open start gate";
pub const ROLLOUT_CUTOVER_GATE: &str =
    "an operation cuts over only through an open cutover gate, one at a time";
pub const ROLLOUT_RELEASE_LATCH: &str = "a rollout's release is one-way";
pub const ROLLOUT_NO_ORPHAN: &str = "a finished rollout leaves no operation live";

/// One step of a rollout, from `before` to `after` (its operations in rollout order, with the
/// policy as it was before the step and as it is now): the parent is the derivation of its operations; an
/// operation leaves `pending` only through an open start gate (or withdrawn by a cancel); it
/// enters `cutting_over` only through an open cutover gate; at most one cuts over at a time.
pub fn rollout_step(
    policy: &super::rollout::RolloutPolicy,
    before: &[super::rollout::Member],
    now_policy: &super::rollout::RolloutPolicy,
    after: &[super::rollout::Member],
    parent: ApplyState,
) -> Result<(), Violation> {
    use super::rollout::{cutover_gate, derive_parent, start_gate, CutoverGate, StartGate};
    if policy.released && !now_policy.released {
        return Err(Violation {
            invariant: ROLLOUT_RELEASE_LATCH,
            detail: "a released rollout was held again".into(),
        });
    }
    let derived = derive_parent(now_policy, after);
    if parent != derived {
        return Err(Violation {
            invariant: ROLLOUT_PARENT_DERIVED,
            detail: format!("the rollout is {parent}, its operations derive {derived}"),
        });
    }
    let cutting = after
        .iter()
        .filter(|m| m.state == ApplyState::CuttingOver)
        .count();
    if cutting > 1 {
        return Err(Violation {
            invariant: ROLLOUT_CUTOVER_GATE,
            detail: format!("{cutting} operations cut over at once"),
        });
    }
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        if b.state == ApplyState::Pending
            && !matches!(a.state, ApplyState::Pending | ApplyState::Cancelled)
        {
            let gate = start_gate(policy, before, i);
            if gate != StartGate::Open {
                return Err(Violation {
                    invariant: ROLLOUT_START_GATE,
                    detail: format!("operation {} started to {}: {gate}", i + 1, a.state),
                });
            }
        }
        if b.state == ApplyState::WaitingForCutover && a.state == ApplyState::CuttingOver {
            let gate = cutover_gate(policy, before, i);
            if gate != CutoverGate::Open {
                return Err(Violation {
                    invariant: ROLLOUT_CUTOVER_GATE,
                    detail: format!("operation {} cut over: {gate}", i + 1),
                });
            }
        }
    }
    Ok(())
}

/// One operation of a rollout as [`rollout_no_orphan`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OperationFacts {
    pub state: ApplyState,
    /// Engine work of the operation is alive (a Spirit runner).
    pub runner_alive: bool,
}

/// Once a rollout has finished (`completed`, `failed`, `cancelled` or `reverted`; not
/// `stopped`, which a start resumes), each of its operations finished too or never started,
/// and no engine work of any of them is alive: nothing is left behind a verdict that nobody
/// will look at again. A verdict reached while an operation still runs or holds its target
/// (a stopped one keeps its engine state) is premature.
pub fn rollout_no_orphan(parent: ApplyState, ops: &[OperationFacts]) -> Result<(), Violation> {
    let finished = |s: ApplyState| {
        matches!(
            s,
            ApplyState::Completed
                | ApplyState::Failed
                | ApplyState::Cancelled
                | ApplyState::Reverted
        )
    };
    if !finished(parent) {
        return Ok(());
    }
    for (i, op) in ops.iter().enumerate() {
        if !finished(op.state) && op.state != ApplyState::Pending {
            return Err(Violation {
                invariant: ROLLOUT_NO_ORPHAN,
                detail: format!(
                    "the rollout is {parent} while operation {} is {}",
                    i + 1,
                    op.state
                ),
            });
        }
        if op.runner_alive {
            return Err(Violation {
                invariant: ROLLOUT_NO_ORPHAN,
                detail: format!(
                    "the rollout is {parent} while operation {}'s runner is alive",
                    i + 1
                ),
            });
        }
    }
    Ok(())
}

pub const NO_STARVATION: &str = "claimable work never waits long while a driver is free";

/// Concurrency is spent on engine work, whatever the number of waiting applies: once `apply`
/// is claimable and some driver is free (idle, or held only by a wait that gives its driver
/// back, `Rules::rests_now`), a claim takes it within `bound_ms`. The two ages are how long
/// each has held without a break.
pub fn no_starvation(
    apply: ApplyId,
    claimable_for_ms: u64,
    driver_free_for_ms: u64,
    bound_ms: u64,
) -> Result<(), Violation> {
    let waited = claimable_for_ms.min(driver_free_for_ms);
    if waited > bound_ms {
        Err(Violation {
            invariant: NO_STARVATION,
            detail: format!(
                "apply {apply} claimable for {claimable_for_ms} ms while a driver was free for {driver_free_for_ms} ms (bound {bound_ms} ms)"
            ),
        })
    } else {
        Ok(())
    }
}

pub const LEASE_LOSS_BOUND: &str =
    "a driver past the presumed-loss bound neither calls the engine nor writes";

/// S12: a driver whose heartbeats have failed for `presumed_loss_ms` has stopped acting, so a
/// peer that reclaims the stale lease never races it. `acted` is whether it issued an engine
/// call or a store write with that heartbeat age.
pub fn lease_loss_bound(
    heartbeat_ok_age_ms: u64,
    presumed_loss_ms: u64,
    acted: bool,
) -> Result<(), Violation> {
    if acted && heartbeat_ok_age_ms >= presumed_loss_ms {
        Err(Violation {
            invariant: LEASE_LOSS_BOUND,
            detail: format!(
                "acted {heartbeat_ok_age_ms} ms after its last good heartbeat (bound {presumed_loss_ms} ms)"
            ),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_submission_adopts_the_live_apply_and_nothing_else() {
        // Live: only the same apply, adopted, will do.
        assert!(resubmission_adopts(3, Some((3, true)), None, true).is_ok());
        assert!(resubmission_adopts(3, Some((4, false)), None, true).is_err());
        assert!(resubmission_adopts(3, Some((3, false)), None, true).is_err());
        assert!(resubmission_adopts(3, None, Some(3), true).is_err());
        // Another apply holds the target: a refusal naming it.
        assert!(resubmission_adopts(3, None, Some(5), false).is_ok());
        assert!(resubmission_adopts(3, Some((3, true)), None, false).is_err());
        assert!(resubmission_adopts(3, Some((6, false)), None, false).is_err());
    }

    #[test]
    fn only_the_calls_that_hand_over_ddl_need_the_reviewed_change() {
        assert!(reviewed_change_only(EngineCall::StartRunner, false).is_err());
        assert!(reviewed_change_only(EngineCall::ApplyBranchChanges, false).is_err());
        assert!(reviewed_change_only(EngineCall::StartRunner, true).is_ok());
        // Stopping or cancelling a drifted change's work is always allowed.
        assert!(reviewed_change_only(EngineCall::CancelRunner, false).is_ok());
        assert!(reviewed_change_only(EngineCall::CancelDeployRequest, false).is_ok());
    }

    #[test]
    fn a_finished_rollout_leaves_nothing_live() {
        let op = |state, runner_alive| OperationFacts {
            state,
            runner_alive,
        };
        use ApplyState::*;
        // Finished, with an operation that never started: fine.
        assert!(rollout_no_orphan(Failed, &[op(Failed, false), op(Pending, false)]).is_ok());
        // A verdict while an operation runs, or is stopped holding its target: premature.
        assert!(rollout_no_orphan(Failed, &[op(Failed, false), op(Running, false)]).is_err());
        assert!(rollout_no_orphan(Failed, &[op(Failed, false), op(Stopped, false)]).is_err());
        // A runner left alive behind a verdict.
        assert!(rollout_no_orphan(Completed, &[op(Completed, true)]).is_err());
        // A stopped rollout is not finished: a start resumes it.
        assert!(rollout_no_orphan(Stopped, &[op(Stopped, false), op(Running, false)]).is_ok());
    }

    #[test]
    fn starvation_needs_both_work_and_a_free_driver_past_the_bound() {
        assert!(no_starvation(1, 90_000, 61_000, 60_000).is_err());
        // Either side alone is not starvation: all drivers busy, or the work just appeared.
        assert!(no_starvation(1, 90_000, 10_000, 60_000).is_ok());
        assert!(no_starvation(1, 5_000, 900_000, 60_000).is_ok());
        assert!(no_starvation(1, 60_000, 60_000, 60_000).is_ok());
    }
}
