//! The moves the claim path and the store make on their own, decided here so no store restates
//! them: a claim through an arm (its table row, landing state, attempt accounting and target
//! re-check), retry expiry, failing closed, and the revert-window deadline.

use super::claim::{
    ClaimArm, ClaimLevel, ClaimPath, ClaimView, ClaimedVia, OperationArm, OperationClaimView,
};
use super::rules::Rules;
use super::states::ApplyState::{self, *};
use super::states::EngineKind;
use super::table::{Event, RowId, TABLE};

/// What a claim through one arm does to an apply row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimMove {
    pub arm: ClaimArm,
    /// The transition-table row the claim takes.
    pub row: RowId,
    pub to: ApplyState,
    /// A claim through the retry arm counts an attempt (on the apply and its operation).
    pub counts_attempt: bool,
    /// The claim takes the apply up again after a failure or a hold — a retry, or a person's
    /// start of a stopped apply — so the apply's reason is history (the audit log keeps it).
    pub clears_reason: bool,
    /// The claim makes an inactive apply active: its target must be re-checked first.
    pub reactivates: bool,
}

impl Rules {
    /// The move a claim through `arm` makes from `from`, if the table has one.
    pub fn claim_move(
        &self,
        engine: EngineKind,
        from: ApplyState,
        arm: ClaimArm,
    ) -> Option<ClaimMove> {
        let row = TABLE.lookup(self, engine, from, Event::Claim(arm))?;
        let to = TABLE.row(row).to;
        Some(ClaimMove {
            arm,
            row,
            to,
            counts_attempt: arm == ClaimArm::A3Retry,
            clears_reason: matches!(arm, ClaimArm::A3Retry | ClaimArm::A5StoppedStart),
            reactivates: self.reactivates(from, to),
        })
    }

    /// The whole apply-path claim decision for one row: the first matching arm and its move.
    /// A row whose arm has no transition for its engine is not claimed.
    pub fn apply_claim(&self, engine: EngineKind, row: &ClaimView) -> Option<ClaimMove> {
        self.claim_move(engine, row.state, self.matching_arm(row)?)
    }

    /// The whole operation-path claim decision: the operation arm, and the move of the parent
    /// by the apply arm that matches it (upstream's `ClaimApplyByID`).
    pub fn operation_claim(
        &self,
        engine: EngineKind,
        v: &OperationClaimView,
    ) -> Option<(OperationArm, ClaimMove)> {
        let op = self.matching_operation_arm(v)?;
        Some((op, self.apply_claim(engine, &v.parent)?))
    }

    /// How a rollout's operation is claimed on either path: by the operation arms (its start
    /// gate among them) at both levels, since its apply row holds no lease of its own; the
    /// apply arm that matches the operation moves it.
    pub fn member_claim(
        &self,
        engine: EngineKind,
        v: &OperationClaimView,
    ) -> Option<(ClaimedVia, ClaimMove)> {
        self.operation_claim(engine, v)
            .map(|(op, mv)| (ClaimedVia::Operation { op, parent: mv.arm }, mv))
    }

    /// How a driver on `path` claims this row, if it does: through the first level of the path
    /// that takes it. Levels are separate claims in the stores (another driver may move the row
    /// between them); for one row on its own, this is the arm and the move it gets.
    pub fn path_claim(
        &self,
        path: ClaimPath,
        engine: EngineKind,
        v: &OperationClaimView,
    ) -> Option<(ClaimedVia, ClaimMove)> {
        path.levels().iter().find_map(|level| match level {
            ClaimLevel::Operation => self
                .operation_claim(engine, v)
                .map(|(op, mv)| (ClaimedVia::Operation { op, parent: mv.arm }, mv)),
            ClaimLevel::Apply => self
                .apply_claim(engine, &v.parent)
                .map(|mv| (ClaimedVia::Apply(mv.arm), mv)),
        })
    }

    /// A move from `from` to `to` that makes an inactive apply active must re-check its target
    /// (at most one active apply per target).
    pub fn reactivates(&self, from: ApplyState, to: ApplyState) -> bool {
        to.is_active() && !from.is_active() && self.checks_target_on_reactivation()
    }

    /// Retry expiry with its landing state, read from the table's `RetryExpired` row.
    pub fn expiry_move(
        &self,
        engine: EngineKind,
        row: &ClaimView,
    ) -> Option<(ExpiryReason, ApplyState)> {
        let reason = self.retry_expiry(row)?;
        let id = TABLE.lookup(self, engine, row.state, Event::RetryExpired)?;
        Some((reason, TABLE.row(id).to))
    }

    /// Where failing an apply closed (a drive that panicked, a change that drifted from its
    /// review) moves it, if it may: every non-terminal state has a table row; a terminal one is
    /// never rewritten.
    /// Where a withdrawn operation lands (`Event::Withdraw`); `None` once it has started.
    pub fn withdraw_move(&self, engine: EngineKind, from: ApplyState) -> Option<ApplyState> {
        let id = TABLE.lookup(self, engine, from, Event::Withdraw)?;
        Some(TABLE.row(id).to)
    }

    pub fn fail_closed_move(&self, engine: EngineKind, from: ApplyState) -> Option<ApplyState> {
        let id = TABLE.lookup(self, engine, from, Event::FailClosed)?;
        Some(TABLE.row(id).to)
    }

    /// The revert-window deadline: a deployed change whose revert window has lasted
    /// `revert_window_ms` (counted from entering the state) is no longer revertible; its owner
    /// skips the revert on its own.
    pub fn revert_window_expired(&self, state: ApplyState, state_age_ms: u64) -> bool {
        state == RevertWindow && state_age_ms >= self.params.revert_window_ms
    }

    /// How long a wait parked now, `state_age_ms` into `state`, rests before a driver looks at
    /// it again: the park poll, cut short by the revert deadline so the owner's own skip is
    /// never late.
    pub fn park_wake_ms(&self, state: ApplyState, state_age_ms: u64) -> u64 {
        let poll = self.params.park_poll_ms;
        if state == RevertWindow {
            poll.min(self.params.revert_window_ms.saturating_sub(state_age_ms))
        } else {
            poll
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpiryReason {
    RetryBudgetExhausted,
    RecoveryWindowExpired,
}

impl ExpiryReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            ExpiryReason::RetryBudgetExhausted => "retry_budget_exhausted",
            ExpiryReason::RecoveryWindowExpired => "recovery_window_expired",
        }
    }

    /// What an expired apply says: why it expired, then the reason of the failure it was
    /// retrying, when there was one.
    pub fn account(self, last: Option<&str>) -> String {
        match last {
            Some(last) if !last.is_empty() => format!("{}: {last}", self.as_str()),
            _ => self.as_str().to_string(),
        }
    }
}
