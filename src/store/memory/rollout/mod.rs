//! Rollouts in the memory store: an apply whose change runs as several operations (one per
//! deployment and table step, `machine::rollout`). Each operation holds its own lease, drawn
//! from the apply's epoch counter so that `(apply, epoch)` names it; every write is fenced by
//! it; the apply row holds no lease and its state is only ever written with
//! `rollout::derive_parent`, under the same lock as the operation move that changed it.

mod submit;

use super::*;
use crate::machine::rollout::{requests, CutoverGate, Member, StartGate};

/// The rollout's operations as the rollout rules see them.
pub(super) fn members(row: &MemoryRow) -> Vec<Member> {
    row.operations
        .iter()
        .map(|o| Member {
            deployment: o.deployment_index,
            step: o.step,
            state: o.state,
            failed_closed: o.failed_closed,
        })
        .collect()
}

/// The apply-level inputs of every operation's view, read once per apply when a claim looks at
/// all its operations: the rollout's operations as the rules see them and its pending requests.
pub(super) struct RowInputs {
    pub(super) members: Vec<Member>,
    pub(super) all: PendingControls,
}

impl RowInputs {
    pub(super) fn of(inner: &Inner, row: &MemoryRow) -> RowInputs {
        RowInputs {
            members: if row.rollout.is_some() {
                members(row)
            } else {
                Vec::new()
            },
            all: pending_of(inner, row.id),
        }
    }
}

/// The apply's pending requests as operation `i` sees them (`rollout::requests::pending_for`).
pub(super) fn pending_for(
    rules: &Rules,
    inner: &Inner,
    row: &MemoryRow,
    i: usize,
) -> PendingControls {
    pending_for_in(rules, inner, row, i, &RowInputs::of(inner, row))
}

pub(super) fn pending_for_in(
    rules: &Rules,
    inner: &Inner,
    row: &MemoryRow,
    i: usize,
    inputs: &RowInputs,
) -> PendingControls {
    let op = &row.operations[i];
    requests::pending_for(
        rules,
        row.engine,
        &row.options,
        &row.rollout.unwrap_or_default(),
        &inputs.members,
        i,
        &inputs.all,
        |req| {
            op.acked.iter().any(|(r, seq)| {
                *r == req
                    && inner
                        .requests
                        .get(&(row.id, req))
                        .is_some_and(|q| q.updated_seq == *seq)
            })
        },
    )
}

/// Whether operation `i`'s cutover gate is open.
pub(super) fn cutover_open(rules: &Rules, row: &MemoryRow, i: usize) -> bool {
    rules.rollout_cutover_gate(&row.rollout.unwrap_or_default(), &members(row), i)
        == CutoverGate::Open
}

/// The apply holding `(target, deployment)` while active, other than `except`: an apply
/// without deployments holds its target's `""`; a rollout holds each of its deployments.
pub(super) fn active_on_place(
    inner: &Inner,
    target: &Target,
    deployment: &str,
    except: Option<ApplyId>,
) -> Option<ApplyId> {
    inner
        .rows
        .values()
        .find(|r| {
            Some(r.id) != except
                && r.state.is_active()
                && r.spec.target == *target
                && match r.rollout {
                    None => deployment.is_empty(),
                    Some(_) => r.operations.iter().any(|o| o.deployment == deployment),
                }
        })
        .map(|r| r.id)
}

/// A place of the rollout held by another active apply: checked whenever an operation would
/// make a stopped rollout active again, for every deployment it reserves.
fn busy_place(inner: &Inner, id: ApplyId) -> Option<(String, ApplyId)> {
    let row = &inner.rows[&id];
    row.operations.iter().find_map(|o| {
        active_on_place(inner, &row.spec.target, &o.deployment, Some(id))
            .map(|existing| (o.deployment.clone(), existing))
    })
}

impl MemoryStore {
    /// A rollout operation as the operation arms see it: its own lease and state, with its
    /// apply's requests, for the operation arm and for the apply arm that moves it; and whether
    /// its start gate is open.
    pub(super) fn member_view(
        &self,
        inner: &Inner,
        row: &MemoryRow,
        i: usize,
        now: u64,
        inputs: &RowInputs,
    ) -> OperationClaimView {
        let view = self.operation_view_in(inner, row, i, now, inputs);
        let policy = row.rollout.unwrap_or_default();
        OperationClaimView {
            op: view,
            parent: view,
            start_open: self.rules.rollout_start_gate(&policy, &inputs.members, i)
                == StartGate::Open,
        }
    }

    /// Take operation `i` of a rollout at a new epoch from the apply's counter, moving it by
    /// the apply arm's transition; the apply's state follows by derivation.
    pub(super) fn take_member(
        &self,
        inner: &mut Inner,
        id: ApplyId,
        i: usize,
        via: ClaimedVia,
        owner: &str,
        now: u64,
    ) -> Option<Claimed> {
        let row = &inner.rows[&id];
        let op = &row.operations[i];
        let mv = self
            .rules
            .claim_move(row.engine, op.state, via.apply_arm())?;
        if self.rules.reactivates(op.state, mv.to) || self.rules.reactivates(row.state, mv.to) {
            let target = row.spec.target.clone();
            if let Some((_, existing)) = busy_place(inner, id) {
                refuse_start(inner, id, &target, existing, now);
                return None;
            }
        }
        inner.seq += 1;
        let seq = inner.seq;
        let row = inner.rows.get_mut(&id).expect("row listed above");
        row.lease_epoch += 1;
        let epoch = row.lease_epoch;
        let op = &mut row.operations[i];
        let pre_claim = op.state;
        op.lease_epoch = epoch;
        op.lease_owner = Some(owner.to_string());
        op.lease_acquired_at = Some(now);
        op.lease_acquired_seq = seq;
        op.heartbeat_at = Some(now);
        op.parked_until = None;
        op.updated_at = now;
        if mv.counts_attempt {
            op.attempt += 1;
            op.error_message = None;
        }
        let op_id = op.id;
        move_member(row, i, mv.to, now);
        let lease = Lease {
            apply: id,
            owner: owner.to_string(),
            epoch,
        };
        let record = member_record(row, i);
        inner.audit.push(AuditEntry {
            detail: None,
            apply: id,
            operation: Some(op_id),
            from: pre_claim,
            to: mv.to,
            epoch,
            owner: Some(owner.to_string()),
            at_ms: now,
            cause: format!("claim {}", via.code()),
        });
        rederive(&self.rules, inner, id, now);
        Some(Claimed {
            lease,
            arm: via,
            pre_claim,
            record,
        })
    }

    /// The operation a lease holds, fenced: no operation of the apply holds that epoch any
    /// more, so its owner was displaced.
    pub(super) fn owned_member(&self, inner: &Inner, lease: &Lease) -> Result<usize, StoreError> {
        let row = inner
            .rows
            .get(&lease.apply)
            .ok_or(StoreError::RowGone(lease.apply))?;
        row.operations
            .iter()
            .position(|o| o.lease_epoch == lease.epoch && lease.epoch > 0)
            .ok_or(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            })
    }

    pub(super) fn load_member(
        &self,
        inner: &Inner,
        lease: &Lease,
        now: u64,
    ) -> Result<DriveInputs, StoreError> {
        let i = self.owned_member(inner, lease)?;
        let row = &inner.rows[&lease.apply];
        let op = &row.operations[i];
        Ok(DriveInputs {
            revert_window_expired: self
                .rules
                .revert_window_expired(op.state, now.saturating_sub(op.state_entered_at)),
            record: member_record(row, i),
            controls: pending_for(&self.rules, inner, row, i),
            cutover_open: cutover_open(&self.rules, row, i),
        })
    }

    /// A fenced write of one operation: a move into `cutting_over` is refused while the
    /// rollout's cutover gate is closed (checked under the lock, so two operations can never
    /// both pass it), and a reactivation re-checks the operation's deployment.
    pub(super) fn write_member(
        &self,
        inner: &mut Inner,
        lease: &Lease,
        to: ApplyState,
        resume: ResumeState,
        why: Option<&str>,
        now: u64,
    ) -> Result<(), StoreError> {
        let i = self.owned_member(inner, lease)?;
        let row = &inner.rows[&lease.apply];
        let op = &row.operations[i];
        if to == ApplyState::CuttingOver && op.state != ApplyState::CuttingOver {
            let gate =
                self.rules
                    .rollout_cutover_gate(&row.rollout.unwrap_or_default(), &members(row), i);
            if gate != CutoverGate::Open {
                return Err(StoreError::Refused(format!(
                    "operation {} of apply {}: {gate}",
                    i + 1,
                    row.id
                )));
            }
        }
        if self.rules.reactivates(op.state, to) || self.rules.reactivates(row.state, to) {
            let target = row.spec.target.clone();
            if let Some((deployment, existing)) = busy_place(inner, lease.apply) {
                return Err(StoreError::ActiveApplyExists {
                    target: format!("{target}@{deployment}"),
                    existing,
                });
            }
        }
        let row = inner.rows.get_mut(&lease.apply).expect("checked above");
        row.operations[i].resume = resume;
        member_move(&self.rules, inner, lease, i, to, "write", why, now);
        if let Some(why) = why {
            record_reason(inner, lease.apply, i, why);
        }
        Ok(())
    }

    pub(super) fn fail_member(
        &self,
        inner: &mut Inner,
        lease: &Lease,
        reason: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let i = self.owned_member(inner, lease)?;
        let row = inner.rows.get_mut(&lease.apply).expect("owned above");
        let from = row.operations[i].state;
        let Some(to) = self.rules.fail_closed_move(row.engine, from) else {
            return Err(StoreError::Refused(format!(
                "operation {} of apply {} is already {from}",
                i + 1,
                lease.apply
            )));
        };
        row.operations[i].failed_closed = true;
        member_move(
            &self.rules,
            inner,
            lease,
            i,
            to,
            "fail closed",
            Some(reason),
            now,
        );
        record_reason(inner, lease.apply, i, reason);
        Ok(())
    }

    /// Completing a request of a rollout: it stays pending while another live operation still
    /// acts on it (a stop reaches every running operation, a cutover every one at the gate),
    /// and completes once none does. A refusal by one operation fails it.
    pub(super) fn finish_member_request(
        &self,
        inner: &mut Inner,
        lease: &Lease,
        op: ControlOp,
        status: ControlStatus,
        message: Option<&str>,
        now: u64,
    ) -> Result<(), StoreError> {
        let i = self.owned_member(inner, lease)?;
        let row = &inner.rows[&lease.apply];
        let pending = pending_of(inner, row.id);
        let others_act = status == ControlStatus::Completed
            && requests::acted_on_elsewhere(
                &self.rules,
                row.engine,
                &row.options,
                &row.rollout.unwrap_or_default(),
                &members(row),
                i,
                op,
                &pending,
            );
        if others_act {
            let seq = inner
                .requests
                .get(&(lease.apply, op))
                .map_or(0, |r| r.updated_seq);
            let row = inner.rows.get_mut(&lease.apply).expect("owned above");
            row.operations[i].acked.retain(|(r, _)| *r != op);
            row.operations[i].acked.push((op, seq));
            return Ok(());
        }
        if let Some(req) = inner.requests.get_mut(&(lease.apply, op)) {
            if req.status == ControlStatus::Pending {
                req.status = status;
                req.updated_at = now;
                req.message = message.map(str::to_string);
            }
        }
        if op == ControlOp::Stop {
            lift_hold(inner, lease.apply, now);
            rederive(&self.rules, inner, lease.apply, now);
        }
        Ok(())
    }

    /// The fenced lease fields of one operation: renewed, released, or parked until `wake`.
    pub(super) fn lease_member(
        &self,
        inner: &mut Inner,
        lease: &Lease,
        change: LeaseChange,
        now: u64,
    ) -> Result<(), StoreError> {
        let i = self.owned_member(inner, lease)?;
        let rules = self.rules;
        let gate_open = cutover_open(&rules, &inner.rows[&lease.apply], i);
        let row = inner.rows.get_mut(&lease.apply).expect("owned above");
        let engine = row.engine;
        let options = row.options;
        let op = &mut row.operations[i];
        match change {
            LeaseChange::Renew => op.heartbeat_at = Some(now),
            LeaseChange::Release => {
                op.lease_owner = None;
                op.heartbeat_at = None;
            }
            LeaseChange::Park => {
                if !crate::machine::waits::parks_at(engine, op.state, &options, gate_open) {
                    return Err(StoreError::Refused(format!(
                        "operation {} of apply {} in {} does not park",
                        i + 1,
                        lease.apply,
                        op.state
                    )));
                }
                let wake =
                    now + rules.park_wake_ms(op.state, now.saturating_sub(op.state_entered_at));
                op.lease_owner = None;
                op.heartbeat_at = None;
                op.parked_until = Some(wake);
                let (state, id) = (op.state, op.id);
                inner.audit.push(AuditEntry {
                    detail: None,
                    apply: lease.apply,
                    operation: Some(id),
                    from: state,
                    to: state,
                    epoch: lease.epoch,
                    owner: Some(lease.owner.clone()),
                    at_ms: now,
                    cause: format!("park for {} ms", wake - now),
                });
            }
        }
        Ok(())
    }

    /// What a request accepted on a rollout does at once: a stop holds every new start and a
    /// start lifts the hold (`RolloutPolicy::held`); a release sets the `pause` latch; a
    /// cancel withdraws the operations not started. A stop or start whose effect already holds for the rollout (nothing was
    /// running to stop) is complete at once: no operation would complete it.
    pub(super) fn rollout_request(&self, inner: &mut Inner, id: ApplyId, op: ControlOp, now: u64) {
        let Some(row) = inner.rows.get_mut(&id) else {
            return;
        };
        let Some(policy) = row.rollout.as_mut() else {
            return;
        };
        let accepted = self.rules.accept_rollout_request(*policy, op);
        *policy = accepted.policy;
        let done_now = accepted.complete_now;
        if accepted.withdraw_unstarted {
            self.withdraw_unstarted(inner, id, now);
        }
        if done_now {
            if let Some(req) = inner.requests.get_mut(&(id, op)) {
                req.status = ControlStatus::Completed;
                req.updated_at = now;
            }
        }
        lift_hold(inner, id, now);
        rederive(&self.rules, inner, id, now);
        {
            let state = inner.rows[&id].state;
            if requests::settled_by_state(op, state) {
                if let Some(req) = inner.requests.get_mut(&(id, op)) {
                    req.status = ControlStatus::Completed;
                    req.updated_at = now;
                }
                lift_hold(inner, id, now);
                rederive(&self.rules, inner, id, now);
            }
        }
    }

    /// A cancel accepted on a rollout withdraws, at once, every operation not started: none
    /// holds a lease, and a claim would only start it to cancel it.
    fn withdraw_unstarted(&self, inner: &mut Inner, id: ApplyId, now: u64) {
        let Some(row) = inner.rows.get_mut(&id) else {
            return;
        };
        let epoch = row.lease_epoch;
        let mut moved = Vec::new();
        for i in 0..row.operations.len() {
            let from = row.operations[i].state;
            if let Some(to) = self.rules.withdraw_move(row.engine, from) {
                move_member(row, i, to, now);
                moved.push((row.operations[i].id, from, to));
            }
        }
        for (op, from, to) in moved {
            inner.audit.push(AuditEntry {
                detail: None,
                apply: id,
                operation: Some(op),
                from,
                to,
                epoch,
                owner: None,
                at_ms: now,
                cause: "cancel before start".into(),
            });
        }
        rederive(&self.rules, inner, id, now);
    }

    /// Retry expiry, per operation: an operation past its retry budget or freshness fails.
    pub(super) fn expire_members(&self, inner: &mut Inner, id: ApplyId, now: u64) -> u32 {
        let mut expired = Vec::new();
        {
            let row = &inner.rows[&id];
            for i in 0..row.operations.len() {
                let view = self.operation_view(inner, row, i, now);
                if let Some((reason, to)) = self.rules.expiry_move(row.engine, &view) {
                    expired.push((i, reason, to));
                }
            }
        }
        for (i, reason, to) in &expired {
            let row = inner.rows.get_mut(&id).expect("listed above");
            let from = row.operations[*i].state;
            let op_id = row.operations[*i].id;
            let epoch = row.operations[*i].lease_epoch;
            row.operations[*i].error_message = Some(reason.as_str().to_string());
            row.operations[*i].updated_at = now;
            move_member(row, *i, *to, now);
            inner.audit.push(AuditEntry {
                detail: Some(reason.account(None)),
                apply: id,
                operation: Some(op_id),
                from,
                to: *to,
                epoch,
                owner: None,
                at_ms: now,
                cause: reason.as_str().into(),
            });
        }
        if !expired.is_empty() {
            rederive(&self.rules, inner, id, now);
        }
        expired.len() as u32
    }
}

/// A pending start lifts a stop's hold once no stop is pending. A stopped rollout holds none
/// of its deployments, so lifting the hold re-checks them all; a busy one fails the start.
fn lift_hold(inner: &mut Inner, id: ApplyId, now: u64) {
    let pending = pending_of(inner, id);
    let Some(row) = inner.rows.get(&id) else {
        return;
    };
    if !row
        .rollout
        .is_some_and(|p| requests::hold_lifts(&p, &pending))
    {
        return;
    }
    if !row.state.is_active() {
        if let Some((_, existing)) = busy_place(inner, id) {
            let target = row.spec.target.clone();
            refuse_start(inner, id, &target, existing, now);
            return;
        }
    }
    if let Some(policy) = inner.rows.get_mut(&id).and_then(|r| r.rollout.as_mut()) {
        policy.held = false;
    }
}

/// A start refused because the operation's deployment is busy fails the start request.
fn refuse_start(inner: &mut Inner, id: ApplyId, target: &Target, existing: ApplyId, now: u64) {
    let message = format!("start refused: another active apply ({existing}) exists on {target}");
    if let Some(req) = inner.requests.get_mut(&(id, ControlOp::Start)) {
        req.status = ControlStatus::Failed;
        req.updated_at = now;
        req.message = Some(message);
    }
}

/// The record a drive of operation `i` reads: the operation's state, epoch, attempt and resume
/// state, and its own spec.
pub(super) fn member_record(row: &MemoryRow, i: usize) -> ApplyRecord {
    let op = &row.operations[i];
    ApplyRecord {
        row: ApplySnapshot {
            id: row.id,
            operation: op.id,
            engine: row.engine,
            state: op.state,
            epoch: op.lease_epoch,
            attempt: op.attempt,
            options: row.options,
            resume: op.resume,
        },
        spec: op.spec.clone(),
    }
}

/// Move operation `i` to `to`; its tasks follow through the task rule.
fn move_member(row: &mut MemoryRow, i: usize, to: ApplyState, now: u64) {
    let from = row.operations[i].state;
    if from != to {
        for task in row.tasks.iter_mut().filter(|t| t.operation == i) {
            let step = task_after_move(task.state, from, to);
            task.state = step.state;
            if step.retried {
                task.attempt += 1;
            }
        }
        row.operations[i].state = to;
        row.operations[i].state_entered_at = now;
    }
    row.operations[i].updated_at = now;
}

/// A fenced move by the lease's owner: heartbeats the operation, moves it, audits it, and
/// derives the apply's state.
#[allow(clippy::too_many_arguments)]
fn member_move(
    rules: &Rules,
    inner: &mut Inner,
    lease: &Lease,
    i: usize,
    to: ApplyState,
    cause: &str,
    detail: Option<&str>,
    now: u64,
) {
    let Some(row) = inner.rows.get_mut(&lease.apply) else {
        return;
    };
    let from = row.operations[i].state;
    let op_id = row.operations[i].id;
    row.operations[i].heartbeat_at = Some(now);
    move_member(row, i, to, now);
    if from != to {
        inner.audit.push(AuditEntry {
            detail: detail.map(str::to_string),
            apply: lease.apply,
            operation: Some(op_id),
            from,
            to,
            epoch: lease.epoch,
            owner: Some(lease.owner.clone()),
            at_ms: now,
            cause: cause.into(),
        });
    }
    rederive(rules, inner, lease.apply, now);
}

/// Write the apply's derived state if it changed (audited as `derived`), and wake every
/// operation parked at the cutover gate whose turn has now come.
pub(super) fn rederive(rules: &Rules, inner: &mut Inner, id: ApplyId, now: u64) {
    let stop_pending = pending_of(inner, id).stop;
    let Some(row) = inner.rows.get_mut(&id) else {
        return;
    };
    let Some(policy) = row.rollout else {
        return;
    };
    for i in requests::wake_at_gate(rules, &policy, &members(row)) {
        if row.operations[i].parked_until.is_some_and(|w| w > now) {
            row.operations[i].parked_until = Some(now);
        }
    }
    let (mut to, stop_done) = requests::derive_settled(rules, &policy, &members(row), stop_pending);
    // A stop whose effect holds for the whole rollout (its running operation failed or
    // finished before it could stop) is done: no operation is left to complete it.
    if stop_done {
        if let Some(req) = inner.requests.get_mut(&(id, ControlOp::Stop)) {
            req.status = ControlStatus::Completed;
            req.updated_at = now;
        }
        lift_hold(inner, id, now);
        let row = inner.rows.get_mut(&id).expect("listed above");
        to = rules.derive_rollout(&row.rollout.unwrap_or_default(), &members(row));
    }
    let row = inner.rows.get_mut(&id).expect("listed above");
    let from = row.state;
    if from == to {
        return;
    }
    row.state = to;
    row.state_entered_at = now;
    row.updated_at = now;
    let epoch = row.lease_epoch;
    inner.audit.push(AuditEntry {
        detail: None,
        apply: id,
        operation: None,
        from,
        to,
        epoch,
        owner: None,
        at_ms: now,
        cause: "derived".into(),
    });
}
