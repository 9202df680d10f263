//! Claims in the memory store: the views the claim arms read, the order units are looked
//! at, and the take that moves a row by its arm at a new epoch. The simulator calls these
//! after every event, so the views of one apply are built once per claim (`Memo`).

use super::*;

impl MemoryStore {
    pub(super) fn claim_view(&self, inner: &Inner, row: &MemoryRow, now: u64) -> ClaimView {
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
    pub(super) fn operation_view(
        &self,
        inner: &Inner,
        row: &MemoryRow,
        i: usize,
        now: u64,
    ) -> ClaimView {
        self.operation_view_in(inner, row, i, now, &RowInputs::of(inner, row))
    }

    pub(super) fn operation_view_in(
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
    pub(super) fn claim_order(&self, inner: &Inner, level: ClaimLevel) -> Vec<(ApplyId, usize)> {
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

    pub(super) fn claim_match(
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

    pub(super) fn claim_at(
        &self,
        level: ClaimLevel,
        owner: &str,
    ) -> Result<Option<Claimed>, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        Ok(self.claim_locked(&mut inner, level, owner, now, false).0)
    }

    /// The first unit `level` takes, and whether a take was refused on the way; rollouts
    /// passed by when `skip_rollouts`.
    pub(super) fn claim_locked(
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
    pub(super) fn take(
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
}

/// The apply-level inputs of the last apply a claim looked at: a claim looks at every
/// operation, and the operations of one apply come one after another.
#[derive(Default)]
pub(super) struct Memo {
    last: Option<(ApplyId, RowInputs)>,
}

impl Memo {
    pub(super) fn inputs(&mut self, inner: &Inner, row: &MemoryRow) -> &RowInputs {
        if self.last.as_ref().is_none_or(|(id, _)| *id != row.id) {
            self.last = Some((row.id, RowInputs::of(inner, row)));
        }
        &self.last.as_ref().expect("set above").1
    }
}
