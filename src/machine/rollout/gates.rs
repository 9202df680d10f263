//! When an operation of a rollout may start, when it may cut over, and which never-started
//! operations never will (orphans). Each gate answers with its reason, which status lines show.

use std::fmt;

use super::{CutoverPolicy, FailureMode, Member, RolloutPolicy};
use crate::machine::states::ApplyState;

/// Whether a `pending` operation may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartGate {
    Open,
    /// An earlier operation must complete first: an earlier table step of the same deployment,
    /// or under `rolling` any earlier operation.
    WaitsFor {
        member: usize,
    },
    /// `max_drivers` operations are already copying.
    Capped {
        in_flight: u32,
        max: u32,
    },
    /// A failure under `pause` holds new starts until a person releases the rollout.
    Held,
    /// An operation was stopped: a stop acts on the whole rollout, so nothing new starts until
    /// a start resumes it.
    Stopped {
        member: usize,
    },
    /// It will never start: see [`is_orphaned`].
    Orphaned,
}

/// Whether an operation at the cutover gate may cut over now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutoverGate {
    Open,
    /// Another operation is cutting over: one at a time.
    OneAtATime {
        member: usize,
    },
    /// An earlier operation has not cut over yet: cutovers go in order.
    InOrder {
        member: usize,
    },
    /// `barrier`: an operation has not reached the cutover gate yet.
    Barrier {
        member: usize,
    },
}

/// A `pending` operation that will never start, so it counts as settled: behind a table step of
/// its deployment that failed, was cancelled or reverted (under every policy); in a rollout an
/// operation of which was cancelled or reverted (only the whole apply is cancelled or
/// reverted); or behind any failure when the rollout halts.
pub fn is_orphaned(policy: &RolloutPolicy, members: &[Member], i: usize) -> bool {
    let m = &members[i];
    if m.state != ApplyState::Pending {
        return false;
    }
    let step_ended = members
        .iter()
        .any(|o| o.deployment == m.deployment && o.step < m.step && o.ends_its_steps());
    let withdrawn = members
        .iter()
        .any(|o| matches!(o.state, ApplyState::Cancelled | ApplyState::Reverted));
    step_ended || withdrawn || failure_mode(policy, members) == Some(FailureMode::Halt)
}

/// How the rollout treats its failures now, if it has any.
pub(crate) fn failure_mode(policy: &RolloutPolicy, members: &[Member]) -> Option<FailureMode> {
    if !members.iter().any(Member::failed) {
        return None;
    }
    let failed_closed = members.iter().any(|m| m.failed_closed && m.failed());
    Some(policy.failure_mode(failed_closed))
}

/// Whether operation `i` may start now. Only `pending` operations are gated: reclaiming a
/// started one whose driver died, and stop and cancel, never are (gating them would wedge a
/// rollout whose drivers died).
pub fn start_gate(policy: &RolloutPolicy, members: &[Member], i: usize) -> StartGate {
    let m = &members[i];
    if m.state != ApplyState::Pending {
        return StartGate::Open;
    }
    if is_orphaned(policy, members, i) {
        return StartGate::Orphaned;
    }
    if failure_mode(policy, members) == Some(FailureMode::Hold) {
        return StartGate::Held;
    }
    if let Some(member) = members.iter().position(|o| o.state == ApplyState::Stopped) {
        return StartGate::Stopped { member };
    }
    if policy.held {
        return StartGate::Stopped { member: i };
    }
    let earlier_step = members.iter().position(|o| {
        o.deployment == m.deployment && o.step < m.step && o.state != ApplyState::Completed
    });
    if let Some(member) = earlier_step {
        return StartGate::WaitsFor { member };
    }
    if policy.cutover == CutoverPolicy::Rolling {
        // Under `continue` an earlier failure is settled for good, and so is an orphan: later
        // operations still run.
        let earlier = (0..members.len()).find(|&j| {
            let o = &members[j];
            o.before(m) && !o.terminal() && !is_orphaned(policy, members, j)
        });
        if let Some(member) = earlier {
            return StartGate::WaitsFor { member };
        }
    }
    let in_flight = members.iter().filter(|o| o.in_flight()).count() as u32;
    if in_flight >= policy.max_drivers.max(1) {
        return StartGate::Capped {
            in_flight,
            max: policy.max_drivers.max(1),
        };
    }
    StartGate::Open
}

/// Whether operation `i`, at the cutover gate, may cut over now: one at a time, in cutover
/// order, and under `barrier` only once every operation of its table step has reached the gate.
/// An operation elsewhere is not gated (`Open`).
pub fn cutover_gate(policy: &RolloutPolicy, members: &[Member], i: usize) -> CutoverGate {
    let m = &members[i];
    if m.state != ApplyState::WaitingForCutover {
        return CutoverGate::Open;
    }
    let others = || members.iter().enumerate().filter(move |(j, _)| *j != i);
    if let Some((member, _)) = others().find(|(_, o)| o.state == ApplyState::CuttingOver) {
        return CutoverGate::OneAtATime { member };
    }
    if policy.cutover == CutoverPolicy::Barrier {
        let short = others().find(|(j, o)| {
            o.step == m.step
                && !o.past_cutover()
                && o.state != ApplyState::WaitingForCutover
                && !is_orphaned(policy, members, *j)
        });
        if let Some((member, _)) = short {
            return CutoverGate::Barrier { member };
        }
    }
    let earlier = others().find(|(j, o)| {
        o.cuts_over_before(m, policy.cutover)
            && !o.past_cutover()
            && !is_orphaned(policy, members, *j)
    });
    if let Some((member, _)) = earlier {
        return CutoverGate::InOrder { member };
    }
    CutoverGate::Open
}

impl fmt::Display for StartGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartGate::Open => f.write_str("may start"),
            StartGate::WaitsFor { member } => {
                write!(f, "waits for operation #{} to complete", member + 1)
            }
            StartGate::Capped { in_flight, max } => write!(
                f,
                "waits for a copy slot ({in_flight} of max_drivers_per_apply {max} copying)"
            ),
            StartGate::Held => f.write_str(
                "held by on_failure = pause: `applyd release` lets the rest run, stop or cancel ends it",
            ),
            StartGate::Stopped { member } => write!(
                f,
                "the rollout is stopped (operation #{}): nothing starts until a start resumes it",
                member + 1
            ),
            StartGate::Orphaned => f.write_str("will not run: an earlier failure ended the rollout here"),
        }
    }
}

impl fmt::Display for CutoverGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CutoverGate::Open => f.write_str("may cut over"),
            CutoverGate::OneAtATime { member } => {
                write!(
                    f,
                    "waits for operation #{} to finish its cutover",
                    member + 1
                )
            }
            CutoverGate::InOrder { member } => {
                write!(f, "cuts over after operation #{}", member + 1)
            }
            CutoverGate::Barrier { member } => write!(
                f,
                "barrier: waits for operation #{} to reach the cutover gate",
                member + 1
            ),
        }
    }
}

/// Why operation `i` is held by its rollout right now, for status lines: a `pending` operation
/// whose start gate is closed, or one waiting for its cutover whose cutover gate is closed.
/// `None` when the rollout holds nothing back (the operation's own state says the rest).
pub fn member_gate(policy: &RolloutPolicy, members: &[Member], i: usize) -> Option<String> {
    match members[i].state {
        ApplyState::Pending => match start_gate(policy, members, i) {
            StartGate::Open => None,
            gate => Some(format!("start: {gate}")),
        },
        ApplyState::WaitingForCutover => match cutover_gate(policy, members, i) {
            CutoverGate::Open => None,
            gate => Some(format!("cutover: {gate}")),
        },
        _ => None,
    }
}
