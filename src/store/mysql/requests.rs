//! Control requests (accepted by `Rules::accepts_request`, unique per apply and operation) and
//! retry expiry.

use std::str::FromStr;

use sqlx::{MySql, Row, Transaction};

use super::super::{RequestOutcome, StoreError};

use super::rows::{apply_columns, RawApply};
use super::{in_list, is_duplicate_key, Failure, MySqlStore};
use crate::machine::apply::ApplyId;
use crate::machine::{
    ApplyState, ClaimClass, ControlOp, ControlStatus, EngineKind, PendingControls,
};
use crate::store::webhooks::NewEvent;

impl MySqlStore {
    pub(super) async fn request_once(
        &self,
        apply: ApplyId,
        op: ControlOp,
        by: Option<&str>,
    ) -> Result<RequestOutcome, Failure> {
        let now = self.now_sql();
        let mut tx = self.pool.begin().await?;
        // Locking the apply row serialises requests on one apply with each other and with claims
        // and owner writes (which lock it first too, so the lock order is always the same).
        let row = sqlx::query(
            "SELECT state, engine, CAST(cutover_policy IS NOT NULL AS SIGNED) AS is_rollout \
             FROM applies WHERE id = ? FOR UPDATE",
        )
        .bind(apply)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::RowGone(apply))?;
        let state_text: String = row.try_get_unchecked("state")?;
        let engine_text: String = row.try_get_unchecked("engine")?;
        let state = ApplyState::from_str(&state_text)
            .map_err(|e| self.bad_row(apply, "state", &state_text, e.to_string()))?;
        let engine = EngineKind::from_str(&engine_text)
            .map_err(|e| self.bad_row(apply, "engine", &engine_text, e.to_string()))?;
        let rows =
            sqlx::query("SELECT operation, status FROM apply_control_requests WHERE apply_id = ?")
                .bind(apply)
                .fetch_all(&mut *tx)
                .await?;
        let mut pending = PendingControls::default();
        let mut existing = None;
        for row in &rows {
            let op_text: String = row.try_get_unchecked("operation")?;
            let status_text: String = row.try_get_unchecked("status")?;
            let Ok(row_op) = ControlOp::from_str(&op_text) else {
                continue;
            };
            let status = ControlStatus::from_str(&status_text).map_err(|e| {
                self.bad_row(
                    apply,
                    "apply_control_requests.status",
                    &status_text,
                    e.to_string(),
                )
            })?;
            pending.set(row_op, status == ControlStatus::Pending);
            if row_op == op {
                existing = Some(status);
            }
        }
        let is_rollout = row.try_get::<i64, _>("is_rollout")? != 0;
        self.rules
            .request_admitted(engine, state, op, &pending, is_rollout)
            .map_err(StoreError::Refused)?;
        let outcome = match existing {
            Some(ControlStatus::Pending) => RequestOutcome::AlreadyPending,
            Some(_) => {
                self.reset_request(&mut tx, apply, op, &now).await?;
                RequestOutcome::Reset
            }
            None => {
                let sql = format!(
                    "INSERT INTO apply_control_requests (apply_id, operation, status, created_at, updated_at, requested_at) \
                     VALUES (?, ?, ?, {now}, {now}, {now})"
                );
                let inserted = sqlx::query(&sql)
                    .bind(apply)
                    .bind(op.as_str())
                    .bind(ControlStatus::Pending.as_str())
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Ok(_) => RequestOutcome::Created,
                    // Someone inserted it without holding the apply lock: settle by a re-read.
                    Err(e) if is_duplicate_key(&e) => {
                        let status: Option<String> = sqlx::query_scalar(
                            "SELECT status FROM apply_control_requests WHERE apply_id = ? AND operation = ?",
                        )
                        .bind(apply)
                        .bind(op.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                        match status.as_deref().map(ControlStatus::from_str) {
                            Some(Ok(ControlStatus::Pending)) => RequestOutcome::AlreadyPending,
                            Some(Ok(_)) => {
                                self.reset_request(&mut tx, apply, op, &now).await?;
                                RequestOutcome::Reset
                            }
                            _ => return Err(Failure::Retry("control request insert race".into())),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if outcome != RequestOutcome::AlreadyPending {
            self.member_request(&mut tx, apply, op, &now).await?;
            self.record_event(&mut tx, Some(NewEvent::requested(apply, op)), &now)
                .await?;
            // Who asked this time (a request already pending keeps its first asker).
            sqlx::query(
                "UPDATE apply_control_requests SET requested_by = ? WHERE apply_id = ? AND operation = ?",
            )
            .bind(by.map(crate::store::requester))
            .bind(apply)
            .bind(op.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    pub(super) async fn reset_request(
        &self,
        tx: &mut Transaction<'_, MySql>,
        apply: ApplyId,
        op: ControlOp,
        now: &str,
    ) -> Result<(), Failure> {
        let sql = format!(
            "UPDATE apply_control_requests SET status = ?, error_message = NULL, completed_at = NULL, \
             updated_at = {now}, requested_at = {now}, issue = issue + 1 WHERE apply_id = ? AND operation = ?"
        );
        sqlx::query(&sql)
            .bind(ControlStatus::Pending.as_str())
            .bind(apply)
            .bind(op.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub(super) async fn expire_once(&self) -> Result<u32, Failure> {
        let now = self.now_sql();
        let Some(states) = in_list(&self.rules.states_in(ClaimClass::RetryPath)) else {
            return Ok(0);
        };
        let p = &self.rules.params;
        let expirable = format!(
            "a.state IN ({states}) AND a.cutover_policy IS NULL AND (a.attempt >= {budget} \
             OR TIMESTAMPDIFF(MICROSECOND, a.updated_at, {now}) >= {fresh})",
            budget = p.retry_budget,
            fresh = p.retry_freshness_ms.saturating_mul(1000),
        );
        // One plain read first, for both kinds of apply: a busy poll with nothing expirable
        // costs one statement, not a transaction. The locking reads that follow re-check, so a
        // row that changes in between is simply skipped by the rules.
        let gate = format!(
            "(SELECT a.id, 0 AS rollout FROM applies a WHERE {expirable} LIMIT 1) UNION ALL \
             (SELECT DISTINCT o.apply_id, 1 FROM applies a FORCE INDEX (ix_applies_rollout) \
             STRAIGHT_JOIN apply_operations o ON o.apply_id = a.id \
             WHERE a.rollout_open = 1 AND o.state IN ({states}) AND (o.attempt >= {budget} \
             OR TIMESTAMPDIFF(MICROSECOND, o.updated_at, {now}) >= {fresh}))",
            budget = p.retry_budget,
            fresh = p.retry_freshness_ms.saturating_mul(1000),
        );
        let found: Vec<(ApplyId, i64)> = sqlx::query_as(&gate).fetch_all(&self.pool).await?;
        let mut members = 0;
        for (id, _) in found.iter().filter(|(_, rollout)| *rollout == 1) {
            let mut tx = self.pool.begin().await?;
            match self.expire_members(&mut tx, *id, &now).await {
                Ok(n) => members += n,
                // Reported by `bad_row`; one unreadable rollout never stops expiry elsewhere.
                Err(Failure::Store(StoreError::BadRow { .. })) => continue,
                Err(e) => return Err(e),
            }
            tx.commit().await?;
        }
        if !found.iter().any(|(_, rollout)| *rollout == 0) {
            return Ok(members);
        }
        let select = format!(
            "SELECT {cols} FROM applies a WHERE {expirable} ORDER BY a.id FOR UPDATE SKIP LOCKED",
            cols = apply_columns(&now),
        );
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&select).fetch_all(&mut *tx).await?;
        let mut expired = 0;
        for row in &rows {
            let raw = RawApply::read(row)?;
            let Ok(parsed) = self.parse(&raw) else {
                continue;
            };
            let Some((reason, to)) = self
                .rules
                .expiry_move(parsed.engine, &parsed.view(&raw, &self.rules))
            else {
                continue;
            };
            // The row is locked above: its reason is the failure being retried.
            let last: Option<String> =
                sqlx::query_scalar("SELECT error_message FROM applies WHERE id = ?")
                    .bind(raw.id)
                    .fetch_one(&mut *tx)
                    .await?;
            let account = reason.account(last.as_deref());
            let sql = format!(
                "UPDATE applies SET state = ?, error_message = ?, updated_at = {now}, state_entered_at = {now}, \
                 write_seq = write_seq + 1 WHERE id = ? AND state = ? AND lease_epoch = ?"
            );
            let done = sqlx::query(&sql)
                .bind(to.as_str())
                .bind(&account)
                .bind(raw.id)
                .bind(&raw.state)
                .bind(raw.lease_epoch)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                continue;
            }
            self.mirror_operation(&mut tx, raw.id, parsed.state, to, &now)
                .await?;
            self.log(
                &mut tx,
                raw.id,
                &raw.state,
                to,
                raw.lease_epoch,
                None,
                reason.as_str(),
                Some(&account),
                &now,
            )
            .await?;
            expired += 1;
        }
        tx.commit().await?;
        Ok(expired + members)
    }
}
