//! Reading rows: the apply columns every claim and load decodes, the typed decoding, and the
//! inspection reads (tests, operators).

use std::sync::Arc;

use sqlx::mysql::MySqlRow;
use sqlx::Row;

use super::super::{ApplyRecord, ApplySpec, StoreError, Target};

use super::{age_ms, unavailable, MySqlStore};
use crate::machine::apply::{ApplyId, ApplySnapshot, ResumeState};
use crate::machine::{
    ApplyOptions, ApplyState, ClaimView, ControlOp, ControlStatus, EngineKind, PendingControls,
};

/// The apply columns every read uses, with ages computed by the database at `now`.
pub(super) fn apply_columns(now: &str) -> String {
    let pending = ControlStatus::Pending.as_str();
    let start = ControlOp::Start.as_str();
    format!(
        "a.id, a.state, a.engine, a.attempt, a.lease_epoch, a.lease_owner, \
         a.database_name, a.environment, a.options, a.ddl, a.ddl_fingerprint, \
         CAST(TIMESTAMPDIFF(MICROSECOND, a.heartbeat_at, {now}) AS SIGNED) AS hb_age_us, \
         CAST(TIMESTAMPDIFF(MICROSECOND, a.updated_at, {now}) AS SIGNED) AS upd_age_us, \
         CAST(TIMESTAMPDIFF(MICROSECOND, a.state_entered_at, {now}) AS SIGNED) AS state_age_us, \
         CAST(COALESCE(a.parked_until > {now}, 0) AS SIGNED) AS resting, \
         CAST(EXISTS (SELECT 1 FROM apply_operations o WHERE o.apply_id = a.id) \
              OR EXISTS (SELECT 1 FROM tasks t WHERE t.apply_id = a.id) AS SIGNED) AS has_children, \
         (SELECT GROUP_CONCAT(r.operation SEPARATOR ',') FROM apply_control_requests r \
           WHERE r.apply_id = a.id AND r.status = '{pending}') AS pending_ops, \
         CAST(EXISTS (SELECT 1 FROM apply_control_requests r WHERE r.apply_id = a.id \
           AND r.operation = '{start}' AND r.status = '{pending}' \
           AND (a.lease_acquired_at IS NULL OR r.updated_at > a.lease_acquired_at)) AS SIGNED) AS start_newer, \
         (SELECT o.engine_resume_state FROM apply_operations o WHERE o.apply_id = a.id \
           ORDER BY o.id LIMIT 1) AS resume, \
         CAST(COALESCE((SELECT MIN(o.id) FROM apply_operations o WHERE o.apply_id = a.id), 0) \
           AS UNSIGNED) AS operation_id, \
         CAST(a.cutover_policy IS NOT NULL AS SIGNED) AS is_rollout"
    )
}

/// An apply row as read, before any of its strings is trusted.
pub(super) struct RawApply {
    pub(super) id: ApplyId,
    pub(super) state: String,
    pub(super) engine: String,
    pub(super) attempt: u32,
    pub(super) lease_epoch: u64,
    pub(super) lease_owner: Option<String>,
    pub(super) database: String,
    pub(super) environment: String,
    pub(super) options: String,
    pub(super) ddl: String,
    pub(super) fingerprint: Option<String>,
    pub(super) hb_age_us: Option<i64>,
    pub(super) upd_age_us: i64,
    pub(super) state_age_us: i64,
    /// Parked, before its wake time (by the database clock).
    pub(super) resting: bool,
    pub(super) has_children: bool,
    pub(super) pending_ops: Option<String>,
    pub(super) start_newer: bool,
    pub(super) resume: Option<String>,
    /// The apply's operation row (0 while it has none).
    pub(super) operation_id: u64,
    /// A rollout: its operations hold their own leases (`super::rollout`).
    pub(super) is_rollout: bool,
}

impl RawApply {
    pub(super) fn read(row: &MySqlRow) -> Result<RawApply, sqlx::Error> {
        // Strings are decoded without sqlx's type check: binary collations and MariaDB's JSON
        // (LONGTEXT utf8mb4_bin) carry the BINARY flag, which the check refuses for `String`.
        Ok(RawApply {
            id: row.try_get("id")?,
            state: row.try_get_unchecked("state")?,
            engine: row.try_get_unchecked("engine")?,
            attempt: row.try_get("attempt")?,
            lease_epoch: row.try_get("lease_epoch")?,
            lease_owner: row.try_get_unchecked("lease_owner")?,
            database: row.try_get_unchecked("database_name")?,
            environment: row.try_get_unchecked("environment")?,
            options: row.try_get_unchecked("options")?,
            ddl: row.try_get_unchecked("ddl")?,
            fingerprint: row.try_get_unchecked("ddl_fingerprint")?,
            hb_age_us: row.try_get("hb_age_us")?,
            upd_age_us: row.try_get::<Option<i64>, _>("upd_age_us")?.unwrap_or(0),
            state_age_us: row.try_get::<Option<i64>, _>("state_age_us")?.unwrap_or(0),
            resting: row.try_get::<Option<i64>, _>("resting")?.unwrap_or(0) != 0,
            has_children: row.try_get::<Option<i64>, _>("has_children")?.unwrap_or(0) != 0,
            pending_ops: row.try_get_unchecked("pending_ops")?,
            start_newer: row.try_get::<Option<i64>, _>("start_newer")?.unwrap_or(0) != 0,
            resume: row.try_get_unchecked("resume")?,
            operation_id: row.try_get_unchecked("operation_id")?,
            is_rollout: row.try_get::<Option<i64>, _>("is_rollout")?.unwrap_or(0) != 0,
        })
    }
}

/// The operation columns of the operation claim, with ages computed by the database at `now`.
pub(super) fn operation_columns(now: &str) -> String {
    let pending = ControlStatus::Pending.as_str();
    let start = ControlOp::Start.as_str();
    format!(
        "o.id AS op_id, o.state AS op_state, o.attempt AS op_attempt, o.lease_owner AS op_owner, \
         CAST(TIMESTAMPDIFF(MICROSECOND, o.heartbeat_at, {now}) AS SIGNED) AS op_hb_age_us, \
         CAST(TIMESTAMPDIFF(MICROSECOND, o.updated_at, {now}) AS SIGNED) AS op_upd_age_us, \
         CAST(COALESCE(o.parked_until > {now}, 0) AS SIGNED) AS op_resting, \
         CAST(EXISTS (SELECT 1 FROM apply_control_requests r WHERE r.apply_id = o.apply_id \
           AND r.operation = '{start}' AND r.status = '{pending}' \
           AND (o.lease_acquired_at IS NULL OR r.updated_at > o.lease_acquired_at)) AS SIGNED) AS op_start_newer"
    )
}

/// An operation row as read by the operation claim.
pub(super) struct RawOperation {
    pub(super) id: u64,
    pub(super) state: String,
    pub(super) attempt: u32,
    pub(super) lease_owner: Option<String>,
    pub(super) hb_age_us: Option<i64>,
    pub(super) upd_age_us: i64,
    pub(super) resting: bool,
    pub(super) start_newer: bool,
}

impl RawOperation {
    pub(super) fn read(row: &MySqlRow) -> Result<RawOperation, sqlx::Error> {
        Ok(RawOperation {
            id: row.try_get("op_id")?,
            state: row.try_get_unchecked("op_state")?,
            attempt: row.try_get("op_attempt")?,
            lease_owner: row.try_get_unchecked("op_owner")?,
            hb_age_us: row.try_get("op_hb_age_us")?,
            upd_age_us: row.try_get::<Option<i64>, _>("op_upd_age_us")?.unwrap_or(0),
            resting: row.try_get::<Option<i64>, _>("op_resting")?.unwrap_or(0) != 0,
            start_newer: row
                .try_get::<Option<i64>, _>("op_start_newer")?
                .unwrap_or(0)
                != 0,
        })
    }

    /// The operation's own lease and state, with its parent's requests (the start compared with
    /// the operation's lease); `asks_now` is `Rules::acts_now` for the operation's state.
    pub(super) fn view(
        &self,
        state: ApplyState,
        parent_controls: PendingControls,
        asks_now: bool,
    ) -> ClaimView {
        let mut controls = parent_controls;
        controls.start_newer_than_lease = controls.start && self.start_newer;
        ClaimView {
            state,
            leased: self.lease_owner.is_some(),
            heartbeat_age_ms: self.hb_age_us.map(age_ms),
            attempt: self.attempt,
            updated_age_ms: age_ms(self.upd_age_us),
            has_children: true,
            controls,
            resting: self.resting,
            asks_now,
        }
    }
}

/// The typed part of an apply row.
pub(super) struct Parsed {
    pub(super) state: ApplyState,
    pub(super) engine: EngineKind,
    pub(super) options: ApplyOptions,
    pub(super) ddl: Vec<String>,
    pub(super) resume: ResumeState,
    pub(super) controls: PendingControls,
}

impl Parsed {
    pub(super) fn view(&self, raw: &RawApply, rules: &crate::machine::Rules) -> ClaimView {
        let mut controls = self.controls;
        controls.start_newer_than_lease = controls.start && raw.start_newer;
        ClaimView {
            state: self.state,
            leased: raw.lease_owner.is_some(),
            heartbeat_age_ms: raw.hb_age_us.map(age_ms),
            attempt: raw.attempt,
            updated_age_ms: age_ms(raw.upd_age_us),
            has_children: raw.has_children,
            controls,
            resting: raw.resting,
            asks_now: rules.acts_now(self.engine, self.state, &controls, &self.options),
        }
    }

    pub(super) fn record(
        &self,
        raw: &RawApply,
        state: ApplyState,
        epoch: u64,
        attempt: u32,
    ) -> ApplyRecord {
        ApplyRecord {
            row: ApplySnapshot {
                id: raw.id,
                operation: raw.operation_id,
                engine: self.engine,
                state,
                epoch,
                attempt,
                options: self.options,
                resume: self.resume,
            },
            spec: Arc::new(ApplySpec {
                identifier: identifier(raw.id),
                target: Target {
                    database: raw.database.clone(),
                    environment: raw.environment.clone(),
                },
                deployment: String::new(),
                ddl: self.ddl.clone(),
                fingerprint: raw.fingerprint.clone(),
            }),
        }
    }
}

pub(super) fn identifier(id: ApplyId) -> String {
    format!("apply-{id}")
}

/// An apply row as stored, for inspection (tests, operators). Times are microseconds since the
/// Unix epoch on the database clock (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApply {
    pub id: ApplyId,
    pub database: String,
    pub environment: String,
    pub engine: String,
    pub state: String,
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_epoch: u64,
    pub error_message: Option<String>,
    pub resume: Option<String>,
    pub lease_acquired_at_us: Option<i64>,
    pub heartbeat_at_us: Option<i64>,
    pub updated_at_us: i64,
    pub state_entered_at_us: i64,
}

/// An operation row as stored. Times as in [`StoredApply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOperation {
    pub id: u64,
    pub apply: ApplyId,
    pub state: String,
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_epoch: u64,
    pub lease_acquired_at_us: Option<i64>,
    pub heartbeat_at_us: Option<i64>,
    pub updated_at_us: i64,
}

/// A task row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTask {
    pub apply: ApplyId,
    pub seq: u32,
    pub state: String,
    pub attempt: u32,
    /// The table its statement touches (`None` for tasks stored before it was recorded).
    pub table: Option<String>,
    pub error_message: Option<String>,
}

/// A control request row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    pub status: String,
    pub error_message: Option<String>,
}

/// One audit entry of `apply_logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    pub apply: ApplyId,
    /// The rollout operation the entry is about (`None`: the apply itself).
    pub operation: Option<u64>,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub owner: Option<String>,
    pub cause: String,
    /// Why, for a move into a failed state.
    pub detail: Option<String>,
}

impl MySqlStore {
    // ---- Inspection (tests, operators): plain reads, no fencing.

    /// Every apply row, by id.
    pub async fn stored_applies(&self) -> Result<Vec<StoredApply>, StoreError> {
        self.stored_applies_from(0).await
    }

    /// The apply rows with `id >= first`, by id (a watcher of recent applies skips history).
    pub async fn stored_applies_from(
        &self,
        first: ApplyId,
    ) -> Result<Vec<StoredApply>, StoreError> {
        let us = |col: &str| {
            format!("CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', a.{col}) AS SIGNED) AS {col}")
        };
        let sql = format!(
            "SELECT a.id, a.database_name, a.environment, a.engine, a.state, a.attempt, a.lease_owner, \
             a.lease_epoch, a.error_message, {}, {}, {}, {}, \
             (SELECT o.engine_resume_state FROM apply_operations o WHERE o.apply_id = a.id ORDER BY o.id LIMIT 1) AS resume \
             FROM applies a WHERE a.id >= ? ORDER BY a.id",
            us("lease_acquired_at"),
            us("heartbeat_at"),
            us("updated_at"),
            us("state_entered_at"),
        );
        let rows = sqlx::query(&sql)
            .bind(first)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(StoredApply {
                    id: r.try_get("id")?,
                    database: r.try_get_unchecked("database_name")?,
                    environment: r.try_get_unchecked("environment")?,
                    engine: r.try_get_unchecked("engine")?,
                    state: r.try_get_unchecked("state")?,
                    attempt: r.try_get("attempt")?,
                    lease_owner: r.try_get_unchecked("lease_owner")?,
                    lease_epoch: r.try_get("lease_epoch")?,
                    error_message: r.try_get_unchecked("error_message")?,
                    resume: r.try_get_unchecked("resume")?,
                    lease_acquired_at_us: r.try_get("lease_acquired_at")?,
                    heartbeat_at_us: r.try_get("heartbeat_at")?,
                    updated_at_us: r.try_get::<Option<i64>, _>("updated_at")?.unwrap_or(0),
                    state_entered_at_us: r
                        .try_get::<Option<i64>, _>("state_entered_at")?
                        .unwrap_or(0),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    /// Every operation row, by id.
    pub async fn stored_operations(&self) -> Result<Vec<StoredOperation>, StoreError> {
        let us = |col: &str| {
            format!("CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', o.{col}) AS SIGNED) AS {col}")
        };
        let sql = format!(
            "SELECT o.id, o.apply_id, o.state, o.attempt, o.lease_owner, o.lease_epoch, {}, {}, {} \
             FROM apply_operations o ORDER BY o.id",
            us("lease_acquired_at"),
            us("heartbeat_at"),
            us("updated_at"),
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(StoredOperation {
                    id: r.try_get("id")?,
                    apply: r.try_get("apply_id")?,
                    state: r.try_get_unchecked("state")?,
                    attempt: r.try_get("attempt")?,
                    lease_owner: r.try_get_unchecked("lease_owner")?,
                    lease_epoch: r.try_get("lease_epoch")?,
                    lease_acquired_at_us: r.try_get("lease_acquired_at")?,
                    heartbeat_at_us: r.try_get("heartbeat_at")?,
                    updated_at_us: r.try_get::<Option<i64>, _>("updated_at")?.unwrap_or(0),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    /// Every task row, by apply and position.
    pub async fn stored_tasks(&self) -> Result<Vec<StoredTask>, StoreError> {
        let rows = sqlx::query(
            "SELECT apply_id, seq, state, attempt, table_name, error_message FROM tasks ORDER BY apply_id, seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(StoredTask {
                    apply: r.try_get("apply_id")?,
                    seq: r.try_get("seq")?,
                    state: r.try_get_unchecked("state")?,
                    attempt: r.try_get("attempt")?,
                    table: r.try_get_unchecked("table_name")?,
                    error_message: r.try_get_unchecked("error_message")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    pub async fn stored_request(
        &self,
        apply: ApplyId,
        op: ControlOp,
    ) -> Result<Option<StoredRequest>, StoreError> {
        let row = sqlx::query("SELECT status, error_message FROM apply_control_requests WHERE apply_id = ? AND operation = ?")
            .bind(apply)
            .bind(op.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            Ok(StoredRequest {
                status: r.try_get_unchecked("status")?,
                error_message: r.try_get_unchecked("error_message")?,
            })
        })
        .transpose()
        .map_err(unavailable)
    }

    /// The audit log, oldest first.
    pub async fn stored_logs(&self) -> Result<Vec<StoredLog>, StoreError> {
        self.stored_logs_from(0).await
    }

    /// The audit entries of applies with `id >= first_apply`, oldest first.
    pub async fn stored_logs_from(
        &self,
        first_apply: ApplyId,
    ) -> Result<Vec<StoredLog>, StoreError> {
        let rows = sqlx::query(
            "SELECT apply_id, apply_operation_id, from_state, to_state, lease_epoch, lease_owner, cause, detail FROM apply_logs \
             WHERE apply_id >= ? ORDER BY id",
        )
        .bind(first_apply)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(StoredLog {
                    apply: r.try_get("apply_id")?,
                    operation: r.try_get("apply_operation_id")?,
                    from: r.try_get_unchecked("from_state")?,
                    to: r.try_get_unchecked("to_state")?,
                    epoch: r.try_get("lease_epoch")?,
                    owner: r.try_get_unchecked("lease_owner")?,
                    cause: r.try_get_unchecked("cause")?,
                    detail: r.try_get_unchecked("detail")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    /// This store's "now" (database clock plus any test shift), in microseconds since the epoch.
    pub async fn now_us(&self) -> Result<i64, StoreError> {
        let sql = format!(
            "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {}) AS SIGNED)",
            self.now_sql()
        );
        sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }
}
