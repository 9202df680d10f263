//! The parent apply's state as a pure function of its operations and the policy. The parent row
//! is only ever written with this function's answer, in the same transaction as the operation
//! change that moved it; no driver guesses it.

use super::gates::{failure_mode, is_orphaned};
use super::{FailureMode, Member, RolloutPolicy};
use crate::machine::states::ApplyState::{self, *};

/// Waits whose state the parent takes on when every started operation rests in the same one,
/// even while later operations have not started (they are gated behind it); earliest phase
/// first: when the started operations rest in different ones, the parent shows the first of
/// them, the one a person (or time) must move on before the rest can.
const SHARED_WAITS: &[ApplyState] = &[Stopped, WaitingForDeploy, WaitingForCutover, RevertWindow];

/// The parent's state. With one operation it is that operation's state. Otherwise:
/// - a failure (an operation `failed`): `paused` while a `pause` hold stands and later work
///   remains; `failed` only once no operation is left that is neither terminal nor orphaned
///   (settled is not terminal: a stopped operation keeps its engine state on its target);
///   the earliest wait the started ones rest in, if they all rest (`stopped` first: a person
///   must move it on); else `running_degraded`. A fail-closed operation makes every policy
///   `halt`;
/// - no failure: once every operation is terminal or orphaned, `cancelled` if one was cancelled,
///   else `reverted` if one was reverted, else `completed`; `pending` before anything started;
///   the state every started operation shares, if the rest have not started or that state is a
///   wait; the earliest of the waits they rest in, if they all rest; else `running_degraded`
///   if one is degraded, else `running`.
pub fn derive_parent(policy: &RolloutPolicy, members: &[Member]) -> ApplyState {
    let live: Vec<&Member> = members
        .iter()
        .enumerate()
        .filter(|(i, m)| !m.terminal() && !is_orphaned(policy, members, *i))
        .map(|(_, m)| m)
        .collect();
    let started: Vec<&&Member> = live.iter().filter(|m| m.state != Pending).collect();
    // Stopped by a person, and every started operation stopped (none waits with engine work
    // alive, such as a runner at its sentinel): the rollout is stopped until a start.
    if policy.held && !live.is_empty() && started.iter().all(|m| m.state == Stopped) {
        return Stopped;
    }
    if let Some(mode) = failure_mode(policy, members) {
        let later_work = live.iter().any(|m| m.state == Pending);
        return if mode == FailureMode::Hold && later_work {
            Paused
        } else if live.is_empty() {
            Failed
        } else if let Some(wait) = earliest_wait(&started) {
            wait
        } else {
            RunningDegraded
        };
    }
    if live.is_empty() {
        return if members.iter().any(|m| m.state == Cancelled) {
            Cancelled
        } else if members.iter().any(|m| m.state == Reverted) {
            Reverted
        } else {
            Completed
        };
    }
    let Some(first) = started.first() else {
        return if members.iter().all(|m| m.state == Pending) {
            Pending
        } else {
            Running
        };
    };
    let shared = started.iter().all(|m| m.state == first.state);
    if shared && (started.len() == live.len() || SHARED_WAITS.contains(&first.state)) {
        return first.state;
    }
    if let Some(wait) = earliest_wait(&started) {
        return wait;
    }
    if started.iter().any(|m| m.state == RunningDegraded) {
        RunningDegraded
    } else {
        Running
    }
}

/// The earliest of the waits the started operations rest in, when they all rest in one.
fn earliest_wait(started: &[&&Member]) -> Option<ApplyState> {
    if started.is_empty() || !started.iter().all(|m| SHARED_WAITS.contains(&m.state)) {
        return None;
    }
    SHARED_WAITS
        .iter()
        .copied()
        .find(|w| started.iter().any(|m| m.state == *w))
}
