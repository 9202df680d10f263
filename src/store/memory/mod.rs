//! The in-memory store: the reference semantics of claims, fencing and control requests. The
//! simulator drives it synchronously with a virtual clock; the demo and tests use it through
//! the async `Store` trait.
//!
//! Over 700 lines: every store operation's reference semantics sits in one place, next to the
//! row types it mutates, so that each can be read against its MySQL twin under `mysql/`; the
//! clocks (`clock`), the async delegation (`delegate`) and the operations of rollouts, whose
//! leases are their own (`rollout`), live beside it. The claim loops (`claim_order`,
//! `claim_locked`, `claimable`) stay here with the views they build: the simulator calls them
//! after every event, and they share the per-apply memo of those views.

mod clock;
mod delegate;
mod outbox;
mod rollout;

use super::LeaseChange;
use rollout::{member_record, RowInputs};

pub use clock::{Clock, ManualClock, MonotonicClock};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    adopts, validate_new_apply, ApplyRecord, ApplySpec, Claimed, DriveInputs, Lease, NewApply,
    RequestOutcome, StoreError, Submitted, Target,
};
use crate::machine::apply::{ApplyId, ApplySnapshot, OperationId, ResumeState};
use crate::machine::claim::{ClaimLevel, ClaimPath};
use crate::machine::rollout::RolloutPolicy;
use crate::machine::task::task_after_move;
use crate::machine::{
    ApplyOptions, ApplyState, ClaimView, ClaimedVia, ControlOp, ControlStatus, EngineKind,
    OperationClaimView, PendingControls, Rules, TaskState,
};

/// One apply row, as the memory store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRow {
    pub id: ApplyId,
    pub spec: Arc<ApplySpec>,
    pub engine: EngineKind,
    pub state: ApplyState,
    pub options: ApplyOptions,
    pub resume: ResumeState,
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_epoch: u64,
    pub lease_acquired_at: Option<u64>,
    /// Position of the last claim in the store's sequence of changes (orders a claim against a
    /// request made in the same millisecond, as the database's microsecond clock does).
    pub lease_acquired_seq: u64,
    pub heartbeat_at: Option<u64>,
    /// Set while the row rests in a parked wait: when it wakes (`Store::park`).
    pub parked_until: Option<u64>,
    pub updated_at: u64,
    pub state_entered_at: u64,
    pub created_at: u64,
    pub error_message: Option<String>,
    /// A rollout's policy and release latch; `None` for an apply without deployments.
    pub rollout: Option<RolloutPolicy>,
    /// The operation rows, in rollout order: one for an apply without deployments (its state
    /// mirrors the apply's; its lease is the apply's), one per deployment and table step for a
    /// rollout (each with its own lease; the apply's state is derived from them, and its
    /// `lease_epoch` is the counter their epochs are drawn from).
    pub operations: Vec<MemoryOperation>,
    /// One task per DDL statement of each operation, in order.
    pub tasks: Vec<MemoryTask>,
}

/// An operation row. For an apply without deployments its lease is taken, renewed and released
/// together with the parent's, at the same epoch, and the apply row holds its resume state;
/// a rollout's operations hold their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryOperation {
    pub id: OperationId,
    /// The deployment's name and position in the plan (`""` and 0 without deployments).
    pub deployment: String,
    pub deployment_index: u32,
    /// The table step within the deployment (0 without table steps).
    pub step: u32,
    /// `step-N` for a table step, `""` for a whole deployment (`rollout::operation_key`).
    pub key: String,
    /// What the operation runs: its own identifier, deployment and statements.
    pub spec: Arc<ApplySpec>,
    pub state: ApplyState,
    pub resume: ResumeState,
    pub state_entered_at: u64,
    pub error_message: Option<String>,
    /// Failed closed (an inconsistency, not an engine failure).
    pub failed_closed: bool,
    /// A rollout's requests this operation has done its part of, with the request's issue
    /// sequence: it no longer sees them while others still act on them.
    pub acked: Vec<(ControlOp, u64)>,
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_epoch: u64,
    pub lease_acquired_at: Option<u64>,
    pub lease_acquired_seq: u64,
    pub heartbeat_at: Option<u64>,
    pub parked_until: Option<u64>,
    pub updated_at: u64,
    pub created_at: u64,
}

/// One task row.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryTask {
    /// Index of its operation in `MemoryRow::operations`.
    pub operation: usize,
    pub state: TaskState,
    pub attempt: u32,
    /// The table its statement touches.
    pub table: Option<String>,
    /// Why it failed, when it did.
    pub error_message: Option<String>,
    /// What the engine last said of the work (`Store::record_progress`).
    pub progress: Option<crate::store::progress::TaskProgress>,
}

/// One control request row (unique per apply and operation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRequest {
    pub status: ControlStatus,
    pub updated_at: u64,
    /// Position of the last (re)issue in the store's sequence of changes.
    pub updated_seq: u64,
    pub message: Option<String>,
}

/// One audit entry: every state change with the epoch and owner that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub apply: ApplyId,
    /// The rollout operation that moved; `None` for an apply without deployments, and for a
    /// rollout's derived parent state (cause `derived`).
    pub operation: Option<OperationId>,
    pub from: ApplyState,
    pub to: ApplyState,
    pub epoch: u64,
    pub owner: Option<String>,
    pub at_ms: u64,
    pub cause: String,
    /// Why, for a move into a failed state: the engine's words.
    pub detail: Option<String>,
}

#[derive(Default)]
struct Inner {
    rows: BTreeMap<ApplyId, MemoryRow>,
    requests: BTreeMap<(ApplyId, ControlOp), MemoryRequest>,
    audit: Vec<AuditEntry>,
    /// Accepted control requests, each with the audit log's length when it was accepted (how
    /// the outbox orders it among the moves, see `outbox`).
    requests_log: Vec<outbox::LoggedRequest>,
    next_id: ApplyId,
    next_operation_id: u64,
    /// Sequence of changes: orders events that share a millisecond of the manual clock.
    seq: u64,
    /// Writes that landed with an epoch other than the row's (only possible with unfenced writes).
    stale_writes_landed: u64,
    available: bool,
}

pub struct MemoryStore {
    rules: Rules,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new(rules: Rules, clock: Arc<dyn Clock>) -> MemoryStore {
        MemoryStore {
            rules,
            clock,
            inner: Mutex::new(Inner {
                next_id: 1,
                next_operation_id: 1,
                available: true,
                ..Inner::default()
            }),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.available {
            Ok(inner)
        } else {
            Err(StoreError::Unavailable("memory store switched off".into()))
        }
    }

    /// Simulate an outage: every call fails with `Unavailable` until switched back on.
    pub fn set_available(&self, available: bool) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .available = available;
    }

    pub fn rows(&self) -> Vec<MemoryRow> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rows
            .values()
            .cloned()
            .collect()
    }

    /// `f` of apply `id`'s row, read in place (the simulator's checks after every event read
    /// every row; `row` clones). `f` must not call the store.
    pub fn with_row<R>(&self, id: ApplyId, f: impl FnOnce(&MemoryRow) -> R) -> Option<R> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rows
            .get(&id)
            .map(f)
    }

    pub fn row(&self, id: ApplyId) -> Option<MemoryRow> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rows
            .get(&id)
            .cloned()
    }

    pub fn audit(&self) -> Vec<AuditEntry> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .audit
            .clone()
    }

    pub fn request_status(&self, id: ApplyId, op: ControlOp) -> Option<MemoryRequest> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .get(&(id, op))
            .cloned()
    }

    pub fn stale_writes_landed(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stale_writes_landed
    }

    pub fn pending_controls(&self, id: ApplyId) -> PendingControls {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        pending_of(&inner, id)
    }

    /// Fault injection for tests: set an operation row's state alone, as an operator of another
    /// version might have left it. Returns whether the apply exists.
    pub fn force_operation_state(&self, id: ApplyId, state: ApplyState) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.rows.get_mut(&id) {
            Some(row) => {
                row.operations[0].state = state;
                true
            }
            None => false,
        }
    }

    /// Fault injection for tests: replace an apply's stored DDL and nothing else, as an
    /// out-of-band `UPDATE applies SET ddl = …` would (the reviewed fingerprint stays). Returns
    /// whether the apply exists.
    pub fn alter_stored_ddl(&self, id: ApplyId, ddl: Vec<String>) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.rows.get_mut(&id) {
            Some(row) => {
                let mut spec = (*row.spec).clone();
                spec.ddl = ddl.clone();
                row.spec = Arc::new(spec);
                // A rollout's operations each run their own copy of the change.
                if row.rollout.is_some() {
                    for op in &mut row.operations {
                        let mut spec = (*op.spec).clone();
                        spec.ddl = ddl.clone();
                        op.spec = Arc::new(spec);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// For replays of model counterexamples: a parked apply's wake time comes now (the model
    /// abstracts time between a park and its wake to one step). False when it is not parked.
    /// Bring operation `k` of rollout `id` to its wake time (a schedule's `wake` naming it).
    pub fn wake_parked_operation(&self, id: ApplyId, k: usize) -> bool {
        let now = self.now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner
            .rows
            .get_mut(&id)
            .and_then(|r| r.operations.get_mut(k))
        {
            Some(op) if op.parked_until.is_some_and(|w| w > now) => {
                op.parked_until = Some(now);
                true
            }
            _ => false,
        }
    }

    pub fn wake_parked(&self, id: ApplyId) -> bool {
        let now = self.now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.rows.get_mut(&id) {
            Some(row) => {
                let mut woke = false;
                if row.parked_until.is_some_and(|w| w > now) {
                    row.parked_until = Some(now);
                    woke = true;
                }
                for op in &mut row.operations {
                    if op.parked_until.is_some_and(|w| w > now) {
                        op.parked_until = Some(now);
                        woke = true;
                    }
                }
                woke
            }
            _ => false,
        }
    }

    /// Fault injection for tests: store a row exactly as given (any state, lease and times), as
    /// another process may have left it; ids handed out later stay above it.
    pub fn put_row(&self, row: MemoryRow) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.next_id = inner.next_id.max(row.id + 1);
        for op in &row.operations {
            inner.next_operation_id = inner.next_operation_id.max(op.id + 1);
            inner.seq = inner.seq.max(op.lease_acquired_seq);
        }
        inner.seq = inner.seq.max(row.lease_acquired_seq);
        inner.rows.insert(row.id, row);
    }

    /// Fault injection for tests: store a control request exactly as given.
    pub fn put_request(&self, apply: ApplyId, op: ControlOp, request: MemoryRequest) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.seq = inner.seq.max(request.updated_seq);
        inner.requests.insert((apply, op), request);
    }

    /// The store's clock, for ages shown to people.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn submit(&self, new: NewApply) -> Result<ApplyId, StoreError> {
        Ok(self.submit_or_adopt(new)?.id)
    }

    pub fn submit_or_adopt(&self, new: NewApply) -> Result<Submitted, StoreError> {
        if let Some(plan) = new.rollout.clone() {
            return self.submit_rollout(new, &plan);
        }
        let change = validate_new_apply(&new)?;
        let now = self.now();
        let mut inner = self.lock()?;
        if let Some(existing) = active_on_target(&inner, &new.target, None) {
            let live = inner
                .rows
                .get(&existing)
                .map(|r| (r.engine, r.spec.fingerprint.as_deref()));
            if live.is_some_and(|live| adopts(live, &new, &change)) {
                return Ok(Submitted {
                    id: existing,
                    adopted: true,
                });
            }
            return Err(StoreError::ActiveApplyExists {
                target: new.target.to_string(),
                existing,
            });
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let operation_id = inner.next_operation_id;
        inner.next_operation_id += 1;
        let tasks = change
            .statements
            .iter()
            .map(|statement| MemoryTask {
                operation: 0,
                state: TaskState::Pending,
                attempt: 0,
                table: Some(statement.table.clone()),
                error_message: None,
                progress: None,
            })
            .collect();
        let spec = Arc::new(ApplySpec {
            identifier: format!("apply-{id}"),
            target: new.target,
            deployment: String::new(),
            ddl: new.ddl,
            fingerprint: Some(change.fingerprint),
        });
        inner.rows.insert(
            id,
            MemoryRow {
                id,
                spec: spec.clone(),
                engine: new.engine,
                state: ApplyState::Pending,
                options: new.options,
                resume: ResumeState::default(),
                attempt: 0,
                lease_owner: None,
                lease_epoch: 0,
                lease_acquired_at: None,
                lease_acquired_seq: 0,
                heartbeat_at: None,
                parked_until: None,
                updated_at: now,
                state_entered_at: now,
                created_at: now,
                error_message: None,
                rollout: None,
                operations: vec![MemoryOperation {
                    id: operation_id,
                    deployment: String::new(),
                    deployment_index: 0,
                    step: 0,
                    key: String::new(),
                    spec: spec.clone(),
                    state: ApplyState::Pending,
                    resume: ResumeState::default(),
                    state_entered_at: now,
                    error_message: None,
                    failed_closed: false,
                    acked: Vec::new(),
                    attempt: 0,
                    lease_owner: None,
                    lease_epoch: 0,
                    lease_acquired_at: None,
                    lease_acquired_seq: 0,
                    heartbeat_at: None,
                    parked_until: None,
                    updated_at: now,
                    created_at: now,
                }],
                tasks,
            },
        );
        Ok(Submitted { id, adopted: false })
    }

    fn claim_view(&self, inner: &Inner, row: &MemoryRow, now: u64) -> ClaimView {
        let mut controls = pending_of(inner, row.id);
        if let Some(start) = inner.requests.get(&(row.id, ControlOp::Start)) {
            // Ordered by the sequence of changes, not by the millisecond: a request made after
            // the claim within the same millisecond is still newer (the database's clock has
            // microseconds and real time always moves).
            controls.start_newer_than_lease = controls.start
                && (row.lease_acquired_at.is_none() || start.updated_seq > row.lease_acquired_seq);
        }
        ClaimView {
            state: row.state,
            leased: row.lease_owner.is_some(),
            heartbeat_age_ms: row.heartbeat_at.map(|h| now.saturating_sub(h)),
            attempt: row.attempt,
            updated_age_ms: now.saturating_sub(row.updated_at),
            has_children: true,
            controls,
            resting: row.parked_until.is_some_and(|wake| wake > now),
            asks_now: self
                .rules
                .acts_now(row.engine, row.state, &controls, &row.options),
        }
    }

    /// Operation `i` as the operation arms see it: its own lease, its parent's requests.
    fn operation_view(&self, inner: &Inner, row: &MemoryRow, i: usize, now: u64) -> ClaimView {
        self.operation_view_in(inner, row, i, now, &RowInputs::of(inner, row))
    }

    fn operation_view_in(
        &self,
        inner: &Inner,
        row: &MemoryRow,
        i: usize,
        now: u64,
        inputs: &RowInputs,
    ) -> ClaimView {
        let op = &row.operations[i];
        let mut controls = match row.rollout {
            None => inputs.all,
            Some(_) => rollout::pending_for_in(&self.rules, inner, row, i, inputs),
        };
        if let Some(start) = inner.requests.get(&(row.id, ControlOp::Start)) {
            controls.start_newer_than_lease = controls.start
                && (op.lease_acquired_at.is_none() || start.updated_seq > op.lease_acquired_seq);
        }
        ClaimView {
            state: op.state,
            leased: op.lease_owner.is_some(),
            heartbeat_age_ms: op.heartbeat_at.map(|h| now.saturating_sub(h)),
            attempt: op.attempt,
            updated_age_ms: now.saturating_sub(op.updated_at),
            has_children: true,
            controls,
            resting: op.parked_until.is_some_and(|wake| wake > now),
            asks_now: self
                .rules
                .acts_now(row.engine, op.state, &controls, &row.options),
        }
    }

    pub fn claim(&self, owner: &str) -> Result<Option<Claimed>, StoreError> {
        self.claim_at(ClaimLevel::Apply, owner)
    }

    /// Claim the next unit of work the way `path` says (the synchronous twin of
    /// [`super::claim_next`], for the simulator and tests).
    ///
    /// Both levels are looked at under one lock. A rollout's operations are claimed by the
    /// same arms on either level, so when the operation level took none of them and refused
    /// no take (which may fail a request and change what they match), the apply level passes
    /// them by: they would match nothing again.
    pub fn claim_next(&self, path: ClaimPath, owner: &str) -> Result<Option<Claimed>, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        let mut rollouts_seen = false;
        for level in path.levels() {
            let (claimed, refused) =
                self.claim_locked(&mut inner, *level, owner, now, rollouts_seen);
            if claimed.is_some() {
                return Ok(claimed);
            }
            rollouts_seen = *level == ClaimLevel::Operation && !refused;
        }
        Ok(None)
    }

    pub fn claim_operation(&self, owner: &str) -> Result<Option<Claimed>, StoreError> {
        self.claim_at(ClaimLevel::Operation, owner)
    }

    /// The applies a claim on `path` would take now, read without taking anything: the
    /// simulator's measure of work left waiting while a driver is free.
    pub fn claimable(&self, path: ClaimPath) -> Result<Vec<ApplyId>, StoreError> {
        let now = self.now();
        let inner = self.lock()?;
        let mut out = Vec::new();
        let mut memo = Memo::default();
        for level in path.levels() {
            for (id, i) in self.claim_order(&inner, *level) {
                // A rollout's operations match the same arms on either level: the operation
                // level, when the path has it, already answered for them.
                if out.contains(&id)
                    || (*level == ClaimLevel::Apply
                        && path.levels().contains(&ClaimLevel::Operation)
                        && inner.rows[&id].rollout.is_some())
                {
                    continue;
                }
                if self
                    .claim_match(&inner, id, i, *level, now, &mut memo)
                    .is_some()
                    && !out.contains(&id)
                {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// The order claims at `level` look at rows: applies by id, operations oldest first; each
    /// as (apply, operation index). A rollout has no apply-level lease: on either level its
    /// operations are claimed, by the operation arms.
    ///
    /// Units in a state no arm ever takes (`Rules::never_claimed`) are left out.
    fn claim_order(&self, inner: &Inner, level: ClaimLevel) -> Vec<(ApplyId, usize)> {
        let rules = &self.rules;
        let mut order: Vec<(u64, u64, ApplyId, usize)> = Vec::with_capacity(inner.rows.len() * 2);
        for r in inner.rows.values() {
            match (level, r.rollout) {
                (ClaimLevel::Apply, None) => {
                    if !rules.never_claimed(r.state) {
                        order.push((0, 0, r.id, 0));
                    }
                }
                _ => {
                    for (i, o) in r.operations.iter().enumerate() {
                        if !rules.never_claimed(o.state) {
                            order.push((o.created_at, o.id, r.id, i));
                        }
                    }
                }
            }
        }
        // Operations are numbered as they are created, so the rows' order is nearly always
        // the claim order already (a clock set back is the exception).
        if level == ClaimLevel::Operation && !order.is_sorted() {
            order.sort_unstable();
        }
        order.into_iter().map(|(_, _, id, i)| (id, i)).collect()
    }

    fn claim_match(
        &self,
        inner: &Inner,
        id: ApplyId,
        i: usize,
        level: ClaimLevel,
        now: u64,
        memo: &mut Memo,
    ) -> Option<ClaimedVia> {
        let row = &inner.rows[&id];
        match (level, row.rollout) {
            (ClaimLevel::Apply, None) => {
                let view = self.claim_view(inner, row, now);
                self.rules.matching_arm(&view).map(ClaimedVia::Apply)
            }
            (ClaimLevel::Operation, _) | (ClaimLevel::Apply, Some(_)) => {
                let inputs = memo.inputs(inner, row);
                let view = match row.rollout {
                    None => OperationClaimView::single(
                        self.operation_view_in(inner, row, i, now, inputs),
                        self.claim_view(inner, row, now),
                    ),
                    Some(_) => self.member_view(inner, row, i, now, inputs),
                };
                let op = self.rules.matching_operation_arm(&view)?;
                // The parent is claimed as upstream's `ClaimApplyByID` does: by an apply arm
                // (for a rollout's operation, the arm that matches the operation itself).
                let parent = self.rules.matching_arm(&view.parent)?;
                Some(ClaimedVia::Operation { op, parent })
            }
        }
    }

    fn claim_at(&self, level: ClaimLevel, owner: &str) -> Result<Option<Claimed>, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        Ok(self.claim_locked(&mut inner, level, owner, now, false).0)
    }

    /// The first unit `level` takes, and whether a take was refused on the way; rollouts
    /// passed by when `skip_rollouts`.
    fn claim_locked(
        &self,
        inner: &mut Inner,
        level: ClaimLevel,
        owner: &str,
        now: u64,
        skip_rollouts: bool,
    ) -> (Option<Claimed>, bool) {
        let mut memo = Memo::default();
        let mut refused = false;
        for (id, i) in self.claim_order(inner, level) {
            let rollout = inner.rows[&id].rollout.is_some();
            if rollout && skip_rollouts {
                continue;
            }
            let Some(via) = self.claim_match(inner, id, i, level, now, &mut memo) else {
                continue;
            };
            let claimed = if rollout {
                self.take_member(inner, id, i, via, owner, now)
            } else {
                self.take(inner, id, via, owner, now)
            };
            if claimed.is_some() {
                return (claimed, refused);
            }
            refused = true;
            // A refused take may have failed a request: read the apply again.
            memo = Memo::default();
        }
        (None, refused)
    }

    /// Take the lease of an apply and its operation at one new epoch, moving the apply by the
    /// transition of the apply arm; `None` when the table has no such transition or the target
    /// re-check refused a re-activation (the start request then fails, with the reason).
    fn take(
        &self,
        inner: &mut Inner,
        id: ApplyId,
        via: ClaimedVia,
        owner: &str,
        now: u64,
    ) -> Option<Claimed> {
        let row = &inner.rows[&id];
        let mv = self
            .rules
            .claim_move(row.engine, row.state, via.apply_arm())?;
        let to = mv.to;
        let pre_claim = row.state;
        if mv.reactivates {
            let target = row.spec.target.clone();
            if let Some(existing) = active_on_target(inner, &target, Some(id)) {
                let message =
                    format!("start refused: another active apply ({existing}) exists on {target}");
                if let Some(req) = inner.requests.get_mut(&(id, ControlOp::Start)) {
                    req.status = ControlStatus::Failed;
                    req.updated_at = now;
                    req.message = Some(message);
                }
                return None;
            }
        }
        inner.seq += 1;
        let seq = inner.seq;
        let row = inner.rows.get_mut(&id).expect("row listed above");
        row.lease_epoch += 1;
        row.lease_acquired_seq = seq;
        row.lease_owner = Some(owner.to_string());
        row.lease_acquired_at = Some(now);
        row.heartbeat_at = Some(now);
        row.parked_until = None;
        row.updated_at = now;
        if mv.counts_attempt {
            row.attempt += 1;
            row.operations[0].attempt += 1;
        }
        if mv.clears_reason {
            row.error_message = None;
        }
        let op = &mut row.operations[0];
        op.lease_epoch = row.lease_epoch;
        op.lease_acquired_seq = seq;
        op.lease_owner = Some(owner.to_string());
        op.lease_acquired_at = Some(now);
        op.heartbeat_at = Some(now);
        op.parked_until = None;
        move_state(row, to, now);
        let claimed = Claimed {
            lease: Lease {
                apply: id,
                owner: owner.to_string(),
                epoch: row.lease_epoch,
            },
            arm: via,
            pre_claim,
            record: row.record(),
        };
        let epoch = row.lease_epoch;
        inner.audit.push(AuditEntry {
            detail: None,
            operation: None,
            apply: id,
            from: pre_claim,
            to,
            epoch,
            owner: Some(owner.to_string()),
            at_ms: now,
            cause: format!("claim {}", via.code()),
        });
        Some(claimed)
    }

    /// The owned row, fenced: a displaced owner gets `LeaseLost`.
    fn owned<'a>(
        &self,
        inner: &'a mut Inner,
        lease: &Lease,
    ) -> Result<&'a mut MemoryRow, StoreError> {
        let row = inner
            .rows
            .get_mut(&lease.apply)
            .ok_or(StoreError::RowGone(lease.apply))?;
        if self.rules.write_allowed(row.lease_epoch, lease.epoch) {
            Ok(row)
        } else {
            Err(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            })
        }
    }

    /// The owned row for a write that also touches the operation row, which its own lease
    /// fences (it always carries the parent's epoch; a mismatch is a lost lease, fail closed).
    fn owned_with_operation<'a>(
        &self,
        inner: &'a mut Inner,
        lease: &Lease,
    ) -> Result<&'a mut MemoryRow, StoreError> {
        let row = self.owned(inner, lease)?;
        if self
            .rules
            .write_allowed(row.operations[0].lease_epoch, lease.epoch)
        {
            Ok(row)
        } else {
            Err(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            })
        }
    }

    pub fn load(&self, lease: &Lease) -> Result<DriveInputs, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        if is_rollout(&inner, lease.apply) {
            return self.load_member(&inner, lease, now);
        }
        let row = self.owned(&mut inner, lease)?.clone();
        let controls = pending_of(&inner, row.id);
        Ok(DriveInputs {
            revert_window_expired: self
                .rules
                .revert_window_expired(row.state, now.saturating_sub(row.state_entered_at)),
            record: row.record(),
            controls,
            cutover_open: true,
        })
    }

    pub fn write(
        &self,
        lease: &Lease,
        to: ApplyState,
        resume: ResumeState,
        why: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        if is_rollout(&inner, lease.apply) {
            return self.write_member(&mut inner, lease, to, resume, why, now);
        }
        let (from, target, row_epoch) = {
            let row = self.owned_with_operation(&mut inner, lease)?;
            (row.state, row.spec.target.clone(), row.lease_epoch)
        };
        if self.rules.reactivates(from, to) {
            if let Some(existing) = active_on_target(&inner, &target, Some(lease.apply)) {
                return Err(StoreError::ActiveApplyExists {
                    target: target.to_string(),
                    existing,
                });
            }
        }
        if row_epoch != lease.epoch {
            inner.stale_writes_landed += 1;
        }
        inner
            .rows
            .get_mut(&lease.apply)
            .expect("checked above")
            .resume = resume;
        owner_move(&mut inner, lease, to, why, now);
        if let Some(why) = why {
            record_reason(&mut inner, lease.apply, 0, why);
        }
        Ok(())
    }

    pub fn fail_apply(&self, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        if is_rollout(&inner, lease.apply) {
            return self.fail_member(&mut inner, lease, reason, now);
        }
        let row = self.owned_with_operation(&mut inner, lease)?;
        let from = row.state;
        let Some(to) = self.rules.fail_closed_move(row.engine, from) else {
            return Err(StoreError::Refused(format!(
                "apply {} is already {from}",
                lease.apply
            )));
        };
        owner_move(&mut inner, lease, to, Some(reason), now);
        record_reason(&mut inner, lease.apply, 0, reason);
        Ok(())
    }

    fn finish_request(
        &self,
        lease: &Lease,
        op: ControlOp,
        status: ControlStatus,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        if is_rollout(&inner, lease.apply) {
            return self.finish_member_request(&mut inner, lease, op, status, message, now);
        }
        self.owned(&mut inner, lease)?;
        if let Some(req) = inner.requests.get_mut(&(lease.apply, op)) {
            if req.status == ControlStatus::Pending {
                req.status = status;
                req.updated_at = now;
                req.message = message.map(str::to_string);
            }
        }
        Ok(())
    }

    pub fn complete_request(&self, lease: &Lease, op: ControlOp) -> Result<(), StoreError> {
        self.finish_request(lease, op, ControlStatus::Completed, None)
    }

    pub fn fail_request(
        &self,
        lease: &Lease,
        op: ControlOp,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.finish_request(lease, op, ControlStatus::Failed, Some(reason))
    }

    pub fn heartbeat(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        if is_rollout(&inner, lease.apply) {
            return self.lease_member(&mut inner, lease, LeaseChange::Renew, now);
        }
        let row = self.owned_with_operation(&mut inner, lease)?;
        row.heartbeat_at = Some(now);
        row.operations[0].heartbeat_at = Some(now);
        Ok(())
    }

    /// Fenced by the leased operation's epoch: the engine's report on its task rows.
    pub fn record_progress(
        &self,
        lease: &Lease,
        progress: &crate::store::progress::TaskProgress,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let rules = self.rules;
        let row = inner
            .rows
            .get_mut(&lease.apply)
            .ok_or(StoreError::RowGone(lease.apply))?;
        let leased: Vec<usize> = (0..row.operations.len())
            .filter(|&i| {
                lease.epoch > 0 && rules.write_allowed(row.operations[i].lease_epoch, lease.epoch)
            })
            .collect();
        if leased.is_empty() {
            return Err(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            });
        }
        let progress = progress.clone().bounded();
        for task in row
            .tasks
            .iter_mut()
            .filter(|t| leased.contains(&t.operation))
        {
            task.progress = Some(progress.clone());
        }
        Ok(())
    }

    pub fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        if is_rollout(&inner, lease.apply) {
            return self.lease_member(&mut inner, lease, LeaseChange::Release, now);
        }
        let row = self.owned_with_operation(&mut inner, lease)?;
        row.lease_owner = None;
        row.heartbeat_at = None;
        row.operations[0].lease_owner = None;
        row.operations[0].heartbeat_at = None;
        Ok(())
    }

    pub fn pending_requests(&self, applies: &[ApplyId]) -> Result<Vec<ApplyId>, StoreError> {
        let inner = self.lock()?;
        Ok(applies
            .iter()
            .copied()
            .filter(|id| pending_of(&inner, *id).any())
            .collect())
    }

    pub fn park(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        if is_rollout(&inner, lease.apply) {
            return self.lease_member(&mut inner, lease, LeaseChange::Park, now);
        }
        let rules = self.rules;
        let row = self.owned_with_operation(&mut inner, lease)?;
        if !crate::machine::waits::parks(row.engine, row.state, &row.options) {
            return Err(StoreError::Refused(format!(
                "apply {} in {} does not park",
                row.id, row.state
            )));
        }
        let wake = now + rules.park_wake_ms(row.state, now.saturating_sub(row.state_entered_at));
        row.lease_owner = None;
        row.heartbeat_at = None;
        row.parked_until = Some(wake);
        row.operations[0].lease_owner = None;
        row.operations[0].heartbeat_at = None;
        row.operations[0].parked_until = Some(wake);
        let (state, epoch) = (row.state, row.lease_epoch);
        inner.audit.push(AuditEntry {
            detail: None,
            operation: None,
            apply: lease.apply,
            from: state,
            to: state,
            epoch,
            owner: Some(lease.owner.clone()),
            at_ms: now,
            cause: format!("park for {} ms", wake - now),
        });
        Ok(())
    }

    pub fn request(&self, apply: ApplyId, op: ControlOp) -> Result<RequestOutcome, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        let row = inner.rows.get(&apply).ok_or(StoreError::RowGone(apply))?;
        let pending = pending_of(&inner, apply);
        self.rules
            .request_admitted(row.engine, row.state, op, &pending, row.rollout.is_some())
            .map_err(StoreError::Refused)?;

        inner.seq += 1;
        let seq = inner.seq;
        let outcome = match inner.requests.get_mut(&(apply, op)) {
            Some(req) if req.status == ControlStatus::Pending => RequestOutcome::AlreadyPending,
            Some(req) => {
                req.status = ControlStatus::Pending;
                req.updated_at = now;
                req.updated_seq = seq;
                req.message = None;
                RequestOutcome::Reset
            }
            None => {
                inner.requests.insert(
                    (apply, op),
                    MemoryRequest {
                        status: ControlStatus::Pending,
                        updated_at: now,
                        updated_seq: seq,
                        message: None,
                    },
                );
                RequestOutcome::Created
            }
        };
        // A request already pending is the same request: nothing new to accept (as in MySQL).
        if is_rollout(&inner, apply) && outcome != RequestOutcome::AlreadyPending {
            self.rollout_request(&mut inner, apply, op, now);
        }
        if outcome != RequestOutcome::AlreadyPending {
            let after = inner.audit.len();
            inner.requests_log.push(outbox::LoggedRequest {
                after,
                apply,
                op,
                at_ms: now,
            });
        }
        Ok(outcome)
    }

    /// Exact here: some operation or apply matches a claim arm, or some operation expires.
    pub fn may_have_work(&self) -> Result<bool, StoreError> {
        let now = self.now();
        let inner = self.lock()?;
        let mut memo = Memo::default();
        let claimable = [ClaimLevel::Operation, ClaimLevel::Apply]
            .iter()
            .any(|level| {
                self.claim_order(&inner, *level).into_iter().any(|(id, i)| {
                    self.claim_match(&inner, id, i, *level, now, &mut memo)
                        .is_some()
                })
            });
        Ok(claimable
            || inner.rows.values().any(|row| {
                (0..row.operations.len()).any(|i| {
                    let view = match row.rollout {
                        None => self.claim_view(&inner, row, now),
                        Some(_) => self.operation_view(&inner, row, i, now),
                    };
                    self.rules.expiry_move(row.engine, &view).is_some()
                })
            }))
    }

    pub fn expire_retryable(&self) -> Result<u32, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        let rollouts: Vec<ApplyId> = inner
            .rows
            .values()
            .filter(|r| r.rollout.is_some())
            .map(|r| r.id)
            .collect();
        let mut members_expired = 0;
        for id in rollouts {
            members_expired += self.expire_members(&mut inner, id, now);
        }
        let mut expired = Vec::new();
        for row in inner.rows.values().filter(|r| r.rollout.is_none()) {
            let view = self.claim_view(&inner, row, now);
            if let Some((reason, to)) = self.rules.expiry_move(row.engine, &view) {
                expired.push((row.id, reason, to));
            }
        }
        for (id, reason, to) in &expired {
            let row = inner.rows.get_mut(id).expect("listed above");
            let from = row.state;
            row.updated_at = now;
            move_state(row, *to, now);
            let account = reason.account(row.error_message.as_deref());
            row.error_message = Some(account.clone());
            let epoch = row.lease_epoch;
            inner.audit.push(AuditEntry {
                detail: Some(account),
                operation: None,
                apply: *id,
                from,
                to: *to,
                epoch,
                owner: None,
                at_ms: now,
                cause: reason.as_str().into(),
            });
        }
        Ok(expired.len() as u32 + members_expired)
    }
}

/// Whether the apply is a rollout (its operations hold their own leases).
fn is_rollout(inner: &Inner, id: ApplyId) -> bool {
    inner.rows.get(&id).is_some_and(|r| r.rollout.is_some())
}

/// Move an apply to `to`: its operation row mirrors the state, and on a change its tasks follow
/// through the task rule (`machine::task`).
/// A fenced write by the lease's owner: the write heartbeats the apply and its operation, moves
/// the state (tasks follow) and is audited when the state changes.
/// `detail`: why, for a move into a failed state.
fn owner_move(inner: &mut Inner, lease: &Lease, to: ApplyState, detail: Option<&str>, now: u64) {
    let Some(row) = inner.rows.get_mut(&lease.apply) else {
        return;
    };
    let from = row.state;
    row.updated_at = now;
    row.heartbeat_at = Some(now);
    row.operations[0].heartbeat_at = Some(now);
    move_state(row, to, now);
    if from != to {
        inner.audit.push(AuditEntry {
            detail: None,
            operation: None,
            apply: lease.apply,
            from,
            to,
            epoch: lease.epoch,
            owner: Some(lease.owner.clone()),
            at_ms: now,
            cause: "write".into(),
        });
        if let Some(e) = inner.audit.last_mut() {
            e.detail = detail.map(str::to_string);
        }
    }
}

/// A failed state's reason, where people look for it: on the apply (a rollout's names the
/// operation), on operation `i` and on its tasks that failed (the audit entry of the move
/// carries it as its detail).
fn record_reason(inner: &mut Inner, apply: ApplyId, i: usize, why: &str) {
    let Some(row) = inner.rows.get_mut(&apply) else {
        return;
    };
    let op = &mut row.operations[i];
    op.error_message = Some(why.to_string());
    row.error_message = Some(if row.rollout.is_some() {
        format!("{}: {why}", op.spec.identifier)
    } else {
        why.to_string()
    });
    for task in row.tasks.iter_mut().filter(|t| t.operation == i) {
        if task.state.is_failure() {
            task.error_message = Some(why.to_string());
        }
    }
}

fn move_state(row: &mut MemoryRow, to: ApplyState, now: u64) {
    let from = row.state;
    if from != to {
        for task in &mut row.tasks {
            let step = task_after_move(task.state, from, to);
            task.state = step.state;
            if step.retried {
                task.attempt += 1;
            }
        }
        row.state = to;
        row.state_entered_at = now;
    }
    row.operations[0].state = to;
    row.operations[0].updated_at = now;
}

/// The apply-level inputs of the last apply a claim looked at: a claim looks at every
/// operation, and the operations of one apply come one after another.
#[derive(Default)]
struct Memo {
    last: Option<(ApplyId, RowInputs)>,
}

impl Memo {
    fn inputs(&mut self, inner: &Inner, row: &MemoryRow) -> &RowInputs {
        if self.last.as_ref().is_none_or(|(id, _)| *id != row.id) {
            self.last = Some((row.id, RowInputs::of(inner, row)));
        }
        &self.last.as_ref().expect("set above").1
    }
}

fn pending_of(inner: &Inner, id: ApplyId) -> PendingControls {
    let mut pc = PendingControls::default();
    // One descent for the apply's requests (they are adjacent in key order).
    for ((_, op), req) in inner
        .requests
        .range((id, ControlOp::ALL[0])..)
        .take_while(|((a, _), _)| *a == id)
    {
        pc.set(*op, req.status == ControlStatus::Pending);
    }
    pc
}

/// The active apply on an apply's target without deployments (the place `""`; a rollout holds
/// only its named deployments). Targets compare field by field: the display form `db/env` is
/// ambiguous (`a/b`+`c` vs `a`+`b/c`).
fn active_on_target(inner: &Inner, target: &Target, except: Option<ApplyId>) -> Option<ApplyId> {
    rollout::active_on_place(inner, target, "", except)
}

impl MemoryRow {
    /// What the driver of operation `i` reads: the apply row for an apply without
    /// deployments, the operation's own record for a rollout's.
    pub fn record_of(&self, i: usize) -> ApplyRecord {
        match self.rollout {
            None => self.record(),
            Some(_) => member_record(self, i),
        }
    }

    /// The operations as the rollout rules see them, in rollout order.
    pub fn members(&self) -> Vec<crate::machine::rollout::Member> {
        rollout::members(self)
    }

    /// Whether operation `i` may cut over now (always, without deployments).
    pub fn cutover_open(&self, i: usize) -> bool {
        self.rollout.is_none() || rollout::cutover_open(&Rules::default(), self, i)
    }

    /// The operation a lease at `epoch` holds (the only one, without deployments).
    pub fn operation_at(&self, epoch: u64) -> Option<usize> {
        match self.rollout {
            None => Some(0),
            Some(_) => self.operations.iter().position(|o| o.lease_epoch == epoch),
        }
    }

    /// What a driver knows of this row.
    pub fn record(&self) -> ApplyRecord {
        ApplyRecord {
            row: ApplySnapshot {
                id: self.id,
                operation: self.operations[0].id,
                engine: self.engine,
                state: self.state,
                epoch: self.lease_epoch,
                attempt: self.attempt,
                options: self.options,
                resume: self.resume,
            },
            spec: self.spec.clone(),
        }
    }
}
