//! The rollout rules as the stores reach them: through `Rules`, where the model and the
//! simulator can switch a historical bug back on. The free functions of this module's parent
//! are the shipped statement; the invariants check the stores against those, so a bug switched
//! on here is a store that drifted from them.

use super::requests::{self, Accepted};
use super::{
    cutover_gate, derive_parent, start_gate, CutoverGate, CutoverPolicy, FailureMode, Member,
    OnFailure, RolloutPolicy, StartGate,
};
use crate::machine::rules::{Mutant, Rules};
use crate::machine::states::ApplyState;
use crate::machine::ControlOp;

impl Rules {
    /// Whether operation `i` may start (`rollout::start_gate`). A claim reads it as the
    /// operation view's `start_open`.
    pub fn rollout_start_gate(
        &self,
        policy: &RolloutPolicy,
        members: &[Member],
        i: usize,
    ) -> StartGate {
        if self.has(Mutant::CapBlocksRecovery) && !members[i].terminal() {
            let in_flight = members.iter().filter(|o| o.in_flight()).count() as u32;
            let max = policy.max_drivers.max(1);
            if members[i].state != ApplyState::Pending && in_flight >= max {
                return StartGate::Capped { in_flight, max };
            }
        }
        if self.has(Mutant::HaltDoesNotBlockStarts) && policy.on_failure == OnFailure::Halt {
            let lenient = RolloutPolicy {
                on_failure: OnFailure::Continue,
                ..*policy
            };
            let unclosed: Vec<Member> = members
                .iter()
                .map(|m| Member {
                    failed_closed: false,
                    ..*m
                })
                .collect();
            return start_gate(&lenient, &unclosed, i);
        }
        start_gate(policy, members, i)
    }

    /// Whether operation `i` may cut over (`rollout::cutover_gate`).
    pub fn rollout_cutover_gate(
        &self,
        policy: &RolloutPolicy,
        members: &[Member],
        i: usize,
    ) -> CutoverGate {
        let gate = cutover_gate(policy, members, i);
        match gate {
            CutoverGate::InOrder { .. }
                if self.has(Mutant::BarrierCutoverOutOfOrder)
                    && policy.cutover == CutoverPolicy::Barrier =>
            {
                CutoverGate::Open
            }
            gate => gate,
        }
    }

    /// The rollout's state (`rollout::derive_parent`), the only value a store writes to a
    /// rollout's apply row.
    pub fn derive_rollout(&self, policy: &RolloutPolicy, members: &[Member]) -> ApplyState {
        let failed = members.iter().any(|m| m.state == ApplyState::Failed);
        if self.has(Mutant::ContinueTerminalizesEarly)
            && super::gates::failure_mode(policy, members) == Some(FailureMode::Continue)
        {
            return ApplyState::Failed;
        }
        if self.has(Mutant::SettledCountedAsTerminal) && failed {
            let settled: Vec<Member> = members
                .iter()
                .map(|m| match m.state {
                    ApplyState::Stopped => Member {
                        state: ApplyState::Completed,
                        ..*m
                    },
                    _ => *m,
                })
                .collect();
            return derive_parent(policy, &settled);
        }
        let derived = derive_parent(policy, members);
        if self.has(Mutant::OrphanedStepHoldsRollout)
            && failed
            && derived.is_terminal()
            && derived != ApplyState::Stopped
            && members.iter().any(|m| m.state == ApplyState::Pending)
        {
            return ApplyState::RunningDegraded;
        }
        derived
    }

    /// What accepting `op` does to a rollout at once (`rollout::requests::accept`).
    pub fn accept_rollout_request(&self, policy: RolloutPolicy, op: ControlOp) -> Accepted {
        let mut accepted = requests::accept(policy, op);
        if self.has(Mutant::ReleaseLatchNotOneWay) && op != ControlOp::Release {
            accepted.policy.released = false;
        }
        accepted
    }
}
