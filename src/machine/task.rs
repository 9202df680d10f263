//! The task no-backward-progress rule (reference §2.2) as data: a rank order plus the few
//! explicit steps outside it. `sync_task` is the one function that reads them.

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

    proptest! {
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
