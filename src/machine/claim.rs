//! Claim classes and claim arms: which rows a free driver may take, and why.
//!
//! Every apply state belongs to exactly one [`ClaimClass`], defined once in [`CLASS_OF`]. The
//! SQL `IN (...)` lists, the memory store, the model and the simulator all read the classes from
//! here. The claim arms are pure predicates over a row snapshot whose ages were computed by the
//! database clock (or the virtual clock); nothing here reads a clock. The moves a claim makes
//! are in `moves`. The tests (`claim_tests.rs`) probe every arm, and that `never_claimed` states
//! match none whatever the lease and requests.

use super::moves::ExpiryReason;
use super::rules::{Mutant, Rules};
use super::states::ApplyState::{self, *};

/// How the claim path treats an apply state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimClass {
    /// Finished for good: `completed`, `failed`, `cancelled`, `reverted`.
    Terminal,
    /// Waiting to be dispatched: `pending` (claimable once its child rows exist).
    PendingQueue,
    /// In flight: claimable by anyone once the owner's heartbeat is stale.
    StaleReclaimable,
    /// `failed_retryable`: claimable within the retry budget and freshness window.
    RetryPath,
    /// `stopped`: terminal at apply level, but resumable by a `start` request.
    StartHeld,
    /// `paused`: waits for a human `release`, `stop` or `cancel`.
    HumanHeld,
    /// Matches no arm at all. No shipped state is here; only a historical-bug switch puts a
    /// state here (the bug of #302 and #770).
    Unclaimable,
}

impl ClaimClass {
    pub const ALL: &'static [ClaimClass] = &[
        ClaimClass::Terminal,
        ClaimClass::PendingQueue,
        ClaimClass::StaleReclaimable,
        ClaimClass::RetryPath,
        ClaimClass::StartHeld,
        ClaimClass::HumanHeld,
        ClaimClass::Unclaimable,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ClaimClass::Terminal => "terminal",
            ClaimClass::PendingQueue => "pending queue",
            ClaimClass::StaleReclaimable => "stale-reclaimable",
            ClaimClass::RetryPath => "retry path",
            ClaimClass::StartHeld => "start-held",
            ClaimClass::HumanHeld => "human-held",
            ClaimClass::Unclaimable => "unclaimable",
        }
    }
}

/// The PlanetScale setup phase, in order.
pub const SETUP_PHASE: &[ApplyState] = &[
    PreparingBranch,
    ApplyingBranchChanges,
    ValidatingBranch,
    CreatingDeployRequest,
    ValidatingDeployRequest,
];

/// The PlanetScale revert phase.
pub const REVERT_PHASE: &[ApplyState] = &[RevertWindow, Reverting, SkippingRevert];

/// The one place that assigns every apply state its claim class.
pub const CLASS_OF: &[(ApplyState, ClaimClass)] = &[
    (Pending, ClaimClass::PendingQueue),
    (Running, ClaimClass::StaleReclaimable),
    (RunningDegraded, ClaimClass::StaleReclaimable),
    (Paused, ClaimClass::HumanHeld),
    (Resuming, ClaimClass::StaleReclaimable),
    (WaitingForDeploy, ClaimClass::StaleReclaimable),
    (WaitingForCutover, ClaimClass::StaleReclaimable),
    (Recovering, ClaimClass::StaleReclaimable),
    (CuttingOver, ClaimClass::StaleReclaimable),
    (RevertWindow, ClaimClass::StaleReclaimable),
    (SkippingRevert, ClaimClass::StaleReclaimable),
    (Reverting, ClaimClass::StaleReclaimable),
    (Completed, ClaimClass::Terminal),
    (Failed, ClaimClass::Terminal),
    (FailedRetryable, ClaimClass::RetryPath),
    (Stopped, ClaimClass::StartHeld),
    (Cancelled, ClaimClass::Terminal),
    (Reverted, ClaimClass::Terminal),
    (PreparingBranch, ClaimClass::StaleReclaimable),
    (ApplyingBranchChanges, ClaimClass::StaleReclaimable),
    (ValidatingBranch, ClaimClass::StaleReclaimable),
    (CreatingDeployRequest, ClaimClass::StaleReclaimable),
    (ValidatingDeployRequest, ClaimClass::StaleReclaimable),
];

const fn class_table() -> [ClaimClass; ApplyState::ALL.len()] {
    let mut out = [ClaimClass::Unclaimable; ApplyState::ALL.len()];
    let mut i = 0;
    while i < CLASS_OF.len() {
        out[CLASS_OF[i].0.index()] = CLASS_OF[i].1;
        i += 1;
    }
    out
}

const CLASS_BY_INDEX: [ClaimClass; ApplyState::ALL.len()] = class_table();

/// The class of a state under the shipped rules.
pub const fn shipped_class(state: ApplyState) -> ClaimClass {
    CLASS_BY_INDEX[state.index()]
}

impl Rules {
    /// The class of a state under these rules (a historical-bug switch may move a state out).
    pub fn class_of(&self, state: ApplyState) -> ClaimClass {
        if self.has(Mutant::SetupPhaseUnclaimable) && SETUP_PHASE.contains(&state) {
            return ClaimClass::Unclaimable;
        }
        if self.has(Mutant::RevertPhaseUnclaimable) && REVERT_PHASE.contains(&state) {
            return ClaimClass::Unclaimable;
        }
        shipped_class(state)
    }

    /// The states of one class, in declaration order (for SQL `IN (...)` lists).
    pub fn states_in(&self, class: ClaimClass) -> Vec<ApplyState> {
        ApplyState::ALL
            .iter()
            .copied()
            .filter(|s| self.class_of(*s) == class)
            .collect()
    }
}

impl ApplyState {
    /// Terminal for the one-active-apply rule: `stopped` counts as terminal (it holds no target).
    pub const fn is_terminal(self) -> bool {
        matches!(
            shipped_class(self),
            ClaimClass::Terminal | ClaimClass::StartHeld
        )
    }

    /// Holds its target: at most one active apply per target.
    pub const fn is_active(self) -> bool {
        !self.is_terminal()
    }
}

/// The claim arms. A1–A6 are upstream's apply-level arms; A7 (cancel of a stopped apply) and
/// A8 (stop or cancel of a paused apply) close the two holes upstream later found; A9 takes a
/// parked wait back the moment a request arrives (its wake time is A2's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimArm {
    /// `pending` with its child rows.
    A1Pending,
    /// In-flight state whose owner's heartbeat is stale (or who released the lease).
    A2Stale,
    /// `failed_retryable` within budget and freshness.
    A3Retry,
    /// `pending` with a pending start.
    A4PendingStart,
    /// `stopped` with a pending start.
    A5StoppedStart,
    /// `waiting_for_deploy` with a start newer than the current lease (lease hand-off).
    A6DeferredDeployStart,
    /// `stopped` with a pending cancel.
    A7StoppedCancel,
    /// `paused` with a pending stop or cancel.
    A8PausedControl,
    /// A parked wait (released by its owner until its wake time) with a pending request.
    A9ParkedRequest,
}

impl ClaimArm {
    pub const ALL: &'static [ClaimArm] = &[
        ClaimArm::A1Pending,
        ClaimArm::A2Stale,
        ClaimArm::A3Retry,
        ClaimArm::A4PendingStart,
        ClaimArm::A5StoppedStart,
        ClaimArm::A6DeferredDeployStart,
        ClaimArm::A7StoppedCancel,
        ClaimArm::A8PausedControl,
        ClaimArm::A9ParkedRequest,
    ];

    pub const fn code(self) -> &'static str {
        match self {
            ClaimArm::A1Pending => "A1",
            ClaimArm::A2Stale => "A2",
            ClaimArm::A3Retry => "A3",
            ClaimArm::A4PendingStart => "A4",
            ClaimArm::A5StoppedStart => "A5",
            ClaimArm::A6DeferredDeployStart => "A6",
            ClaimArm::A7StoppedCancel => "A7",
            ClaimArm::A8PausedControl => "A8",
            ClaimArm::A9ParkedRequest => "A9",
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            ClaimArm::A1Pending => "pending with child rows",
            ClaimArm::A2Stale => "stale-reclaimable state, heartbeat stale or lease released",
            ClaimArm::A3Retry => "failed_retryable, attempt < budget, updated within freshness",
            ClaimArm::A4PendingStart => "pending with a pending start",
            ClaimArm::A5StoppedStart => "stopped with a pending start (target re-checked)",
            ClaimArm::A6DeferredDeployStart => {
                "waiting_for_deploy with a start newer than the lease, or stale"
            }
            ClaimArm::A7StoppedCancel => "stopped with a pending cancel",
            ClaimArm::A8PausedControl => "paused with a pending stop or cancel",
            ClaimArm::A9ParkedRequest => {
                "parked wait with a request it acts on now, before its wake time"
            }
        }
    }
}

/// What the claim arms see of a pending start request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PendingControls {
    pub start: bool,
    /// The start request was (re)issued after the current lease was acquired.
    pub start_newer_than_lease: bool,
    pub stop: bool,
    pub cancel: bool,
    pub cutover: bool,
    pub revert: bool,
    pub skip_revert: bool,
}

impl PendingControls {
    pub fn has(&self, op: super::states::ControlOp) -> bool {
        use super::states::ControlOp as C;
        match op {
            C::Start => self.start,
            C::Stop => self.stop,
            C::Cancel => self.cancel,
            C::Cutover => self.cutover,
            C::Revert => self.revert,
            C::SkipRevert => self.skip_revert,
            C::Release | C::Volume => false,
        }
    }

    pub fn set(&mut self, op: super::states::ControlOp, pending: bool) {
        use super::states::ControlOp as C;
        match op {
            C::Start => self.start = pending,
            C::Stop => self.stop = pending,
            C::Cancel => self.cancel = pending,
            C::Cutover => self.cutover = pending,
            C::Revert => self.revert = pending,
            C::SkipRevert => self.skip_revert = pending,
            C::Release | C::Volume => {}
        }
    }

    pub fn any(&self) -> bool {
        self.start || self.stop || self.cancel || self.cutover || self.revert || self.skip_revert
    }
}

/// An apply row as the claim path sees it. Ages come from the database clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimView {
    pub state: ApplyState,
    /// Someone holds the lease (a graceful release clears it).
    pub leased: bool,
    /// Age of the last heartbeat; `None` when the row was never heartbeated.
    pub heartbeat_age_ms: Option<u64>,
    pub attempt: u32,
    /// Age since the row was last updated (retry freshness).
    pub updated_age_ms: u64,
    /// The apply's task and operation rows exist (creation finished).
    pub has_children: bool,
    pub controls: PendingControls,
    /// Released into a parked wait whose wake time has not come (by the database clock).
    /// Only a free lease rests: a held lease is judged by its heartbeat alone.
    pub resting: bool,
    /// A pending request the apply acts on in its state (`Rules::acts_now`): what wakes a
    /// parked wait. A request that must wait for a later state leaves it parked.
    pub asks_now: bool,
}

impl ClaimView {
    /// The current lease is free to take: held with a stale (or no) heartbeat; or not held —
    /// never taken, released, or parked with its wake time come.
    pub fn lease_is_free(&self, rules: &Rules) -> bool {
        if self.leased {
            self.heartbeat_age_ms
                .is_none_or(|age| age >= rules.params.stale_after_ms)
        } else {
            !self.resting
        }
    }

    /// Parked by its owner, before its wake time.
    pub fn is_parked(&self) -> bool {
        !self.leased && self.resting
    }
}

impl Rules {
    /// Whether one arm matches the row.
    pub fn arm_matches(&self, arm: ClaimArm, row: &ClaimView) -> bool {
        let class = self.class_of(row.state);
        let c = &row.controls;
        match arm {
            ClaimArm::A1Pending => row.state == Pending && row.has_children,
            ClaimArm::A2Stale => class == ClaimClass::StaleReclaimable && self.lease_free(row),
            ClaimArm::A3Retry => {
                class == ClaimClass::RetryPath
                    && row.attempt < self.params.retry_budget
                    && row.updated_age_ms < self.params.retry_freshness_ms
            }
            ClaimArm::A4PendingStart => row.state == Pending && row.has_children && c.start,
            ClaimArm::A5StoppedStart => class == ClaimClass::StartHeld && c.start && !c.cancel,
            ClaimArm::A6DeferredDeployStart => {
                row.state == WaitingForDeploy
                    && class == ClaimClass::StaleReclaimable
                    && c.start
                    && (c.start_newer_than_lease || self.lease_free(row))
            }
            ClaimArm::A7StoppedCancel => class == ClaimClass::StartHeld && c.cancel,
            ClaimArm::A8PausedControl => class == ClaimClass::HumanHeld && (c.stop || c.cancel),
            ClaimArm::A9ParkedRequest => {
                class == ClaimClass::StaleReclaimable && row.is_parked() && row.asks_now
            }
        }
    }

    fn lease_free(&self, row: &ClaimView) -> bool {
        row.lease_is_free(self)
    }

    /// A row (or operation) in `state` matches no claim arm on either level, whatever its
    /// lease, requests and parent: every arm names the classes it takes, and none takes these.
    /// Claim loops skip such rows before building their views.
    pub fn never_claimed(&self, state: ApplyState) -> bool {
        matches!(
            self.class_of(state),
            ClaimClass::Terminal | ClaimClass::Unclaimable
        )
    }

    /// The first arm (in `ClaimArm::ALL` order) that matches the row, if any.
    pub fn matching_arm(&self, row: &ClaimView) -> Option<ClaimArm> {
        ClaimArm::ALL
            .iter()
            .copied()
            .find(|arm| self.arm_matches(*arm, row))
    }

    /// Retry expiry: a `failed_retryable` apply past its budget or freshness becomes `failed`.
    pub fn retry_expiry(&self, row: &ClaimView) -> Option<ExpiryReason> {
        // Expiry is an unfenced write: a live owner (processing a stop or cancel on the
        // `failed_retryable` row) would land its next fenced write on the expired, terminal row.
        if self.class_of(row.state) != ClaimClass::RetryPath || !row.lease_is_free(self) {
            return None;
        }
        if row.attempt >= self.params.retry_budget {
            Some(ExpiryReason::RetryBudgetExhausted)
        } else if row.updated_age_ms >= self.params.retry_freshness_ms {
            Some(ExpiryReason::RecoveryWindowExpired)
        } else {
            None
        }
    }
}

/// Which claims a driver makes: the operation-level arms (upstream's default), or the apply-level
/// arms only.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ClaimPath {
    /// Operation rows first; then the apply arms for what only the apply level claims (a
    /// pending apply with a pending stop, `stopped` + cancel, `paused` + stop/cancel).
    #[default]
    Operation,
    /// The apply arms only.
    Apply,
}

/// One claim a driver makes: over operation rows (O1–O7, with the parent moved by its apply
/// arm) or over apply rows (A1–A9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimLevel {
    Operation,
    Apply,
}

impl ClaimPath {
    pub const ALL: [ClaimPath; 2] = [ClaimPath::Operation, ClaimPath::Apply];

    /// The claims a driver on this path makes, in order, until one takes a row.
    pub const fn levels(self) -> &'static [ClaimLevel] {
        match self {
            ClaimPath::Operation => &[ClaimLevel::Operation, ClaimLevel::Apply],
            ClaimPath::Apply => &[ClaimLevel::Apply],
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ClaimPath::Operation => "operation",
            ClaimPath::Apply => "apply",
        }
    }
}

impl std::str::FromStr for ClaimPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "operation" => Ok(ClaimPath::Operation),
            "apply" => Ok(ClaimPath::Apply),
            other => Err(format!("{other:?} is not operation or apply")),
        }
    }
}

/// The operation-level arms for a single-operation apply (upstream O1–O5, and O6 for a parked
/// wait with a pending request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperationArm {
    O1Pending,
    O2Stale,
    O3StoppedStart,
    O4DeferredDeployStart,
    O5Retry,
    O6ParkedRequest,
    /// A stopped operation whose apply has a pending cancel (A7's twin: a rollout's operations
    /// are only ever claimed by operation arms).
    O7StoppedCancel,
}

impl OperationArm {
    pub const ALL: &'static [OperationArm] = &[
        OperationArm::O1Pending,
        OperationArm::O2Stale,
        OperationArm::O3StoppedStart,
        OperationArm::O4DeferredDeployStart,
        OperationArm::O5Retry,
        OperationArm::O6ParkedRequest,
        OperationArm::O7StoppedCancel,
    ];

    pub const fn code(self) -> &'static str {
        match self {
            OperationArm::O1Pending => "O1",
            OperationArm::O2Stale => "O2",
            OperationArm::O3StoppedStart => "O3",
            OperationArm::O4DeferredDeployStart => "O4",
            OperationArm::O5Retry => "O5",
            OperationArm::O6ParkedRequest => "O6",
            OperationArm::O7StoppedCancel => "O7",
        }
    }
}

impl OperationArm {
    pub const fn describe(self) -> &'static str {
        match self {
            OperationArm::O1Pending => "pending operation, no pending stop on its apply",
            OperationArm::O2Stale => {
                "stale-reclaimable operation, heartbeat stale or lease released"
            }
            OperationArm::O3StoppedStart => "stopped operation whose apply has a pending start",
            OperationArm::O4DeferredDeployStart => {
                "operation of a waiting_for_deploy apply with a start newer than its lease"
            }
            OperationArm::O5Retry => {
                "failed_retryable operation: apply retryable within budget, or apply stale"
            }
            OperationArm::O6ParkedRequest => {
                "parked operation whose apply has a request it acts on now, before its wake time"
            }
            OperationArm::O7StoppedCancel => "stopped operation whose apply has a pending cancel",
        }
    }
}

/// How a claim was made. An operation claim also claims the parent apply in the same
/// transaction (one lease, one epoch for both rows), through the apply arm that matches the
/// parent: that arm decides the parent's transition, exactly as on the apply path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimedVia {
    Apply(ClaimArm),
    Operation { op: OperationArm, parent: ClaimArm },
}

impl ClaimedVia {
    /// The arm that selected the row (`A1`…`A8`, `O1`…`O5`).
    pub const fn code(self) -> &'static str {
        match self {
            ClaimedVia::Apply(arm) => arm.code(),
            ClaimedVia::Operation { op, .. } => op.code(),
        }
    }

    /// The apply arm that moved the apply row.
    pub const fn apply_arm(self) -> ClaimArm {
        match self {
            ClaimedVia::Apply(arm) | ClaimedVia::Operation { parent: arm, .. } => arm,
        }
    }

    pub const fn operation_arm(self) -> Option<OperationArm> {
        match self {
            ClaimedVia::Apply(_) => None,
            ClaimedVia::Operation { op, .. } => Some(op),
        }
    }
}

impl From<ClaimArm> for ClaimedVia {
    fn from(arm: ClaimArm) -> Self {
        ClaimedVia::Apply(arm)
    }
}

impl std::fmt::Display for ClaimedVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimedVia::Apply(arm) => f.write_str(arm.code()),
            ClaimedVia::Operation { op, parent } => write!(f, "{}+{}", op.code(), parent.code()),
        }
    }
}

/// An operation row and its parent apply as the operation claim path sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OperationClaimView {
    /// The operation's own lease and state.
    pub op: ClaimView,
    pub parent: ClaimView,
    /// The rollout's start gate is open for it (`machine::rollout::start_gate`); always for
    /// the one operation of an apply without deployments.
    pub start_open: bool,
}

impl OperationClaimView {
    /// The one operation of an apply without deployments: no sibling gates its start.
    pub const fn single(op: ClaimView, parent: ClaimView) -> OperationClaimView {
        OperationClaimView {
            op,
            parent,
            start_open: true,
        }
    }
}

impl Rules {
    pub fn operation_arm_matches(&self, arm: OperationArm, v: &OperationClaimView) -> bool {
        let op_class = self.class_of(v.op.state);
        let parent_class = self.class_of(v.parent.state);
        let pc = &v.parent.controls;
        match arm {
            OperationArm::O1Pending => v.op.state == Pending && !pc.stop && v.start_open,
            OperationArm::O2Stale => {
                op_class == ClaimClass::StaleReclaimable
                    && self.lease_free(&v.op)
                    && (v.start_open || !self.has(Mutant::CapBlocksRecovery))
            }
            OperationArm::O3StoppedStart => op_class == ClaimClass::StartHeld && pc.start,
            OperationArm::O4DeferredDeployStart => {
                op_class == ClaimClass::StaleReclaimable
                    && v.parent.state == WaitingForDeploy
                    && pc.start
                    && (pc.start_newer_than_lease || self.lease_free(&v.op))
            }
            OperationArm::O5Retry => {
                v.op.state == FailedRetryable
                    && ((parent_class == ClaimClass::RetryPath
                        && v.parent.attempt < self.params.retry_budget
                        && v.parent.updated_age_ms < self.params.retry_freshness_ms)
                        || (parent_class == ClaimClass::StaleReclaimable
                            && self.lease_free(&v.parent)))
            }
            OperationArm::O6ParkedRequest => {
                op_class == ClaimClass::StaleReclaimable && v.op.is_parked() && v.parent.asks_now
            }
            OperationArm::O7StoppedCancel => op_class == ClaimClass::StartHeld && pc.cancel,
        }
    }

    pub fn matching_operation_arm(&self, v: &OperationClaimView) -> Option<OperationArm> {
        OperationArm::ALL
            .iter()
            .copied()
            .find(|arm| self.operation_arm_matches(*arm, v))
    }
}

impl Rules {
    /// A guarded write lands only with the row's current epoch.
    pub fn write_allowed(&self, row_epoch: u64, writer_epoch: u64) -> bool {
        self.has(Mutant::UnfencedWrite) || row_epoch == writer_epoch
    }

    /// A write or claim that makes an inactive apply active must re-check its target.
    pub fn checks_target_on_reactivation(&self) -> bool {
        !self.has(Mutant::StartSkipsTargetCheck)
    }
}

#[cfg(test)]
#[path = "claim_tests.rs"]
mod tests;
