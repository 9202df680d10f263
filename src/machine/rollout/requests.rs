//! What a request made of the whole rollout does to it: what accepting it changes at once,
//! which operation still acts on it, when a stop's hold lifts and when it is settled. Both
//! stores call these; neither re-states them.

use super::{is_orphaned, CutoverGate, Member, OnFailure, RolloutPolicy};
use crate::machine::control::completion_is_justified;
use crate::machine::{
    ApplyOptions, ApplyState, ControlOp, Disposition, EngineKind, PendingControls, Rules,
};

/// Why a request only a rollout acts on is refused on an apply of one operation: a release
/// lifts the hold of `on_failure = pause`, which only a rollout has.
pub fn refused_without_rollout(op: ControlOp) -> Option<&'static str> {
    (op == ControlOp::Release).then_some(
        "release lifts the hold of a rollout with on_failure = pause, and this apply runs as one operation",
    )
}

/// What accepting a request on a rollout does at once, before any operation acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The policy with its latches after the request.
    pub policy: RolloutPolicy,
    /// Withdraw every operation not started (`Rules::withdraw_move`) in the same write.
    pub withdraw_unstarted: bool,
    /// The request is complete already: nothing is left for an operation to do.
    pub complete_now: bool,
}

/// Accepting `op` on a rollout: a stop holds every new start (`held`); a release sets the
/// `pause` latch, one-way, and is complete at once (with no `pause` policy there is nothing to
/// release); a cancel withdraws the operations not started. A start waits for a pending stop,
/// as on any apply, and lifts the hold through [`hold_lifts`].
pub fn accept(policy: RolloutPolicy, op: ControlOp) -> Accepted {
    let mut next = policy;
    let mut accepted = Accepted {
        policy: next,
        withdraw_unstarted: false,
        complete_now: false,
    };
    match op {
        ControlOp::Stop => next.held = true,
        ControlOp::Release => {
            if policy.on_failure == OnFailure::Pause {
                next.released = true;
            }
            accepted.complete_now = true;
        }
        ControlOp::Cancel => accepted.withdraw_unstarted = true,
        _ => {}
    }
    accepted.policy = next;
    accepted
}

/// Whether a stop's hold lifts now: a start is pending and no stop is. The store re-checks
/// every deployment before it lets a stopped rollout become active again.
pub fn hold_lifts(policy: &RolloutPolicy, pending: &PendingControls) -> bool {
    policy.held && pending.start && !pending.stop
}

/// Whether a pending stop or start is settled for the whole rollout by its derived state: a
/// stop once nothing runs (its running operations failed or finished before they could stop),
/// a start once the rollout runs again. No operation is left to complete it otherwise.
pub fn settled_by_state(op: ControlOp, parent: ApplyState) -> bool {
    matches!(op, ControlOp::Stop | ControlOp::Start) && completion_is_justified(op, parent)
}

/// The parent's state with the stop hold settled: if `held` and the derivation says nothing
/// runs, the stop is done (`stop_done`) and, with a start pending, the hold lifts.
pub fn derive_settled(
    rules: &Rules,
    policy: &RolloutPolicy,
    members: &[Member],
    stop_pending: bool,
) -> (ApplyState, bool) {
    let to = rules.derive_rollout(policy, members);
    let stop_done = policy.held && stop_pending && settled_by_state(ControlOp::Stop, to);
    (to, stop_done)
}

/// Whether operation `i` still sees request `op`: an operation that did its part of a request
/// stops seeing it until it is issued again (`same_issue` false) or it reaches a state where
/// it acts on it again (a start done while running is needed again at a deferred deploy); a
/// cutover is hidden while the operation's cutover gate is closed (its turn comes when a
/// sibling's move opens the gate, which wakes it).
#[allow(clippy::too_many_arguments)]
pub fn sees_request(
    rules: &Rules,
    engine: EngineKind,
    options: &ApplyOptions,
    policy: &RolloutPolicy,
    members: &[Member],
    i: usize,
    op: ControlOp,
    acked_same_issue: bool,
    all: &PendingControls,
) -> bool {
    if op == ControlOp::Cutover
        && rules.rollout_cutover_gate(policy, members, i) != CutoverGate::Open
    {
        return false;
    }
    if !acked_same_issue {
        return true;
    }
    matches!(
        rules.disposition(engine, members[i].state, op, all, options),
        Disposition::Take(_)
    )
}

/// The pending requests as operation `i` sees them ([`sees_request`] for each); `acked` says
/// whether the operation acknowledged the current issue of a request.
#[allow(clippy::too_many_arguments)]
pub fn pending_for(
    rules: &Rules,
    engine: EngineKind,
    options: &ApplyOptions,
    policy: &RolloutPolicy,
    members: &[Member],
    i: usize,
    all: &PendingControls,
    acked: impl Fn(ControlOp) -> bool,
) -> PendingControls {
    let mut seen = *all;
    for op in ControlOp::ALL {
        if all.has(*op)
            && !sees_request(
                rules,
                engine,
                options,
                policy,
                members,
                i,
                *op,
                acked(*op),
                all,
            )
        {
            seen.set(*op, false);
        }
    }
    seen
}

/// Whether a request operation `i` completed is still acted on by another live operation (a
/// stop reaches every running operation, a cutover every one at the gate): then `i` only
/// acknowledges it, and the last one completes it.
#[allow(clippy::too_many_arguments)]
pub fn acted_on_elsewhere(
    rules: &Rules,
    engine: EngineKind,
    options: &ApplyOptions,
    policy: &RolloutPolicy,
    members: &[Member],
    i: usize,
    op: ControlOp,
    pending: &PendingControls,
) -> bool {
    members.iter().enumerate().any(|(j, m)| {
        j != i
            && !m.state.is_terminal()
            && !is_orphaned(policy, members, j)
            && matches!(
                rules.disposition(engine, m.state, op, pending, options),
                Disposition::Take(_) | Disposition::Wait
            )
    })
}

/// The operations parked at the cutover gate that must wake now: their gate opened.
pub fn wake_at_gate(rules: &Rules, policy: &RolloutPolicy, members: &[Member]) -> Vec<usize> {
    (0..members.len())
        .filter(|i| {
            members[*i].state == ApplyState::WaitingForCutover
                && rules.rollout_cutover_gate(policy, members, *i) == CutoverGate::Open
        })
        .collect()
}
