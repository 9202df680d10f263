//! Rollouts in the MySQL store: an apply whose change runs as several operations (one per
//! deployment and table step, `machine::rollout`), as the memory store runs them.
//!
//! Every rollout write is one transaction that locks the apply row first (the order every write
//! of this store uses), then reads all its operations and requests ([`Loaded`]), decides with
//! the rules, and writes what changed: the operation rows, their tasks, the audit rows, the
//! requests it settles, and the apply's state — only ever `rollout::derive_parent` of its
//! operations, in the same transaction as the move that changed it. Each operation holds its
//! own lease, drawn from the apply's epoch counter (`applies.lease_epoch`), so `(apply, epoch)`
//! names one operation; every owner write is fenced by it. While the rollout is active it holds
//! one `deployment_reservations` row per deployment, whose primary key keeps one active rollout
//! per (database, environment, deployment); a duplicate key there refuses whatever would make
//! it active again.

mod entry;

pub(super) use entry::MemberClaim;
mod submit;

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::mysql::MySqlConnection;
use sqlx::{Executor, Row};

use super::super::Target;
use super::claim_tx::sql_text;
use super::outbox::insert_event_sql;
use super::{age_ms, is_duplicate_key, Failure, MySqlStore};
use crate::machine::apply::ApplyId;
use crate::machine::rollout::{
    requests, CutoverGate, CutoverPolicy, Member, OnFailure, RolloutPolicy, StartGate,
};
use crate::machine::{
    ApplyOptions, ApplyState, ClaimView, ControlOp, ControlStatus, EngineKind, OperationClaimView,
    PendingControls, Rules, TaskState,
};
use crate::store::webhooks::{Move, NewEvent};

/// One operation of a loaded rollout.
pub(super) struct LoadedOp {
    pub(super) id: u64,
    pub(super) deployment: String,
    pub(super) deployment_index: u32,
    pub(super) step: u32,
    pub(super) identifier: String,
    pub(super) fingerprint: Option<String>,
    pub(super) state: ApplyState,
    pub(super) resume: String,
    pub(super) attempt: u32,
    pub(super) lease_owner: Option<String>,
    pub(super) lease_epoch: u64,
    pub(super) hb_age_us: Option<i64>,
    pub(super) upd_age_us: i64,
    pub(super) state_age_us: i64,
    pub(super) resting: bool,
    /// The pending start was (re-)issued after this operation's lease was taken.
    pub(super) start_newer: bool,
    pub(super) failed_closed: bool,
    /// Request name → the issue this operation did its part of.
    pub(super) acked: BTreeMap<String, u64>,
}

/// A rollout read under its apply row's lock: the apply, its operations in rollout order, its
/// requests; and the writes decided so far.
pub(super) struct Loaded {
    /// The rules the store runs with (the rollout rules are reached through them).
    pub(super) rules: Rules,
    pub(super) id: ApplyId,
    pub(super) engine: EngineKind,
    pub(super) options: ApplyOptions,
    pub(super) state: ApplyState,
    pub(super) stored_state: String,
    /// The apply's epoch counter.
    pub(super) counter: u64,
    pub(super) target: Target,
    pub(super) policy: RolloutPolicy,
    pub(super) ops: Vec<LoadedOp>,
    pub(super) pending: PendingControls,
    /// Request → its current issue number.
    pub(super) issues: BTreeMap<ControlOp, u64>,
    /// Every pending request, also those `PendingControls` has no field for (a release).
    pending_ops: std::collections::BTreeSet<ControlOp>,
    /// Whether the rollout held its deployments when it was read.
    active_before: bool,
    policy_before: RolloutPolicy,
    counter_before: u64,
    writes: Vec<String>,
    now: String,
}

/// Something else holds a deployment this rollout would take again.
pub(super) struct Busy {
    pub(super) deployment: String,
    pub(super) existing: ApplyId,
}

fn bad(apply: ApplyId, column: &'static str, detail: impl ToString) -> Failure {
    Failure::Store(super::super::StoreError::BadRow {
        apply,
        column,
        detail: detail.to_string(),
    })
}

/// The stored name of a cutover policy, or `None` when it is not one we know (a rollout whose
/// policy we cannot read is never driven).
fn read_cutover(text: &str) -> Option<CutoverPolicy> {
    CutoverPolicy::ALL
        .iter()
        .copied()
        .find(|p| p.as_str() == text)
}

impl Loaded {
    /// Read rollout `id` in the open transaction on `conn`, locking its apply row. Its
    /// operations are read without locks: every writer of them holds the apply row first, but
    /// for the heartbeat, which touches only the heartbeat (a claim that reads one just before
    /// it lands takes a lease at the staleness bound, and the old owner's next write is fenced).
    /// `None` when the apply is not a rollout.
    pub(super) async fn read(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        id: ApplyId,
        now: &str,
    ) -> Result<Option<Loaded>, Failure> {
        let row = sqlx::query(
            "SELECT state, engine, options, lease_epoch, database_name, environment, \
             cutover_policy, on_failure, max_drivers, released, held \
             FROM applies WHERE id = ? FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(super::super::StoreError::RowGone(id))?;
        let Some(cutover_text) = row.try_get_unchecked::<Option<String>, _>("cutover_policy")?
        else {
            return Ok(None);
        };
        let stored_state: String = row.try_get_unchecked("state")?;
        let state = ApplyState::from_str(&stored_state)
            .map_err(|e| store.bad_row(id, "state", &stored_state, e.to_string()))?;
        let engine_text: String = row.try_get_unchecked("engine")?;
        let engine = EngineKind::from_str(&engine_text)
            .map_err(|e| store.bad_row(id, "engine", &engine_text, e.to_string()))?;
        let options_text: String = row.try_get_unchecked("options")?;
        let options: ApplyOptions = serde_json::from_str(&options_text)
            .map_err(|e| store.bad_row(id, "options", &options_text, e.to_string()))?;
        let cutover = read_cutover(&cutover_text).ok_or_else(|| {
            store.bad_row(
                id,
                "cutover_policy",
                &cutover_text,
                "unknown cutover policy".into(),
            )
        })?;
        let on_failure: Option<String> = row.try_get_unchecked("on_failure")?;
        let policy = RolloutPolicy {
            cutover,
            // An unknown stored value fails closed (halt).
            on_failure: OnFailure::read_stored(on_failure.as_deref().unwrap_or("")),
            max_drivers: row.try_get("max_drivers")?,
            released: row.try_get::<i8, _>("released")? != 0,
            held: row.try_get::<i8, _>("held")? != 0,
        };
        let counter: u64 = row.try_get("lease_epoch")?;
        let target = Target {
            database: row.try_get_unchecked("database_name")?,
            environment: row.try_get_unchecked("environment")?,
        };
        let pending_status = ControlStatus::Pending.as_str();
        let mut pending = PendingControls::default();
        let mut issues = BTreeMap::new();
        let mut pending_ops = std::collections::BTreeSet::new();
        for r in sqlx::query(
            "SELECT operation, status, issue FROM apply_control_requests WHERE apply_id = ?",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        {
            let op_text: String = r.try_get_unchecked("operation")?;
            let status: String = r.try_get_unchecked("status")?;
            // An unknown request can ask for nothing we know: ignored, as on any apply.
            let Ok(op) = ControlOp::from_str(&op_text) else {
                continue;
            };
            if status == pending_status {
                pending.set(op, true);
                pending_ops.insert(op);
            }
            issues.insert(op, r.try_get::<u64, _>("issue")?);
        }
        let sql = format!(
            "SELECT o.id, o.deployment, o.deployment_index, o.step, o.identifier, o.ddl_fingerprint, \
             o.state, o.engine_resume_state, o.attempt, o.lease_owner, o.lease_epoch, o.failed_closed, o.acked, \
             CAST(TIMESTAMPDIFF(MICROSECOND, o.heartbeat_at, {now}) AS SIGNED) AS hb_age_us, \
             CAST(TIMESTAMPDIFF(MICROSECOND, o.updated_at, {now}) AS SIGNED) AS upd_age_us, \
             CAST(TIMESTAMPDIFF(MICROSECOND, COALESCE(o.state_entered_at, o.created_at), {now}) AS SIGNED) AS state_age_us, \
             CAST(COALESCE(o.parked_until > {now}, 0) AS SIGNED) AS resting, \
             CAST(EXISTS (SELECT 1 FROM apply_control_requests r WHERE r.apply_id = o.apply_id \
               AND r.operation = '{start}' AND r.status = '{pending_status}' \
               AND (o.lease_acquired_at IS NULL OR r.updated_at > o.lease_acquired_at)) AS SIGNED) AS start_newer \
             FROM apply_operations o WHERE o.apply_id = ? \
             ORDER BY o.deployment_index, o.step, o.id",
            start = ControlOp::Start.as_str(),
        );
        let mut ops = Vec::new();
        for r in sqlx::query(&sql).bind(id).fetch_all(&mut *conn).await? {
            let state_text: String = r.try_get_unchecked("state")?;
            let state = ApplyState::from_str(&state_text).map_err(|e| {
                store.bad_row(id, "apply_operations.state", &state_text, e.to_string())
            })?;
            let acked_text: Option<String> = r.try_get_unchecked("acked")?;
            let acked = match acked_text.as_deref() {
                None => BTreeMap::new(),
                Some(text) => {
                    serde_json::from_str(text).map_err(|e| bad(id, "apply_operations.acked", e))?
                }
            };
            let op_id: u64 = r.try_get("id")?;
            ops.push(LoadedOp {
                id: op_id,
                deployment: r.try_get_unchecked("deployment")?,
                deployment_index: r.try_get("deployment_index")?,
                step: r.try_get("step")?,
                identifier: r
                    .try_get_unchecked::<Option<String>, _>("identifier")?
                    .unwrap_or_else(|| format!("apply-{id}-op{op_id}")),
                fingerprint: r.try_get_unchecked("ddl_fingerprint")?,
                state,
                resume: r.try_get_unchecked("engine_resume_state")?,
                attempt: r.try_get("attempt")?,
                lease_owner: r.try_get_unchecked("lease_owner")?,
                lease_epoch: r.try_get("lease_epoch")?,
                hb_age_us: r.try_get("hb_age_us")?,
                upd_age_us: r.try_get::<Option<i64>, _>("upd_age_us")?.unwrap_or(0),
                state_age_us: r.try_get::<Option<i64>, _>("state_age_us")?.unwrap_or(0),
                resting: r.try_get::<Option<i64>, _>("resting")?.unwrap_or(0) != 0,
                start_newer: r.try_get::<Option<i64>, _>("start_newer")?.unwrap_or(0) != 0,
                failed_closed: r.try_get::<i8, _>("failed_closed")? != 0,
                acked,
            });
        }
        if ops.is_empty() {
            return Err(bad(id, "apply_operations", "a rollout without operations"));
        }
        Ok(Some(Loaded {
            rules: store.rules,
            id,
            engine,
            options,
            state,
            stored_state,
            counter,
            target,
            policy,
            ops,
            pending,
            issues,
            pending_ops,
            active_before: state.is_active(),
            policy_before: policy,
            counter_before: counter,
            writes: Vec::new(),
            now: now.to_string(),
        }))
    }

    pub(super) fn members(&self) -> Vec<Member> {
        self.ops
            .iter()
            .map(|o| Member {
                deployment: o.deployment_index,
                step: o.step,
                state: o.state,
                failed_closed: o.failed_closed,
            })
            .collect()
    }

    /// The requests as operation `i` sees them (`rollout::requests::pending_for`).
    pub(super) fn pending_for(&self, rules: &Rules, i: usize) -> PendingControls {
        let op = &self.ops[i];
        requests::pending_for(
            rules,
            self.engine,
            &self.options,
            &self.policy,
            &self.members(),
            i,
            &self.pending,
            |req| {
                op.acked.get(req.as_str()).copied().is_some()
                    && op.acked.get(req.as_str()).copied() == self.issues.get(&req).copied()
            },
        )
    }

    pub(super) fn cutover_open(&self, i: usize) -> bool {
        self.rules
            .rollout_cutover_gate(&self.policy, &self.members(), i)
            == CutoverGate::Open
    }

    /// Operation `i` as the claim arms see it: its own lease and state for the operation and
    /// for the apply arm that moves it, and whether its start gate is open.
    pub(super) fn member_view(&self, rules: &Rules, i: usize) -> OperationClaimView {
        let view = self.op_view(rules, i);
        OperationClaimView {
            op: view,
            parent: view,
            start_open: rules.rollout_start_gate(&self.policy, &self.members(), i)
                == StartGate::Open,
        }
    }

    pub(super) fn op_view(&self, rules: &Rules, i: usize) -> ClaimView {
        let op = &self.ops[i];
        let mut controls = self.pending_for(rules, i);
        controls.start_newer_than_lease = controls.start && op.start_newer;
        ClaimView {
            state: op.state,
            leased: op.lease_owner.is_some(),
            heartbeat_age_ms: op.hb_age_us.map(age_ms),
            attempt: op.attempt,
            updated_age_ms: age_ms(op.upd_age_us),
            has_children: true,
            controls,
            resting: op.resting,
            asks_now: rules.acts_now(self.engine, op.state, &controls, &self.options),
        }
    }

    /// The operation a lease holds: none holds that epoch any more, so its owner was displaced.
    pub(super) fn owned(&self, epoch: u64) -> Result<usize, Failure> {
        self.ops
            .iter()
            .position(|o| o.lease_epoch == epoch && epoch > 0)
            .ok_or(Failure::Store(super::super::StoreError::LeaseLost {
                apply: self.id,
                epoch,
            }))
    }

    pub(super) fn push_sql(&mut self, sql: String) {
        self.writes.push(sql);
    }

    /// Set columns of operation `i` (values are SQL expressions built from our own names,
    /// numbers, the time expression, or `sql_text`).
    pub(super) fn set_op(&mut self, i: usize, sets: &str) {
        let sql = format!(
            "UPDATE apply_operations SET {sets}, write_seq = write_seq + 1 WHERE id = {}",
            self.ops[i].id
        );
        self.push_sql(sql);
    }

    /// An audit row of operation `i` (or of the apply, `None`); `detail`: why, for a move into
    /// a failed state.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn audit(
        &mut self,
        op: Option<usize>,
        from: &str,
        to: ApplyState,
        epoch: u64,
        owner: Option<&str>,
        cause: &str,
        detail: Option<&str>,
    ) {
        let op_id = op.map_or("NULL".to_string(), |i| self.ops[i].id.to_string());
        let sql = format!(
            "INSERT INTO apply_logs (apply_id, apply_operation_id, from_state, to_state, lease_epoch, lease_owner, cause, detail, created_at) \
             VALUES ({}, {op_id}, {}, '{}', {epoch}, {}, {}, {}, {})",
            self.id,
            sql_text(from),
            to.as_str(),
            owner.map_or("NULL".to_string(), sql_text),
            sql_text(cause),
            detail.map_or("NULL".to_string(), sql_text),
            self.now,
        );
        self.push_sql(sql);
        let event = NewEvent::moved(Move {
            apply: self.id,
            operation: op.map(|i| self.ops[i].id),
            deployment: op.map(|i| self.ops[i].deployment.as_str()),
            from,
            to,
            epoch,
            owner,
            cause,
            reason: detail,
        });
        if let Some(event) = event {
            let sql = insert_event_sql(&event, &self.now, None);
            self.push_sql(sql);
        }
    }

    /// Move operation `i` to `to`; its tasks follow through the task rule.
    pub(super) fn move_op(&mut self, i: usize, to: ApplyState) {
        let from = self.ops[i].state;
        let now = self.now.clone();
        if from != to {
            if let Some(sql) = task_sync_for_operation(self.ops[i].id, from, to, &now) {
                self.push_sql(sql);
            }
            self.ops[i].state = to;
            self.ops[i].state_age_us = 0;
            self.set_op(
                i,
                &format!(
                    "state = '{}', state_entered_at = {now}, updated_at = {now}",
                    to.as_str()
                ),
            );
        } else {
            self.set_op(i, &format!("updated_at = {now}"));
        }
    }

    /// A failed state's reason on operation `i`, its failed task rows, and the apply (naming
    /// the operation); queued after the move, so the tasks are already in their failed state.
    pub(super) fn record_reason(&mut self, i: usize, why: &str) {
        let text = sql_text(why);
        self.set_op(i, &format!("error_message = {text}"));
        self.push_sql(format!(
            "UPDATE tasks SET error_message = {text} WHERE apply_operation_id = {} \
             AND state IN ({})",
            self.ops[i].id,
            TaskState::failure_sql_list()
        ));
        let parent = format!("{}: {why}", self.ops[i].identifier);
        self.push_sql(format!(
            "UPDATE applies SET error_message = {}, write_seq = write_seq + 1 WHERE id = {}",
            sql_text(&parent),
            self.id
        ));
    }

    /// A fenced move by the lease's owner: heartbeats the operation, moves it, audits it.
    pub(super) fn owner_move(
        &mut self,
        i: usize,
        to: ApplyState,
        epoch: u64,
        owner: &str,
        cause: &str,
        detail: Option<&str>,
    ) {
        let from = self.ops[i].state;
        let now = self.now.clone();
        self.set_op(i, &format!("heartbeat_at = {now}"));
        self.move_op(i, to);
        if from != to {
            self.audit(
                Some(i),
                from.as_str(),
                to,
                epoch,
                Some(owner),
                cause,
                detail,
            );
        }
    }

    /// A request's row settled now.
    pub(super) fn settle_request(
        &mut self,
        op: ControlOp,
        status: ControlStatus,
        message: Option<&str>,
    ) {
        if !self.pending_ops.remove(&op) {
            return;
        }
        self.pending.set(op, false);
        let now = self.now.clone();
        let sql = format!(
            "UPDATE apply_control_requests SET status = '{}', error_message = {}, updated_at = {now}, \
             completed_at = {now} WHERE apply_id = {} AND operation = '{}' AND status = '{}'",
            status.as_str(),
            message.map_or("NULL".to_string(), sql_text),
            self.id,
            op.as_str(),
            ControlStatus::Pending.as_str(),
        );
        self.push_sql(sql);
    }

    /// Operation `i` did its part of the current issue of `op`.
    pub(super) fn acknowledge(&mut self, i: usize, op: ControlOp) {
        let issue = self.issues.get(&op).copied().unwrap_or(0);
        self.ops[i].acked.insert(op.as_str().to_string(), issue);
        let json = serde_json::to_string(&self.ops[i].acked).unwrap_or_else(|_| "{}".into());
        self.set_op(i, &format!("acked = {}", sql_text(&json)));
    }

    /// A pending start lifts a stop's hold once no stop is pending. A stopped rollout holds
    /// none of its deployments: if another apply holds one now, the start fails instead.
    pub(super) async fn lift_hold(&mut self, conn: &mut MySqlConnection) -> Result<(), Failure> {
        if !requests::hold_lifts(&self.policy, &self.pending) {
            return Ok(());
        }
        if !self.state.is_active() {
            if let Some(busy) = self.busy_place(conn).await? {
                self.refuse_start(&busy);
                return Ok(());
            }
        }
        self.policy.held = false;
        Ok(())
    }

    /// A deployment of this rollout another active apply reserves.
    async fn busy_place(&self, conn: &mut MySqlConnection) -> Result<Option<Busy>, Failure> {
        let deployments: Vec<&str> = self.ops.iter().map(|o| o.deployment.as_str()).collect();
        let sql = format!(
            "SELECT deployment, apply_id FROM deployment_reservations WHERE database_name = ? \
             AND environment = ? AND apply_id <> ? AND deployment IN ({}) LIMIT 1",
            vec!["?"; deployments.len()].join(", ")
        );
        let mut q = sqlx::query(&sql)
            .bind(&self.target.database)
            .bind(&self.target.environment)
            .bind(self.id);
        for d in &deployments {
            q = q.bind(*d);
        }
        Ok(match q.fetch_optional(&mut *conn).await? {
            Some(r) => Some(Busy {
                deployment: r.try_get_unchecked("deployment")?,
                existing: r.try_get("apply_id")?,
            }),
            None => None,
        })
    }

    /// The pending start fails: a deployment is busy.
    pub(super) fn refuse_start(&mut self, busy: &Busy) {
        let message = format!(
            "start refused: another active apply ({}) exists on {}@{}",
            busy.existing, self.target, busy.deployment
        );
        self.settle_request(ControlOp::Start, ControlStatus::Failed, Some(&message));
    }

    /// Derive the apply's state from its operations (settling a stop whose effect holds for the
    /// whole rollout), wake the operations parked at a cutover gate that opened, and audit a
    /// change as `derived`.
    pub(super) async fn rederive(&mut self, conn: &mut MySqlConnection) -> Result<(), Failure> {
        let now = self.now.clone();
        for i in requests::wake_at_gate(&self.rules, &self.policy, &self.members()) {
            if self.ops[i].resting {
                self.ops[i].resting = false;
                self.set_op(i, &format!("parked_until = {now}"));
            }
        }
        let (mut to, stop_done) = requests::derive_settled(
            &self.rules,
            &self.policy,
            &self.members(),
            self.pending.stop,
        );
        if stop_done {
            self.settle_request(ControlOp::Stop, ControlStatus::Completed, None);
            self.lift_hold(conn).await?;
            to = self.rules.derive_rollout(&self.policy, &self.members());
        }
        if to != self.state {
            let from = self.stored_state.clone();
            self.state = to;
            self.stored_state = to.as_str().to_string();
            self.push_sql(format!(
                "UPDATE applies SET state = '{}', state_entered_at = {now}, updated_at = {now}, \
                 write_seq = write_seq + 1 WHERE id = {}",
                to.as_str(),
                self.id
            ));
            let counter = self.counter;
            self.audit(None, &from, to, counter, None, "derived", None);
        }
        Ok(())
    }

    /// Write everything decided, in the open transaction: first the deployments, when the
    /// rollout becomes active again (a duplicate key there means one is busy: nothing else is
    /// written and the caller decides), then the rows; the reservations go when it becomes
    /// inactive.
    pub(super) async fn flush(
        mut self,
        conn: &mut MySqlConnection,
    ) -> Result<Result<(), Busy>, Failure> {
        let active = self.state.is_active();
        if active && !self.active_before {
            let deployments: std::collections::BTreeSet<&str> =
                self.ops.iter().map(|o| o.deployment.as_str()).collect();
            let sql = format!(
                "INSERT INTO deployment_reservations (database_name, environment, deployment, apply_id) VALUES {}",
                vec!["(?, ?, ?, ?)"; deployments.len()].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for d in deployments {
                q = q
                    .bind(&self.target.database)
                    .bind(&self.target.environment)
                    .bind(d)
                    .bind(self.id);
            }
            match q.execute(&mut *conn).await {
                Ok(_) => {}
                Err(e) if is_duplicate_key(&e) => {
                    let busy = self.busy_place(conn).await?;
                    return match busy {
                        Some(busy) => Ok(Err(busy)),
                        None => Err(Failure::Retry(format!(
                            "a deployment of apply {} was released meanwhile",
                            self.id
                        ))),
                    };
                }
                Err(e) => return Err(e.into()),
            }
        }
        if self.policy != self.policy_before || self.counter != self.counter_before {
            self.writes.push(format!(
                "UPDATE applies SET released = {}, held = {}, lease_epoch = {}, write_seq = write_seq + 1 WHERE id = {}",
                u8::from(self.policy.released),
                u8::from(self.policy.held),
                self.counter,
                self.id
            ));
        }
        if !active && self.active_before {
            self.writes.push(format!(
                "DELETE FROM deployment_reservations WHERE apply_id = {}",
                self.id
            ));
        }
        if !self.writes.is_empty() {
            conn.execute(sqlx::raw_sql(&self.writes.join("; "))).await?;
        }
        Ok(Ok(()))
    }
}

/// The statement that moves the task rows of one operation along with its move.
fn task_sync_for_operation(op: u64, from: ApplyState, to: ApplyState, now: &str) -> Option<String> {
    super::writes::task_sync_sql(&format!("apply_operation_id = {op}"), from, to, now)
}
