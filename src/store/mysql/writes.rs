//! Owner writes and the rows that follow them: fenced state writes and failures, heartbeats and
//! releases, request completion and load; task rows and the audit log. Every fenced owner write
//! goes through one transaction here (the apply, its operation, its tasks, a failure's reason
//! and the audit row move together). Submissions are in `submit`.

use std::str::FromStr;

use sqlx::{Executor, MySql, Row, Transaction};

use super::super::{DriveInputs, Lease, LeaseChange, StoreError, Target};
use super::rollout::Loaded;
use crate::store::webhooks::{Move, NewEvent};

use super::rows::{apply_columns, RawApply};
use super::{age_ms, is_duplicate_key, Failure, MySqlStore};
use crate::machine::apply::ApplyId;
use crate::machine::task::task_after_move;
use crate::machine::{ApplyState, ControlOp, ControlStatus, EngineKind, TaskState};

/// The statement that moves the task rows `rows` selects (an SQL condition, e.g. `apply_id =
/// ?`) along with their apply's or operation's move from `from` to `to`; `None` when no task
/// state changes. The states are `machine`'s own names.
pub(super) fn task_sync_sql(
    rows: &str,
    from: ApplyState,
    to: ApplyState,
    now: &str,
) -> Option<String> {
    if from == to {
        return None;
    }
    let steps: Vec<_> = TaskState::ALL
        .iter()
        .map(|stored| (*stored, task_after_move(*stored, from, to)))
        .filter(|(stored, step)| step.state != *stored)
        .collect();
    if steps.is_empty() {
        return None;
    }
    let retried: String = steps
        .iter()
        .map(|(stored, step)| {
            format!(
                " WHEN '{}' THEN {}",
                stored.as_str(),
                u32::from(step.retried)
            )
        })
        .collect();
    let moved: String = steps
        .iter()
        .map(|(stored, step)| format!(" WHEN '{}' THEN '{}'", stored.as_str(), step.state.as_str()))
        .collect();
    let stored = steps
        .iter()
        .map(|(stored, _)| format!("'{}'", stored.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    // `attempt` is assigned first: MySQL evaluates SET left to right, so it still sees the
    // stored state.
    Some(format!(
        "UPDATE tasks SET attempt = attempt + (CASE state{retried} ELSE 0 END), \
         state = (CASE state{moved} ELSE state END), updated_at = {now} \
         WHERE {rows} AND state IN ({stored})"
    ))
}

impl MySqlStore {
    /// Bring an apply's task rows along with its move from `from` to `to`, through the one task
    /// rule (`machine::task::task_after_move`), in one statement: the rule is tabulated for
    /// every known task state, and each stored state maps to its successor at once, so a task
    /// never takes two steps. A task state we cannot read matches no entry and is left as it is.
    pub(super) async fn sync_tasks(
        &self,
        tx: &mut Transaction<'_, MySql>,
        apply: ApplyId,
        from: ApplyState,
        to: ApplyState,
        now: &str,
    ) -> Result<(), Failure> {
        if let Some(sql) = task_sync_sql("apply_id = ?", from, to, now) {
            sqlx::query(&sql).bind(apply).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The store's own (unfenced) move of an apply, e.g. retry expiry: its operation row and
    /// task rows follow.
    pub(super) async fn mirror_operation(
        &self,
        tx: &mut Transaction<'_, MySql>,
        apply: ApplyId,
        from: ApplyState,
        to: ApplyState,
        now: &str,
    ) -> Result<(), Failure> {
        let sql =
            format!("UPDATE apply_operations SET state = ?, updated_at = {now} WHERE apply_id = ?");
        sqlx::query(&sql)
            .bind(to.as_str())
            .bind(apply)
            .execute(&mut **tx)
            .await?;
        self.sync_tasks(tx, apply, from, to, now).await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn log(
        &self,
        tx: &mut Transaction<'_, MySql>,
        apply: ApplyId,
        from: &str,
        to: ApplyState,
        epoch: u64,
        owner: Option<&str>,
        cause: &str,
        detail: Option<&str>,
        now: &str,
    ) -> Result<(), Failure> {
        let sql = format!(
            "INSERT INTO apply_logs (apply_id, from_state, to_state, lease_epoch, lease_owner, cause, detail, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, {now})"
        );
        sqlx::query(&sql)
            .bind(apply)
            .bind(from)
            .bind(to.as_str())
            .bind(epoch)
            .bind(owner)
            .bind(cause)
            .bind(detail)
            .execute(&mut **tx)
            .await?;
        let event = NewEvent::moved(Move {
            apply,
            operation: None,
            deployment: None,
            from,
            to,
            epoch,
            owner,
            cause,
            reason: detail,
        });
        self.record_event(tx, event, now).await
    }

    /// Settle a fenced write that matched 0 rows: the row is gone, or another epoch holds the
    /// apply or its operation row.
    pub(super) async fn zero_rows<'c, E>(&self, exec: E, lease: &Lease) -> Failure
    where
        E: Executor<'c, Database = MySql>,
    {
        let row = sqlx::query(
            "SELECT CAST(a.lease_epoch AS SIGNED) AS epoch, \
             (SELECT CAST(MIN(o.lease_epoch) AS SIGNED) FROM apply_operations o WHERE o.apply_id = a.id) AS op_min, \
             (SELECT CAST(MAX(o.lease_epoch) AS SIGNED) FROM apply_operations o WHERE o.apply_id = a.id) AS op_max \
             FROM applies a WHERE a.id = ?",
        )
        .bind(lease.apply)
        .fetch_optional(exec)
        .await;
        let row = match row {
            Err(e) => return Failure::Sql(e),
            Ok(None) => return Failure::Store(StoreError::RowGone(lease.apply)),
            Ok(Some(row)) => row,
        };
        let epochs = (|| -> Result<_, sqlx::Error> {
            Ok((
                row.try_get::<i64, _>("epoch")?,
                row.try_get::<Option<i64>, _>("op_min")?,
                row.try_get::<Option<i64>, _>("op_max")?,
            ))
        })();
        let (epoch, op_min, op_max) = match epochs {
            Ok(e) => e,
            Err(e) => return Failure::Sql(e),
        };
        let allowed = |e: Option<i64>| {
            e.is_some_and(|e| self.rules.write_allowed(e.max(0) as u64, lease.epoch))
        };
        // The operation lease fences operation writes: an operation row that does not carry this
        // epoch (or is missing) means the lease is not whole; fail closed.
        if !allowed(Some(epoch)) || !allowed(op_min) || !allowed(op_max) {
            return Failure::Store(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            });
        }
        // Every guarded write changes the row, so this means the row moved between the write
        // and the re-read; look again rather than guess.
        Failure::Retry(format!(
            "apply {}: fenced write matched no row",
            lease.apply
        ))
    }

    /// Lock the owned row for a fenced read-modify-write: gone and lost leases are errors.
    pub(super) async fn lock_owned(
        &self,
        tx: &mut Transaction<'_, MySql>,
        lease: &Lease,
    ) -> Result<RawState, Failure> {
        let row = sqlx::query(
            "SELECT state, engine, lease_epoch, database_name, environment, \
             CAST(cutover_policy IS NOT NULL AS SIGNED) AS is_rollout FROM applies WHERE id = ? FOR UPDATE",
        )
        .bind(lease.apply)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::RowGone(lease.apply))?;
        let epoch: u64 = row.try_get("lease_epoch")?;
        let is_rollout = row.try_get::<i64, _>("is_rollout")? != 0;
        // A rollout's apply epoch is its counter; the operation's own epoch fences (the caller
        // hands over to `rollout`).
        if !is_rollout && !self.rules.write_allowed(epoch, lease.epoch) {
            return Err(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            }
            .into());
        }
        Ok(RawState {
            is_rollout,
            state: row.try_get_unchecked("state")?,
            engine: row.try_get_unchecked("engine")?,
            target: Target {
                database: row.try_get_unchecked("database_name")?,
                environment: row.try_get_unchecked("environment")?,
            },
        })
    }

    /// Read the owned apply row (`lock` adds `FOR UPDATE`): gone and lost leases are errors.
    async fn read_owned<'c, E>(
        &self,
        exec: E,
        lease: &Lease,
        now: &str,
        lock: bool,
    ) -> Result<RawApply, Failure>
    where
        E: Executor<'c, Database = MySql>,
    {
        let sql = format!(
            "SELECT {} FROM applies a WHERE a.id = ?{}",
            apply_columns(now),
            if lock { " FOR UPDATE" } else { "" }
        );
        let row = sqlx::query(&sql)
            .bind(lease.apply)
            .fetch_optional(exec)
            .await?
            .ok_or(StoreError::RowGone(lease.apply))?;
        let raw = RawApply::read(&row)?;
        if !raw.is_rollout && !self.rules.write_allowed(raw.lease_epoch, lease.epoch) {
            return Err(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            }
            .into());
        }
        Ok(raw)
    }

    pub(super) async fn load_once(&self, lease: &Lease) -> Result<DriveInputs, Failure> {
        let now = self.now_sql();
        let raw = self.read_owned(&self.pool, lease, &now, false).await?;
        if raw.is_rollout {
            let mut tx = self.pool.begin().await?;
            let loaded = Loaded::read(self, &mut tx, lease.apply, &now)
                .await?
                .ok_or_else(|| Failure::Retry("apply stopped being a rollout".into()))?;
            let inputs = self.load_member(&mut tx, &loaded, lease).await?;
            tx.commit().await?;
            return Ok(inputs);
        }
        let parsed = self.parse(&raw)?;
        Ok(DriveInputs {
            revert_window_expired: self
                .rules
                .revert_window_expired(parsed.state, age_ms(raw.state_age_us)),
            record: parsed.record(&raw, parsed.state, raw.lease_epoch, raw.attempt),
            controls: parsed.controls,
            // The MySQL store holds applies of one operation only.
            cutover_open: true,
        })
    }

    /// A fenced move by the lease's owner: `write` (with the resume state) and `fail_apply`
    /// (with the reason, keeping the resume state, refusing a terminal row).
    pub(super) async fn owner_move_once(
        &self,
        lease: &Lease,
        mv: OwnerMove<'_>,
    ) -> Result<(), Failure> {
        let now = self.now_sql();
        let mut tx = self.pool.begin().await?;
        let current = self.lock_owned(&mut tx, lease).await?;
        if current.is_rollout {
            let loaded = self.read_rollout(&mut tx, lease.apply, &now).await?;
            self.member_owner_move(&mut tx, loaded, lease, mv).await?;
            tx.commit().await?;
            return Ok(());
        }
        // A row we cannot read is never rewritten.
        let from = ApplyState::from_str(&current.state)
            .map_err(|e| self.bad_row(lease.apply, "state", &current.state, e.to_string()))?;
        let (to, resume, reason) = match mv {
            OwnerMove::Write { to, resume, why } => (to, Some(resume), why),
            OwnerMove::Fail { reason } => {
                let engine = EngineKind::from_str(&current.engine).map_err(|e| {
                    self.bad_row(lease.apply, "engine", &current.engine, e.to_string())
                })?;
                let Some(to) = self.rules.fail_closed_move(engine, from) else {
                    return Err(StoreError::Refused(format!(
                        "apply {} is already {from}",
                        lease.apply
                    ))
                    .into());
                };
                (to, None, Some(reason))
            }
        };
        let entered = if from != to {
            format!(", state_entered_at = {now}")
        } else {
            String::new()
        };
        let error = if reason.is_some() {
            ", error_message = ?"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE applies SET state = ?{error}, updated_at = {now}, heartbeat_at = {now}, \
             write_seq = write_seq + 1{entered} WHERE id = ? AND lease_epoch = ?"
        );
        let mut q = sqlx::query(&sql).bind(to.as_str());
        if let Some(reason) = reason {
            q = q.bind(reason);
        }
        let done = q
            .bind(lease.apply)
            .bind(lease.epoch)
            .execute(&mut *tx)
            .await;
        match done {
            Ok(r) if r.rows_affected() == 1 => {}
            Ok(_) => return Err(self.zero_rows(&mut *tx, lease).await),
            Err(e) if is_duplicate_key(&e) => {
                let existing = self
                    .active_on_target(&mut tx, &current.target, Some(lease.apply))
                    .await?;
                return Err(StoreError::ActiveApplyExists {
                    target: current.target.to_string(),
                    existing,
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        }
        // The operation row is fenced by its own lease, which carries the apply's epoch.
        let resume_set = if resume.is_some() {
            "engine_resume_state = ?, "
        } else {
            ""
        };
        let error_set = if reason.is_some() {
            "error_message = ?, "
        } else {
            ""
        };
        let op = format!(
            "UPDATE apply_operations SET state = ?, {resume_set}{error_set}heartbeat_at = {now}, \
             updated_at = {now}, write_seq = write_seq + 1 WHERE apply_id = ? AND lease_epoch = ?"
        );
        let mut q = sqlx::query(&op).bind(to.as_str());
        if let Some(resume) = resume {
            q = q.bind(resume);
        }
        if let Some(reason) = reason {
            q = q.bind(reason);
        }
        let done = q
            .bind(lease.apply)
            .bind(lease.epoch)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            // Dropping the transaction rolls the apply write back.
            return Err(self.zero_rows(&mut *tx, lease).await);
        }
        self.sync_tasks(&mut tx, lease.apply, from, to, &now)
            .await?;
        if let Some(reason) = reason {
            sqlx::query(&format!(
                "UPDATE tasks SET error_message = ? WHERE apply_id = ? AND state IN ({})",
                TaskState::failure_sql_list()
            ))
            .bind(reason)
            .bind(lease.apply)
            .execute(&mut *tx)
            .await?;
        }
        if from != to {
            self.log(
                &mut tx,
                lease.apply,
                &current.state,
                to,
                lease.epoch,
                Some(&lease.owner),
                "write",
                reason,
                &now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Park the owned apply (see `Store::park`): its state, engine and options decide whether
    /// it parks and for how long (`waits::parks`, `Rules::park_wake_ms`); both rows release
    /// the lease and take the wake time in one transaction, fenced by the epoch.
    pub(super) async fn park_once(&self, lease: &Lease) -> Result<(), Failure> {
        let now = self.now_sql();
        let mut tx = self.pool.begin().await?;
        let raw = self.read_owned(&mut *tx, lease, &now, true).await?;
        if raw.is_rollout {
            let loaded = self.read_rollout(&mut tx, lease.apply, &now).await?;
            self.member_lease(&mut tx, loaded, lease, LeaseChange::Park, &now)
                .await?;
            tx.commit().await?;
            return Ok(());
        }
        let parsed = self.parse(&raw)?;
        if !crate::machine::waits::parks(parsed.engine, parsed.state, &parsed.options) {
            return Err(StoreError::Refused(format!(
                "apply {} in {} does not park",
                lease.apply, parsed.state
            ))
            .into());
        }
        let wake_ms = self
            .rules
            .park_wake_ms(parsed.state, age_ms(raw.state_age_us));
        let wake = format!(
            "({now} + INTERVAL {} MICROSECOND)",
            wake_ms.saturating_mul(1000)
        );
        let update = format!(
            "UPDATE applies a STRAIGHT_JOIN apply_operations o ON o.apply_id = a.id \
             SET a.lease_owner = NULL, a.heartbeat_at = NULL, a.parked_until = {wake}, \
             o.lease_owner = NULL, o.heartbeat_at = NULL, o.parked_until = {wake}, \
             a.write_seq = a.write_seq + 1, o.write_seq = o.write_seq + 1 \
             WHERE a.id = ? AND a.lease_epoch = ? AND o.lease_epoch = ?"
        );
        let done = sqlx::query(&update)
            .bind(lease.apply)
            .bind(lease.epoch)
            .bind(lease.epoch)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(self.zero_rows(&mut *tx, lease).await);
        }
        self.log(
            &mut tx,
            lease.apply,
            parsed.state.as_str(),
            parsed.state,
            lease.epoch,
            Some(&lease.owner),
            &format!("park for {wake_ms} ms"),
            None,
            &now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn finish_request_once(
        &self,
        lease: &Lease,
        op: ControlOp,
        status: ControlStatus,
        message: Option<&str>,
    ) -> Result<(), Failure> {
        let now = self.now_sql();
        let mut tx = self.pool.begin().await?;
        if self.lock_owned(&mut tx, lease).await?.is_rollout {
            let loaded = self.read_rollout(&mut tx, lease.apply, &now).await?;
            self.finish_member_request(&mut tx, loaded, lease, op, status, message)
                .await?;
            tx.commit().await?;
            return Ok(());
        }
        // Fenced on its own too (the check above is under the row lock; this holds without it).
        let sql = format!(
            "UPDATE apply_control_requests r STRAIGHT_JOIN applies a ON a.id = r.apply_id \
             SET r.status = ?, r.error_message = ?, r.updated_at = {now}, r.completed_at = {now} \
             WHERE r.apply_id = ? AND r.operation = ? AND r.status = ? AND a.lease_epoch = ?"
        );
        sqlx::query(&sql)
            .bind(status.as_str())
            .bind(message)
            .bind(lease.apply)
            .bind(op.as_str())
            .bind(ControlStatus::Pending.as_str())
            .bind(lease.epoch)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One UPDATE renews every lease: each apply row is fenced by its own epoch (a `CASE` on
    /// the id) and its operation row by the same epoch. When fewer rows changed than leases were
    /// given, one read names the leases lost.
    pub(super) async fn heartbeat_all_once(&self, leases: &[Lease]) -> Result<Vec<Lease>, Failure> {
        let now = self.now_sql();
        let ids = vec!["?"; leases.len()].join(", ");
        let cases = " WHEN ? THEN ?".repeat(leases.len());
        let sql = format!(
            "UPDATE applies a STRAIGHT_JOIN apply_operations o ON o.apply_id = a.id \
             SET a.heartbeat_at = {now}, o.heartbeat_at = {now}, \
             a.write_seq = a.write_seq + 1, o.write_seq = o.write_seq + 1 \
             WHERE a.id IN ({ids}) AND a.lease_epoch = (CASE a.id{cases} END) \
             AND o.lease_epoch = a.lease_epoch AND a.cutover_policy IS NULL"
        );
        let mut q = sqlx::query(&sql);
        for lease in leases {
            q = q.bind(lease.apply);
        }
        for lease in leases {
            q = q.bind(lease.apply).bind(lease.epoch);
        }
        let done = q.execute(&self.pool).await?;
        // Each renewed lease changes its apply row and its one operation row.
        if done.rows_affected() >= 2 * leases.len() as u64 {
            return Ok(Vec::new());
        }
        // A rollout's operation is fenced by its own epoch alone (its apply's epoch is the
        // counter): renew those here, in one statement.
        let pairs = vec!["(?, ?)"; leases.len()].join(", ");
        let members = format!(
            "UPDATE apply_operations o STRAIGHT_JOIN applies a ON a.id = o.apply_id \
             SET o.heartbeat_at = {now}, o.write_seq = o.write_seq + 1 \
             WHERE a.cutover_policy IS NOT NULL AND o.lease_epoch > 0 \
             AND (o.apply_id, o.lease_epoch) IN ({pairs})"
        );
        let mut q = sqlx::query(&members);
        for lease in leases {
            q = q.bind(lease.apply).bind(lease.epoch);
        }
        q.execute(&self.pool).await?;
        let read = format!(
            "SELECT a.id, CAST(a.cutover_policy IS NOT NULL AS SIGNED) AS is_rollout, \
             CAST(a.lease_epoch AS SIGNED) AS epoch, \
             (SELECT CAST(MIN(o.lease_epoch) AS SIGNED) FROM apply_operations o WHERE o.apply_id = a.id) AS op_min, \
             (SELECT CAST(MAX(o.lease_epoch) AS SIGNED) FROM apply_operations o WHERE o.apply_id = a.id) AS op_max \
             FROM applies a WHERE a.id IN ({ids})"
        );
        let mut q = sqlx::query(&read);
        for lease in leases {
            q = q.bind(lease.apply);
        }
        let mut epochs = std::collections::BTreeMap::new();
        let mut rollouts = std::collections::BTreeSet::new();
        for row in q.fetch_all(&self.pool).await? {
            if row.try_get::<i64, _>("is_rollout")? != 0 {
                rollouts.insert(row.try_get::<ApplyId, _>("id")?);
            }
            let id: ApplyId = row.try_get("id")?;
            let e: i64 = row.try_get("epoch")?;
            let min: Option<i64> = row.try_get("op_min")?;
            let max: Option<i64> = row.try_get("op_max")?;
            epochs.insert(id, (e, min, max));
        }
        // A rollout's lease holds while one of its operations carries the epoch.
        let mut held = std::collections::BTreeSet::new();
        if !rollouts.is_empty() {
            let mine: Vec<&Lease> = leases
                .iter()
                .filter(|l| rollouts.contains(&l.apply))
                .collect();
            let sql = format!(
                "SELECT apply_id, lease_epoch FROM apply_operations WHERE (apply_id, lease_epoch) IN ({})",
                vec!["(?, ?)"; mine.len()].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for lease in &mine {
                q = q.bind(lease.apply).bind(lease.epoch);
            }
            for row in q.fetch_all(&self.pool).await? {
                held.insert((
                    row.try_get::<ApplyId, _>("apply_id")?,
                    row.try_get::<u64, _>("lease_epoch")?,
                ));
            }
        }
        let lost = leases
            .iter()
            .filter(|lease| {
                if rollouts.contains(&lease.apply) {
                    return lease.epoch == 0 || !held.contains(&(lease.apply, lease.epoch));
                }
                let holds = |e: Option<i64>| {
                    e.is_some_and(|e| self.rules.write_allowed(e.max(0) as u64, lease.epoch))
                };
                !epochs
                    .get(&lease.apply)
                    .is_some_and(|(e, min, max)| holds(Some(*e)) && holds(*min) && holds(*max))
            })
            .cloned()
            .collect();
        Ok(lost)
    }

    /// A single fenced UPDATE of an apply and its operation row together (heartbeat, release),
    /// each row fenced by its own epoch; 0 rows is settled by a re-read. The apply is locked
    /// first (`STRAIGHT_JOIN`), the order every other write uses.
    pub(super) async fn fenced_once(
        &self,
        lease: &Lease,
        sets: &[(&str, &str)],
        change: LeaseChange,
    ) -> Result<(), Failure> {
        let both: Vec<String> = sets
            .iter()
            .flat_map(|(col, value)| [format!("a.{col} = {value}"), format!("o.{col} = {value}")])
            .collect();
        let sql = format!(
            "UPDATE applies a STRAIGHT_JOIN apply_operations o ON o.apply_id = a.id \
             SET {}, a.write_seq = a.write_seq + 1, o.write_seq = o.write_seq + 1 \
             WHERE a.id = ? AND a.lease_epoch = ? AND o.lease_epoch = ? AND a.cutover_policy IS NULL",
            both.join(", ")
        );
        let done = sqlx::query(&sql)
            .bind(lease.apply)
            .bind(lease.epoch)
            .bind(lease.epoch)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() >= 1 {
            return Ok(());
        }
        let now = self.now_sql();
        let mut tx = self.pool.begin().await?;
        if self.lock_owned(&mut tx, lease).await?.is_rollout {
            let loaded = self.read_rollout(&mut tx, lease.apply, &now).await?;
            self.member_lease(&mut tx, loaded, lease, change, &now)
                .await?;
            tx.commit().await?;
            return Ok(());
        }
        Err(self.zero_rows(&mut *tx, lease).await)
    }

    /// Rollout `id`, read in `tx` after its apply row was found to be one.
    pub(super) async fn read_rollout(
        &self,
        tx: &mut Transaction<'_, MySql>,
        id: ApplyId,
        now: &str,
    ) -> Result<Loaded, Failure> {
        Loaded::read(self, tx, id, now)
            .await?
            .ok_or_else(|| Failure::Retry(format!("apply {id} stopped being a rollout")))
    }
}

/// What an owner's fenced move writes besides the state.
#[derive(Clone, Copy)]
pub(super) enum OwnerMove<'a> {
    Write {
        to: ApplyState,
        resume: &'a str,
        why: Option<&'a str>,
    },
    Fail {
        reason: &'a str,
    },
}

pub(super) struct RawState {
    pub(super) is_rollout: bool,
    pub(super) state: String,
    pub(super) engine: String,
    pub(super) target: Target,
}
