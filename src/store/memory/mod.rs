//! The in-memory store: the reference semantics of claims, fencing and control requests. The
//! simulator drives it synchronously with a virtual clock; the demo and tests use it through
//! the async `Store` trait.
//!
//! Each store operation sits in the file of its kind, to be read against its MySQL twin under
//! `mysql/`: `submit`, `claim` (views, order, take), `writes` (the owner's fenced writes),
//! `requests`; `rows` holds the row types; `rollout` the operations of rollouts, whose leases
//! are their own; `clock`, `delegate` (the async trait) and `outbox` (webhook events) beside.

mod claim;
mod clock;
mod delegate;
mod outbox;
mod requests;
mod rollout;
mod rows;
mod submit;
mod writes;

pub use rows::{AuditEntry, MemoryOperation, MemoryRequest, MemoryRow, MemoryTask};
use writes::{is_rollout, move_state, record_reason};

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
