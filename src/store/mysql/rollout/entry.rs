//! The store's operations on a rollout's operations: claims, loads, fenced writes, lease
//! changes, requests and retry expiry. Each runs in the transaction its caller opened on the
//! apply row (the single-operation path finds the apply is a rollout and hands over), reads the
//! rollout whole ([`Loaded`]), and writes what the rules decided.

use std::sync::Arc;

use sqlx::mysql::MySqlConnection;
use sqlx::{MySql, Transaction};

use super::super::super::{
    ApplyRecord, ApplySpec, Claimed, DriveInputs, Lease, LeaseChange, StoreError,
};
use super::super::claim_tx::{sql_text, ClaimTx};
use super::super::writes::OwnerMove;
use super::super::{age_ms, Failure, MySqlStore};
use super::{Busy, Loaded};
use crate::machine::apply::{ApplyId, ApplySnapshot, ResumeState};
use crate::machine::rollout::{requests, CutoverGate};
use crate::machine::{ApplyState, ClaimedVia, ControlOp, ControlStatus};

/// What a claim of a rollout's operation came to.
pub(in super::super) enum MemberClaim {
    Taken(Box<Claimed>),
    /// Nothing taken; the claim transaction is still open (or was committed, with a refused
    /// start written) and the claim goes on with the next candidate.
    Skipped,
}

impl MySqlStore {
    /// Claim an operation of rollout `id` (its apply row locked in `tx`): `only` the given
    /// operation (the operation claim) or the first that an operation arm takes, in rollout
    /// order (the apply claim: a rollout's apply holds no lease of its own).
    pub(in super::super) async fn claim_member(
        &self,
        tx: &mut ClaimTx,
        id: ApplyId,
        only: Option<u64>,
        owner: &str,
        now: &str,
    ) -> Result<MemberClaim, Failure> {
        let mut loaded = match Loaded::read(self, tx.conn(), id, now).await {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return Self::skip(tx).await,
            // Reported once by `bad_row`; a rollout we cannot read is never driven or rewritten.
            Err(Failure::Store(StoreError::BadRow { .. })) => return Self::skip(tx).await,
            Err(e) => return Err(e),
        };
        let pick = (0..loaded.ops.len()).find_map(|i| {
            if only.is_some_and(|op| loaded.ops[i].id != op) {
                return None;
            }
            let view = loaded.member_view(&self.rules, i);
            let op = self.rules.matching_operation_arm(&view)?;
            // The apply arm that matches the operation itself moves it.
            let parent = self.rules.matching_arm(&view.parent)?;
            let via = ClaimedVia::Operation { op, parent };
            let mv = self
                .rules
                .claim_move(loaded.engine, loaded.ops[i].state, via.apply_arm())?;
            Some((i, via, mv))
        });
        let Some((i, via, mv)) = pick else {
            return Self::skip(tx).await;
        };
        let pre_claim = loaded.ops[i].state;
        loaded.counter += 1;
        let epoch = loaded.counter;
        let n = now.to_string();
        let mut sets = format!(
            "lease_epoch = {epoch}, lease_owner = {}, lease_acquired_at = {n}, heartbeat_at = {n}, \
             parked_until = NULL",
            sql_text(owner)
        );
        if mv.counts_attempt {
            sets.push_str(", attempt = attempt + 1, error_message = NULL");
            loaded.ops[i].attempt += 1;
        }
        loaded.set_op(i, &sets);
        {
            let op = &mut loaded.ops[i];
            op.lease_epoch = epoch;
            op.lease_owner = Some(owner.to_string());
            op.hb_age_us = Some(0);
            op.resting = false;
        }
        loaded.move_op(i, mv.to);
        loaded.audit(
            Some(i),
            pre_claim.as_str(),
            mv.to,
            epoch,
            Some(owner),
            &format!("claim {}", via.code()),
            None,
        );
        loaded.rederive(tx.conn()).await?;
        let record = match self.member_record(tx.conn(), &loaded, i).await {
            Ok(record) => record,
            // Nothing is written yet: an operation we cannot read is skipped, as any bad row.
            Err(Failure::Store(StoreError::BadRow { .. })) => return Self::skip(tx).await,
            Err(e) => return Err(e),
        };
        match loaded.flush(tx.conn()).await? {
            Ok(()) => {}
            Err(busy) => {
                // Nothing of the claim was written: fail the start that asked for it.
                self.refuse_member_start(tx.conn(), id, &busy, now).await?;
                tx.commit().await?;
                return Ok(MemberClaim::Skipped);
            }
        }
        tx.commit().await?;
        Ok(MemberClaim::Taken(Box::new(Claimed {
            lease: Lease {
                apply: id,
                owner: owner.to_string(),
                epoch,
            },
            arm: via,
            pre_claim,
            record,
        })))
    }

    /// Nothing taken from this rollout: end the transaction (nothing was written), so its rows
    /// are not held while the claim looks at the next candidates.
    async fn skip(tx: &mut ClaimTx) -> Result<MemberClaim, Failure> {
        tx.commit().await?;
        Ok(MemberClaim::Skipped)
    }

    /// Fail the pending start of a rollout whose deployment `busy` names.
    async fn refuse_member_start(
        &self,
        conn: &mut MySqlConnection,
        id: ApplyId,
        busy: &Busy,
        now: &str,
    ) -> Result<(), Failure> {
        if let Some(mut fresh) = Loaded::read(self, conn, id, now).await? {
            fresh.refuse_start(busy);
            // Only the request changes, so there is nothing to reserve.
            if let Err(busy) = fresh.flush(conn).await? {
                return Err(Failure::Retry(format!(
                    "deployment {} of apply {id} is busy",
                    busy.deployment
                )));
            }
        }
        Ok(())
    }

    /// The record a drive of operation `i` reads: the operation's state, epoch, attempt and
    /// resume state, and its own spec (its statements are its task rows).
    async fn member_record(
        &self,
        conn: &mut MySqlConnection,
        loaded: &Loaded,
        i: usize,
    ) -> Result<ApplyRecord, Failure> {
        let op = &loaded.ops[i];
        let ddl: Vec<String> =
            sqlx::query_scalar("SELECT ddl FROM tasks WHERE apply_operation_id = ? ORDER BY seq")
                .bind(op.id)
                .fetch_all(&mut *conn)
                .await?;
        let resume: ResumeState = serde_json::from_str(&op.resume).map_err(|e| {
            self.bad_row(loaded.id, "engine_resume_state", &op.resume, e.to_string())
        })?;
        Ok(ApplyRecord {
            row: ApplySnapshot {
                id: loaded.id,
                operation: op.id,
                engine: loaded.engine,
                state: op.state,
                epoch: op.lease_epoch,
                attempt: op.attempt,
                options: loaded.options,
                resume,
            },
            spec: Arc::new(ApplySpec {
                identifier: op.identifier.clone(),
                target: loaded.target.clone(),
                deployment: op.deployment.clone(),
                ddl,
                fingerprint: op.fingerprint.clone(),
            }),
        })
    }

    /// What a drive of the operation `lease` holds reads.
    pub(in super::super) async fn load_member(
        &self,
        tx: &mut Transaction<'_, MySql>,
        loaded: &Loaded,
        lease: &Lease,
    ) -> Result<DriveInputs, Failure> {
        let i = loaded.owned(lease.epoch)?;
        let op = &loaded.ops[i];
        Ok(DriveInputs {
            revert_window_expired: self
                .rules
                .revert_window_expired(op.state, age_ms(op.state_age_us)),
            record: self.member_record(tx, loaded, i).await?,
            controls: loaded.pending_for(&self.rules, i),
            cutover_open: loaded.cutover_open(i),
        })
    }

    /// A fenced move of one operation by its owner: a move into `cutting_over` is refused while
    /// the cutover gate is closed (under the apply row's lock, so two operations never both
    /// pass it); a move that makes the rollout active again re-reserves its deployments.
    pub(in super::super) async fn member_owner_move(
        &self,
        tx: &mut Transaction<'_, MySql>,
        mut loaded: Loaded,
        lease: &Lease,
        mv: OwnerMove<'_>,
    ) -> Result<(), Failure> {
        let i = loaded.owned(lease.epoch)?;
        let from = loaded.ops[i].state;
        match mv {
            OwnerMove::Write { to, resume, why } => {
                if to == ApplyState::CuttingOver && from != ApplyState::CuttingOver {
                    let gate =
                        self.rules
                            .rollout_cutover_gate(&loaded.policy, &loaded.members(), i);
                    if gate != CutoverGate::Open {
                        return Err(StoreError::Refused(format!(
                            "operation {} of apply {}: {gate}",
                            i + 1,
                            loaded.id
                        ))
                        .into());
                    }
                }
                loaded.set_op(i, &format!("engine_resume_state = {}", sql_text(resume)));
                loaded.owner_move(i, to, lease.epoch, &lease.owner, "write", why);
                if let Some(why) = why {
                    loaded.record_reason(i, why);
                }
            }
            OwnerMove::Fail { reason } => {
                let Some(to) = self.rules.fail_closed_move(loaded.engine, from) else {
                    return Err(StoreError::Refused(format!(
                        "operation {} of apply {} is already {from}",
                        i + 1,
                        lease.apply
                    ))
                    .into());
                };
                loaded.ops[i].failed_closed = true;
                loaded.set_op(i, "failed_closed = 1");
                loaded.owner_move(
                    i,
                    to,
                    lease.epoch,
                    &lease.owner,
                    "fail closed",
                    Some(reason),
                );
                loaded.record_reason(i, reason);
            }
        }
        loaded.rederive(tx).await?;
        let target = loaded.target.clone();
        if let Err(busy) = loaded.flush(tx).await? {
            return Err(StoreError::ActiveApplyExists {
                target: format!("{target}@{}", busy.deployment),
                existing: busy.existing,
            }
            .into());
        }
        Ok(())
    }

    /// Completing or failing a request of a rollout: it stays pending while another live
    /// operation still acts on it (this one acknowledges its issue), and is settled once none
    /// does. A refusal by one operation fails it.
    pub(in super::super) async fn finish_member_request(
        &self,
        tx: &mut Transaction<'_, MySql>,
        mut loaded: Loaded,
        lease: &Lease,
        op: ControlOp,
        status: ControlStatus,
        message: Option<&str>,
    ) -> Result<(), Failure> {
        let i = loaded.owned(lease.epoch)?;
        let others_act = status == ControlStatus::Completed
            && requests::acted_on_elsewhere(
                &self.rules,
                loaded.engine,
                &loaded.options,
                &loaded.policy,
                &loaded.members(),
                i,
                op,
                &loaded.pending,
            );
        if others_act {
            loaded.acknowledge(i, op);
        } else {
            loaded.settle_request(op, status, message);
            if op == ControlOp::Stop {
                loaded.lift_hold(tx).await?;
                loaded.rederive(tx).await?;
            }
        }
        if let Err(busy) = loaded.flush(tx).await? {
            return Err(Failure::Retry(format!(
                "deployment {} of apply {} is busy",
                busy.deployment, lease.apply
            )));
        }
        Ok(())
    }

    /// The fenced lease fields of one operation: renewed, released, or parked until its wake.
    pub(in super::super) async fn member_lease(
        &self,
        tx: &mut Transaction<'_, MySql>,
        mut loaded: Loaded,
        lease: &Lease,
        change: LeaseChange,
        now: &str,
    ) -> Result<(), Failure> {
        let i = loaded.owned(lease.epoch)?;
        match change {
            LeaseChange::Renew => loaded.set_op(i, &format!("heartbeat_at = {now}")),
            LeaseChange::Release => loaded.set_op(i, "lease_owner = NULL, heartbeat_at = NULL"),
            LeaseChange::Park => {
                let op = &loaded.ops[i];
                let gate_open = loaded.cutover_open(i);
                if !crate::machine::waits::parks_at(
                    loaded.engine,
                    op.state,
                    &loaded.options,
                    gate_open,
                ) {
                    return Err(StoreError::Refused(format!(
                        "operation {} of apply {} in {} does not park",
                        i + 1,
                        lease.apply,
                        op.state
                    ))
                    .into());
                }
                let state = op.state;
                let wake_ms = self.rules.park_wake_ms(state, age_ms(op.state_age_us));
                loaded.set_op(
                    i,
                    &format!(
                        "lease_owner = NULL, heartbeat_at = NULL, parked_until = ({now} + INTERVAL {} MICROSECOND)",
                        wake_ms.saturating_mul(1000)
                    ),
                );
                loaded.audit(
                    Some(i),
                    state.as_str(),
                    state,
                    lease.epoch,
                    Some(&lease.owner),
                    &format!("park for {wake_ms} ms"),
                    None,
                );
            }
        }
        if let Err(busy) = loaded.flush(tx).await? {
            return Err(Failure::Retry(format!(
                "deployment {} of apply {} is busy",
                busy.deployment, lease.apply
            )));
        }
        Ok(())
    }

    /// What a request accepted on a rollout does at once (`rollout::requests::accept`): the
    /// stop hold, the release latch, the withdrawal of the operations not started; a stop or
    /// start whose effect already holds is settled.
    pub(in super::super) async fn member_request(
        &self,
        tx: &mut Transaction<'_, MySql>,
        id: ApplyId,
        op: ControlOp,
        now: &str,
    ) -> Result<(), Failure> {
        let Some(mut loaded) = Loaded::read(self, tx, id, now).await? else {
            return Ok(());
        };
        let accepted = self.rules.accept_rollout_request(loaded.policy, op);
        loaded.policy = accepted.policy;
        if accepted.complete_now {
            loaded.settle_request(op, ControlStatus::Completed, None);
        }
        if accepted.withdraw_unstarted {
            let counter = loaded.counter;
            for i in 0..loaded.ops.len() {
                let from = loaded.ops[i].state;
                if let Some(to) = self.rules.withdraw_move(loaded.engine, from) {
                    loaded.move_op(i, to);
                    loaded.audit(
                        Some(i),
                        from.as_str(),
                        to,
                        counter,
                        None,
                        "cancel before start",
                        None,
                    );
                }
            }
        }
        loaded.lift_hold(tx).await?;
        loaded.rederive(tx).await?;
        if requests::settled_by_state(op, loaded.state) {
            loaded.settle_request(op, ControlStatus::Completed, None);
            loaded.lift_hold(tx).await?;
            loaded.rederive(tx).await?;
        }
        if let Err(busy) = loaded.flush(tx).await? {
            return Err(StoreError::ActiveApplyExists {
                target: format!("@{}", busy.deployment),
                existing: busy.existing,
            }
            .into());
        }
        Ok(())
    }

    /// Retry expiry of a rollout's operations: an operation past its retry budget or
    /// freshness fails; the apply's state follows by derivation.
    pub(in super::super) async fn expire_members(
        &self,
        tx: &mut Transaction<'_, MySql>,
        id: ApplyId,
        now: &str,
    ) -> Result<u32, Failure> {
        let Some(mut loaded) = Loaded::read(self, tx, id, now).await? else {
            return Ok(0);
        };
        let mut expired = 0;
        for i in 0..loaded.ops.len() {
            let view = loaded.op_view(&self.rules, i);
            let Some((reason, to)) = self.rules.expiry_move(loaded.engine, &view) else {
                continue;
            };
            let from = loaded.ops[i].state;
            let epoch = loaded.ops[i].lease_epoch;
            loaded.set_op(i, &format!("error_message = {}", sql_text(reason.as_str())));
            loaded.move_op(i, to);
            let account = reason.account(None);
            loaded.audit(
                Some(i),
                from.as_str(),
                to,
                epoch,
                None,
                reason.as_str(),
                Some(&account),
            );
            expired += 1;
        }
        if expired > 0 {
            loaded.rederive(tx).await?;
            if let Err(busy) = loaded.flush(tx).await? {
                return Err(Failure::Retry(format!(
                    "deployment {} of apply {id} is busy",
                    busy.deployment
                )));
            }
        }
        Ok(expired)
    }
}
