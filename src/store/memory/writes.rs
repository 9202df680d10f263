//! The owner's writes in the memory store, each fenced by its lease: loads, moves, failures,
//! request settlements, heartbeats, progress, parks and releases, and the sweep of retries
//! whose budget expired.

use super::*;

impl MemoryStore {
    /// The owned row, fenced: a displaced owner gets `LeaseLost`.
    pub(super) fn owned<'a>(
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
    pub(super) fn owned_with_operation<'a>(
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

    pub(super) fn finish_request(
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
pub(super) fn is_rollout(inner: &Inner, id: ApplyId) -> bool {
    inner.rows.get(&id).is_some_and(|r| r.rollout.is_some())
}

/// A fenced write by the lease's owner: the write heartbeats the apply and its operation, moves
/// the state (tasks follow) and is audited when the state changes.
/// `detail`: why, for a move into a failed state.
pub(super) fn owner_move(
    inner: &mut Inner,
    lease: &Lease,
    to: ApplyState,
    detail: Option<&str>,
    now: u64,
) {
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
pub(super) fn record_reason(inner: &mut Inner, apply: ApplyId, i: usize, why: &str) {
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

/// Move an apply to `to`: its operation row mirrors the state, and on a change its tasks follow
/// through the task rule (`machine::task`).
pub(super) fn move_state(row: &mut MemoryRow, to: ApplyState, now: u64) {
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
