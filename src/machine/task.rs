//! The task no-backward-progress rule (reference §2.2) as data: a rank order plus the few
//! explicit steps outside it. `sync_task` is the one function that reads them; `task_after_move`
//! is how the stores bring task rows along with every state change of their apply.

use super::states::ApplyState;
use super::states::TaskState::{self, *};

/// Forward order of in-flight task states; a task never moves down this list.
pub const TASK_RANK: &[TaskState] = &[
    Pending,
    WaitingForDeploy,
    Running,
    Checksumming,
    WaitingForCutover,
    CuttingOver,
    RevertWindow,
    Reverting,
];

/// Steps allowed although they are not upward in `TASK_RANK` (or leave an unranked state).
pub const TASK_EXTRA_STEPS: &[(TaskState, TaskState)] =
    &[(Running, WaitingForDeploy), (Recovering, WaitingForCutover)];

/// Engine-reported states that always win over a non-terminal stored state.
pub const TASK_ENGINE_WINS: &[TaskState] = &[
    Completed,
    Failed,
    Reverted,
    Cancelled,
    Stopped,
    FailedRetryable,
];

fn rank(s: TaskState) -> Option<usize> {
    TASK_RANK.iter().position(|r| *r == s)
}

/// The task state to store, given the stored one and what the engine reports now.
pub fn sync_task(stored: TaskState, reported: TaskState) -> TaskState {
    if stored.is_terminal() {
        return stored;
    }
    if TASK_ENGINE_WINS.contains(&reported) || TASK_EXTRA_STEPS.contains(&(stored, reported)) {
        return reported;
    }
    match (rank(stored), rank(reported)) {
        (Some(a), Some(b)) if b > a => reported,
        _ => stored,
    }
}

/// What an apply state says about its tasks (the engine→task mapping of §2.2, seen through the
/// apply). `None`: the state says nothing about the tasks (`paused` is a hold, not progress).
pub const fn task_state_of(apply: ApplyState) -> Option<TaskState> {
    use ApplyState as A;
    Some(match apply {
        // The PlanetScale setup phase runs before any table is touched.
        A::Pending
        | A::PreparingBranch
        | A::ApplyingBranchChanges
        | A::ValidatingBranch
        | A::CreatingDeployRequest
        | A::ValidatingDeployRequest => Pending,
        A::Running | A::RunningDegraded | A::Resuming => Running,
        A::Paused => return None,
        A::WaitingForDeploy => WaitingForDeploy,
        A::WaitingForCutover => WaitingForCutover,
        A::Recovering => Recovering,
        A::CuttingOver => CuttingOver,
        // `skipping_revert` is a display override of the revert window.
        A::RevertWindow | A::SkippingRevert => RevertWindow,
        A::Reverting => Reverting,
        A::Completed => Completed,
        A::Failed => Failed,
        A::FailedRetryable => FailedRetryable,
        A::Stopped => Stopped,
        A::Cancelled => Cancelled,
        A::Reverted => Reverted,
    })
}

/// Resting task states a re-dispatch puts back in the queue (upstream's resume: a retry re-queues
/// `failed_retryable` tasks, a start re-queues `stopped` ones). Without this, the rank rule would
/// keep them resting for good, since they block every active state.
pub const TASK_REQUEUED: &[TaskState] = &[Stopped, FailedRetryable];

/// An apply move that re-dispatches its work: out of a resting state into an active one.
pub fn redispatches(from: ApplyState, to: ApplyState) -> bool {
    matches!(from, ApplyState::Stopped | ApplyState::FailedRetryable)
        && to.is_active()
        && to != ApplyState::FailedRetryable
}

/// A task row after its apply moved from `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStep {
    pub state: TaskState,
    /// A `failed_retryable` task went back to the queue: its attempt counts one more.
    pub retried: bool,
}

/// The one rule the stores apply to every task row of an apply whose state changed, in the
/// transaction of that change: re-queue on a re-dispatch, then `sync_task` (no backward progress,
/// terminal tasks never move).
pub fn task_after_move(stored: TaskState, from: ApplyState, to: ApplyState) -> TaskStep {
    let requeued = redispatches(from, to) && TASK_REQUEUED.contains(&stored);
    let base = if requeued { Pending } else { stored };
    let state = match task_state_of(to) {
        Some(reported) => sync_task(base, reported),
        None => base,
    };
    TaskStep {
        state,
        retried: requeued && stored == FailedRetryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_task_state() -> impl Strategy<Value = TaskState> {
        proptest::sample::select(TaskState::ALL.to_vec())
    }

    #[test]
    fn upstream_examples() {
        assert_eq!(sync_task(Running, Pending), Running);
        assert_eq!(sync_task(Running, WaitingForDeploy), WaitingForDeploy);
        assert_eq!(sync_task(Recovering, Running), Recovering);
        assert_eq!(sync_task(Recovering, WaitingForCutover), WaitingForCutover);
        assert_eq!(sync_task(Stopped, Running), Stopped);
        assert_eq!(sync_task(FailedRetryable, CuttingOver), FailedRetryable);
        assert_eq!(sync_task(Completed, Failed), Completed);
        assert_eq!(sync_task(CuttingOver, Completed), Completed);
    }

    #[test]
    fn tasks_follow_their_apply() {
        use ApplyState as A;
        let step = |s, from, to| task_after_move(s, from, to);
        assert_eq!(step(Pending, A::Pending, A::Running).state, Running);
        assert_eq!(
            step(Running, A::Running, A::WaitingForCutover).state,
            WaitingForCutover
        );
        assert_eq!(
            step(WaitingForCutover, A::WaitingForCutover, A::Running).state,
            WaitingForCutover,
            "no backward progress"
        );
        assert_eq!(step(Running, A::Running, A::Stopped).state, Stopped);
        assert_eq!(step(Stopped, A::Stopped, A::Resuming).state, Running);
        assert_eq!(
            step(FailedRetryable, A::FailedRetryable, A::Running),
            TaskStep {
                state: Running,
                retried: true
            }
        );
        assert_eq!(
            step(Completed, A::FailedRetryable, A::Running).state,
            Completed
        );
        assert_eq!(step(Running, A::Running, A::Paused).state, Running);
        assert_eq!(
            step(FailedRetryable, A::FailedRetryable, A::Stopped).state,
            Stopped
        );
        assert_eq!(step(Stopped, A::Stopped, A::Cancelled).state, Cancelled);
    }

    fn any_apply_state() -> impl Strategy<Value = ApplyState> {
        proptest::sample::select(ApplyState::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn terminal_tasks_never_move(stored in any_task_state(), from in any_apply_state(), to in any_apply_state()) {
            let step = task_after_move(stored, from, to);
            if stored.is_terminal() {
                prop_assert_eq!(step.state, stored);
                prop_assert!(!step.retried);
            }
            if !redispatches(from, to) {
                prop_assert_eq!(step.state, task_state_of(to).map_or(stored, |r| sync_task(stored, r)));
            }
        }

        #[test]
        fn never_backward_and_terminal_absorbs(stored in any_task_state(), reported in any_task_state()) {
            let next = sync_task(stored, reported);
            prop_assert!(next == stored || next == reported);
            if stored.is_terminal() { prop_assert_eq!(next, stored); }
            if let (Some(a), Some(b)) = (rank(stored), rank(next)) {
                prop_assert!(b >= a || TASK_EXTRA_STEPS.contains(&(stored, next)));
            }
        }
    }
}
