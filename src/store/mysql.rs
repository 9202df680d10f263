//! The production store: MySQL 8 or MariaDB 10.6+ through sqlx, with the semantics of the
//! reference [`super::memory::MemoryStore`] (one conformance suite in `tests/` runs both).
//!
//! - **Claims** run in one READ COMMITTED transaction: candidates come from small index ranges
//!   built from `machine`'s claim classes (the `IN (…)` lists come from [`Rules::states_in`]), so
//!   rows under a live lease are never walked; then `SELECT … ORDER BY id LIMIT 1 FOR UPDATE SKIP
//!   LOCKED` over a prefilter from the same classes locks the first one, [`Rules::matching_arm`]
//!   confirms it on ages the database computed, its new state comes from [`TABLE`], and a
//!   guarded UPDATE takes the lease with a new epoch. Candidates and prefilter may only be wider
//!   than the arms, never narrower.
//! - **Operation claims** (O1–O5, [`Rules::matching_operation_arm`]) take operation rows in
//!   `(created_at, id)` order, locking each with its parent; the parent is claimed by the apply
//!   arm that matches it, and both rows take the same lease at one epoch. The operation row's
//!   epoch fences the operation writes; heartbeats and releases update both rows at once.
//! - **Task rows** follow every state change of their apply, in its transaction, through
//!   `machine::task::task_after_move`.
//! - **Fencing**: every owner write carries `WHERE id = ? AND lease_epoch = ?` and always changes
//!   the row (`write_seq + 1`, `NOW(6)`), so one row means success under both the rows-matched
//!   (sqlx) and rows-changed semantics; 0 rows is settled by a re-read (lease lost or row gone).
//! - **Time** is the database clock only: times are written as `NOW(6)` (UTC session) and ages are
//!   `TIMESTAMPDIFF(MICROSECOND, …)` on the server. The application clock is never compared.
//! - **One active apply per target** is a UNIQUE index over a generated column that is NULL for
//!   terminal states (see `migrations/`), so a second active row fails with a duplicate key
//!   whatever the interleaving; that error is mapped to `ActiveApplyExists` or, on a
//!   `stopped` + start claim, to failing the start request.
//! - **Bad rows**: a row whose state (or engine, options, resume state) cannot be read is
//!   reported with its id and value, skipped by claims, and never rewritten.
//!
//! Test clock: [`MySqlStore::advance_clock`] shifts every time expression of this store
//! (`NOW(6) + INTERVAL n MICROSECOND`), so the conformance suite can drive the database-clock
//! store and the manual-clock memory store with the same steps; [`MySqlStore::freeze_clock`]
//! pins it to one instant, so a test can place a heartbeat exactly on a bound. Production never
//! calls either; the expression is then exactly `NOW(6)`.

use std::collections::BTreeSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Executor, MySql, Row, Transaction};

use super::{
    validate_new_apply, ApplyRecord, ApplySpec, Claimed, DriveInputs, Lease, NewApply,
    RequestOutcome, Store, StoreError, Target,
};
use crate::machine::task::task_after_move;
use crate::machine::{
    ApplyOptions, ApplyState, ClaimClass, ClaimView, ClaimedVia, ControlOp, ControlStatus,
    EngineKind, OperationArm, OperationClaimView, PendingControls, Rules, TaskState,
};
use crate::worker::{ApplyId, ApplySnapshot, ResumeState};

/// The embedded schema migrations (`applyd migrate` applies them).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

const ER_DUP_ENTRY: u16 = 1062;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;
/// How often a transaction that lost a deadlock or lock wait is retried from the start.
const MAX_TRIES: u32 = 5;
/// Candidates a claim reads per round before locking one: enough that concurrent claimers, who
/// read the same list, each find an unlocked one.
const CANDIDATES: usize = 32;

/// Why one attempt at a store operation ended without a result.
enum Failure {
    /// A definite answer for the caller.
    Store(StoreError),
    Sql(sqlx::Error),
    /// A race the transaction cannot settle by itself; try again from the start.
    Retry(String),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

fn mysql_code(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

fn is_duplicate_key(e: &sqlx::Error) -> bool {
    mysql_code(e) == Some(ER_DUP_ENTRY)
}

/// `'a', 'b'` for an SQL `IN (…)` list, or `None` for an empty list (which SQL rejects). The
/// strings are `machine`'s own names, never user input.
fn in_list(states: &[ApplyState]) -> Option<String> {
    if states.is_empty() {
        return None;
    }
    Some(
        states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Microseconds (database clock) to the milliseconds the rules speak; a negative age (a clock
/// step backwards) reads as zero, as the memory store's saturating subtraction does.
fn age_ms(us: i64) -> u64 {
    (us.max(0) / 1000) as u64
}

/// The apply columns every read uses, with ages computed by the database at `now`.
fn apply_columns(now: &str) -> String {
    let pending = ControlStatus::Pending.as_str();
    let start = ControlOp::Start.as_str();
    format!(
        "a.id, a.state, a.engine, a.attempt, a.lease_epoch, a.lease_owner, \
         a.database_name, a.environment, a.options, a.ddl, \
         CAST(TIMESTAMPDIFF(MICROSECOND, a.heartbeat_at, {now}) AS SIGNED) AS hb_age_us, \
         CAST(TIMESTAMPDIFF(MICROSECOND, a.updated_at, {now}) AS SIGNED) AS upd_age_us, \
         CAST(TIMESTAMPDIFF(MICROSECOND, a.state_entered_at, {now}) AS SIGNED) AS state_age_us, \
         CAST(EXISTS (SELECT 1 FROM apply_operations o WHERE o.apply_id = a.id) \
              OR EXISTS (SELECT 1 FROM tasks t WHERE t.apply_id = a.id) AS SIGNED) AS has_children, \
         (SELECT GROUP_CONCAT(r.operation SEPARATOR ',') FROM apply_control_requests r \
           WHERE r.apply_id = a.id AND r.status = '{pending}') AS pending_ops, \
         CAST(EXISTS (SELECT 1 FROM apply_control_requests r WHERE r.apply_id = a.id \
           AND r.operation = '{start}' AND r.status = '{pending}' \
           AND (a.lease_acquired_at IS NULL OR r.updated_at > a.lease_acquired_at)) AS SIGNED) AS start_newer, \
         (SELECT o.engine_resume_state FROM apply_operations o WHERE o.apply_id = a.id \
           ORDER BY o.id LIMIT 1) AS resume"
    )
}

/// An apply row as read, before any of its strings is trusted.
struct RawApply {
    id: ApplyId,
    state: String,
    engine: String,
    attempt: u32,
    lease_epoch: u64,
    lease_owner: Option<String>,
    database: String,
    environment: String,
    options: String,
    ddl: String,
    hb_age_us: Option<i64>,
    upd_age_us: i64,
    state_age_us: i64,
    has_children: bool,
    pending_ops: Option<String>,
    start_newer: bool,
    resume: Option<String>,
}

impl RawApply {
    fn read(row: &MySqlRow) -> Result<RawApply, sqlx::Error> {
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
            hb_age_us: row.try_get("hb_age_us")?,
            upd_age_us: row.try_get::<Option<i64>, _>("upd_age_us")?.unwrap_or(0),
            state_age_us: row.try_get::<Option<i64>, _>("state_age_us")?.unwrap_or(0),
            has_children: row.try_get::<Option<i64>, _>("has_children")?.unwrap_or(0) != 0,
            pending_ops: row.try_get_unchecked("pending_ops")?,
            start_newer: row.try_get::<Option<i64>, _>("start_newer")?.unwrap_or(0) != 0,
            resume: row.try_get_unchecked("resume")?,
        })
    }
}

/// The operation columns of the operation claim, with ages computed by the database at `now`.
fn operation_columns(now: &str) -> String {
    let pending = ControlStatus::Pending.as_str();
    let start = ControlOp::Start.as_str();
    format!(
        "o.id AS op_id, o.state AS op_state, o.attempt AS op_attempt, o.lease_owner AS op_owner, \
         CAST(TIMESTAMPDIFF(MICROSECOND, o.heartbeat_at, {now}) AS SIGNED) AS op_hb_age_us, \
         CAST(TIMESTAMPDIFF(MICROSECOND, o.updated_at, {now}) AS SIGNED) AS op_upd_age_us, \
         CAST(EXISTS (SELECT 1 FROM apply_control_requests r WHERE r.apply_id = o.apply_id \
           AND r.operation = '{start}' AND r.status = '{pending}' \
           AND (o.lease_acquired_at IS NULL OR r.updated_at > o.lease_acquired_at)) AS SIGNED) AS op_start_newer"
    )
}

/// An operation row as read by the operation claim.
struct RawOperation {
    id: u64,
    state: String,
    attempt: u32,
    lease_owner: Option<String>,
    hb_age_us: Option<i64>,
    upd_age_us: i64,
    start_newer: bool,
}

impl RawOperation {
    fn read(row: &MySqlRow) -> Result<RawOperation, sqlx::Error> {
        Ok(RawOperation {
            id: row.try_get("op_id")?,
            state: row.try_get_unchecked("op_state")?,
            attempt: row.try_get("op_attempt")?,
            lease_owner: row.try_get_unchecked("op_owner")?,
            hb_age_us: row.try_get("op_hb_age_us")?,
            upd_age_us: row.try_get::<Option<i64>, _>("op_upd_age_us")?.unwrap_or(0),
            start_newer: row
                .try_get::<Option<i64>, _>("op_start_newer")?
                .unwrap_or(0)
                != 0,
        })
    }

    /// The operation's own lease and state, with its parent's requests (the start compared with
    /// the operation's lease).
    fn view(&self, state: ApplyState, parent_controls: PendingControls) -> ClaimView {
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
        }
    }
}

/// The typed part of an apply row.
struct Parsed {
    state: ApplyState,
    engine: EngineKind,
    options: ApplyOptions,
    ddl: Vec<String>,
    resume: ResumeState,
    controls: PendingControls,
}

impl Parsed {
    fn view(&self, raw: &RawApply) -> ClaimView {
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
        }
    }

    fn record(&self, raw: &RawApply, state: ApplyState, epoch: u64, attempt: u32) -> ApplyRecord {
        ApplyRecord {
            row: ApplySnapshot {
                id: raw.id,
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
                ddl: self.ddl.clone(),
            }),
        }
    }
}

fn identifier(id: ApplyId) -> String {
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
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub owner: Option<String>,
    pub cause: String,
}

pub struct MySqlStore {
    pool: MySqlPool,
    rules: Rules,
    /// Test-only shift of this store's database clock, in microseconds (0 in production); with
    /// `clock_frozen`, the frozen instant in microseconds since the Unix epoch.
    clock_offset_us: AtomicI64,
    clock_frozen: AtomicBool,
    /// Bad rows already reported, so a row skipped by every claim is logged once.
    reported: Mutex<BTreeSet<(ApplyId, &'static str, String)>>,
}

impl MySqlStore {
    /// Connect with a small pool whose sessions use READ COMMITTED and UTC.
    pub async fn connect(url: &str, rules: Rules) -> Result<MySqlStore, StoreError> {
        let options = MySqlConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad database url: {e}")))?;
        MySqlStore::connect_with(options, rules, 16).await
    }

    pub async fn connect_with(
        options: MySqlConnectOptions,
        rules: Rules,
        max_connections: u32,
    ) -> Result<MySqlStore, StoreError> {
        let pool = pool_options(max_connections)
            .connect_with(options.timezone(Some("+00:00".to_string())))
            .await
            .map_err(|e| StoreError::Unavailable(format!("connect: {e}")))?;
        Ok(MySqlStore::from_pool(pool, rules))
    }

    /// Use an existing pool. Its sessions must be READ COMMITTED with time_zone '+00:00' (as
    /// [`pool_options`] sets up).
    pub fn from_pool(pool: MySqlPool, rules: Rules) -> MySqlStore {
        MySqlStore {
            pool,
            rules,
            clock_offset_us: AtomicI64::new(0),
            clock_frozen: AtomicBool::new(false),
            reported: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Apply the embedded migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrate: {e}")))
    }

    /// Test-only: move this store's view of the database clock forward by `ms` (see the module
    /// documentation). Every time the store writes or compares is `NOW(6)` plus the total shift.
    pub fn advance_clock(&self, ms: u64) {
        self.clock_offset_us
            .fetch_add((ms as i64).saturating_mul(1000), Ordering::SeqCst);
    }

    /// Test-only: stop this store's clock at `at_us` microseconds since the Unix epoch (UTC);
    /// [`Self::advance_clock`] then moves the frozen instant.
    pub fn freeze_clock(&self, at_us: i64) {
        self.clock_offset_us.store(at_us, Ordering::SeqCst);
        self.clock_frozen.store(true, Ordering::SeqCst);
    }

    /// The store's "now" as an SQL expression.
    fn now_sql(&self) -> String {
        let us = self.clock_offset_us.load(Ordering::SeqCst);
        if self.clock_frozen.load(Ordering::SeqCst) {
            return format!("(TIMESTAMP'1970-01-01 00:00:00' + INTERVAL {us} MICROSECOND)");
        }
        match us {
            0 => "NOW(6)".to_string(),
            us => format!("(NOW(6) + INTERVAL {us} MICROSECOND)"),
        }
    }

    /// Report a row that cannot be read: once per (row, column, value), at warn level.
    fn bad_row(
        &self,
        apply: ApplyId,
        column: &'static str,
        value: &str,
        detail: String,
    ) -> StoreError {
        let first = self
            .reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((apply, column, value.to_string()));
        if first {
            tracing::warn!(apply, column, value, %detail, "unreadable apply row: skipped by claims, left as it is");
        }
        StoreError::BadRow {
            apply,
            column,
            detail,
        }
    }

    fn parse(&self, raw: &RawApply) -> Result<Parsed, StoreError> {
        let state = ApplyState::from_str(&raw.state)
            .map_err(|e| self.bad_row(raw.id, "state", &raw.state, e.to_string()))?;
        let engine = EngineKind::from_str(&raw.engine)
            .map_err(|e| self.bad_row(raw.id, "engine", &raw.engine, e.to_string()))?;
        let options: ApplyOptions = serde_json::from_str(&raw.options)
            .map_err(|e| self.bad_row(raw.id, "options", &raw.options, e.to_string()))?;
        let ddl: Vec<String> = serde_json::from_str(&raw.ddl)
            .map_err(|e| self.bad_row(raw.id, "ddl", &raw.ddl, e.to_string()))?;
        let resume: ResumeState = match &raw.resume {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| self.bad_row(raw.id, "engine_resume_state", text, e.to_string()))?,
            None => ResumeState::default(),
        };
        let mut controls = PendingControls::default();
        for op in raw
            .pending_ops
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
        {
            match ControlOp::from_str(op) {
                Ok(op) => controls.set(op, true),
                // An unknown request is ignored (it can ask for nothing we know), not fatal.
                Err(e) => {
                    self.bad_row(
                        raw.id,
                        "apply_control_requests.operation",
                        op,
                        e.to_string(),
                    );
                }
            }
        }
        Ok(Parsed {
            state,
            engine,
            options,
            ddl,
            resume,
            controls,
        })
    }

    /// Run one store operation, retrying it from the start when it lost a deadlock or a lock
    /// wait (the transaction was rolled back whole, so a retry is safe).
    async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let detail = match attempt().await {
                Ok(v) => return Ok(v),
                Err(Failure::Store(e)) => return Err(e),
                Err(Failure::Sql(e)) => {
                    let again = matches!(
                        mysql_code(&e),
                        Some(ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT)
                    );
                    if !again {
                        return Err(StoreError::Unavailable(format!("{what}: {e}")));
                    }
                    e.to_string()
                }
                Err(Failure::Retry(why)) => why,
            };
            if tries >= MAX_TRIES {
                return Err(StoreError::Unavailable(format!(
                    "{what}: gave up after {tries} tries: {detail}"
                )));
            }
            tracing::debug!(what, tries, %detail, "retrying");
        }
    }

    /// The prefilter of the claim query: a superset of the rows some arm matches, built from the
    /// claim classes. The exact decision is `Rules::matching_arm` on the row.
    fn claim_prefilter(&self, now: &str) -> String {
        let rules = &self.rules;
        let p = &rules.params;
        let pending = ControlStatus::Pending.as_str();
        // Correlated `(SELECT 1 … LIMIT 1) IS NOT NULL` rather than `EXISTS`: MariaDB turns an
        // EXISTS in WHERE into a semi-join that materialises the whole child table per claim.
        let request = |ops: &str| {
            format!(
                "(SELECT 1 FROM apply_control_requests r WHERE r.apply_id = a.id \
                 AND r.status = '{pending}'{ops} LIMIT 1) IS NOT NULL"
            )
        };
        let children =
            "((SELECT 1 FROM apply_operations o WHERE o.apply_id = a.id LIMIT 1) IS NOT NULL \
                        OR (SELECT 1 FROM tasks t WHERE t.apply_id = a.id LIMIT 1) IS NOT NULL)";
        let mut arms = Vec::new();
        if let Some(states) = in_list(&rules.states_in(ClaimClass::PendingQueue)) {
            arms.push(format!("(a.state IN ({states}) AND {children})"));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
            // Stale or released lease (A2), or a pending start that may hand the lease off (A6).
            let start = request(&format!(
                " AND r.operation = '{}'",
                ControlOp::Start.as_str()
            ));
            arms.push(format!(
                "(a.state IN ({states}) AND (a.lease_owner IS NULL OR a.heartbeat_at IS NULL \
                 OR TIMESTAMPDIFF(MICROSECOND, a.heartbeat_at, {now}) >= {stale} OR {start}))",
                stale = p.stale_after_ms.saturating_mul(1000),
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::RetryPath)) {
            arms.push(format!(
                "(a.state IN ({states}) AND a.attempt < {budget} \
                 AND TIMESTAMPDIFF(MICROSECOND, a.updated_at, {now}) < {fresh})",
                budget = p.retry_budget,
                fresh = p.retry_freshness_ms.saturating_mul(1000),
            ));
        }
        let mut held = rules.states_in(ClaimClass::StartHeld);
        held.extend(rules.states_in(ClaimClass::HumanHeld));
        if let Some(states) = in_list(&held) {
            arms.push(format!("(a.state IN ({states}) AND {})", request("")));
        }
        // Unknown strings come through so that they are reported; they are never claimed.
        if let Some(known) = in_list(ApplyState::ALL) {
            arms.push(format!("a.state NOT IN ({known})"));
        }
        arms.join(" OR ")
    }

    /// The prefilter of the operation claim over `o` (operation) and `a` (its parent), built
    /// from the claim classes like [`Self::claim_prefilter`]: a superset of the pairs some
    /// operation arm matches; `Rules::matching_operation_arm` decides.
    fn operation_prefilter(&self, now: &str) -> String {
        let rules = &self.rules;
        let p = &rules.params;
        let pending = ControlStatus::Pending.as_str();
        let request = |op: ControlOp| {
            format!(
                "(SELECT 1 FROM apply_control_requests r WHERE r.apply_id = o.apply_id \
                 AND r.status = '{pending}' AND r.operation = '{}' LIMIT 1)",
                op.as_str()
            )
        };
        let stale = p.stale_after_ms.saturating_mul(1000);
        let lease_free = |t: &str| {
            format!(
                "({t}.lease_owner IS NULL OR {t}.heartbeat_at IS NULL \
                 OR TIMESTAMPDIFF(MICROSECOND, {t}.heartbeat_at, {now}) >= {stale})"
            )
        };
        let start = request(ControlOp::Start);
        let mut arms = Vec::new();
        if let Some(states) = in_list(&rules.states_in(ClaimClass::PendingQueue)) {
            // O1: no pending stop.
            arms.push(format!(
                "(o.state IN ({states}) AND {} IS NULL)",
                request(ControlOp::Stop)
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
            // O2 (stale or released), O4 (a pending start may hand the lease off).
            arms.push(format!(
                "(o.state IN ({states}) AND ({} OR {start} IS NOT NULL))",
                lease_free("o")
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StartHeld)) {
            // O3.
            arms.push(format!("(o.state IN ({states}) AND {start} IS NOT NULL)"));
        }
        if let Some(retry) = in_list(&rules.states_in(ClaimClass::RetryPath)) {
            // O5: the parent retries within budget and freshness, or the parent is stale.
            let mut parent = vec![format!(
                "(a.state IN ({retry}) AND a.attempt < {budget} \
                 AND TIMESTAMPDIFF(MICROSECOND, a.updated_at, {now}) < {fresh})",
                budget = p.retry_budget,
                fresh = p.retry_freshness_ms.saturating_mul(1000),
            )];
            if let Some(inflight) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
                parent.push(format!("(a.state IN ({inflight}) AND {})", lease_free("a")));
            }
            arms.push(format!(
                "(o.state IN ({retry}) AND ({}))",
                parent.join(" OR ")
            ));
        }
        // Unknown strings come through so that they are reported; they are never claimed.
        if let Some(known) = in_list(ApplyState::ALL) {
            arms.push(format!(
                "o.state NOT IN ({known}) OR a.state NOT IN ({known})"
            ));
        }
        arms.join(" OR ")
    }

    /// Candidate applies after `after`, in id order: a superset of the rows some apply arm
    /// matches, found through small index ranges built from the claim classes (the pending
    /// queue, free or stale leases of in-flight states, the retry path, applies with a pending
    /// request, unknown states). Rows under a live lease are never read, so the cost of a claim
    /// follows the claimable rows, not the work in flight. A plain (non-locking) read: the
    /// locking read that follows re-checks every candidate.
    async fn apply_candidates(
        &self,
        tx: &mut Transaction<'_, MySql>,
        now: &str,
        after: ApplyId,
    ) -> Result<Vec<ApplyId>, Failure> {
        let rules = &self.rules;
        let cutoff = self.stale_cutoff(now);
        let mut parts = Vec::new();
        let mut binds = 0;
        let by_state = |states: &str, extra: &str| {
            format!(
                "(SELECT id FROM applies FORCE INDEX (ix_applies_state) WHERE state IN ({states}){extra} \
                 AND id > ? ORDER BY id LIMIT {CANDIDATES})"
            )
        };
        if let Some(states) = in_list(&rules.states_in(ClaimClass::PendingQueue)) {
            parts.push(by_state(&states, ""));
            binds += 1;
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
            parts.push(format!(
                "(SELECT id FROM applies FORCE INDEX (ix_applies_lease) WHERE state IN ({states}) \
                 AND (lease_hb IS NULL OR lease_hb <= {cutoff}) AND id > ? ORDER BY id LIMIT {CANDIDATES})"
            ));
            binds += 1;
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::RetryPath)) {
            parts.push(by_state(&states, ""));
            binds += 1;
        }
        // DISTINCT: each part yields up to CANDIDATES distinct applies, so the smallest
        // CANDIDATES ids of the union are exactly the next ones in id order. An apply with two
        // pending requests would otherwise take two of its part's places and cut it short, and
        // the applies past that cut would be skipped by this round.
        parts.push(format!(
            "(SELECT DISTINCT apply_id AS id FROM apply_control_requests FORCE INDEX (ix_apply_control_requests_status) \
             WHERE status = '{}' AND apply_id > ? ORDER BY apply_id LIMIT {CANDIDATES})",
            ControlStatus::Pending.as_str()
        ));
        binds += 1;
        if let Some(known) = in_list(ApplyState::ALL) {
            parts.push(format!(
                "(SELECT id FROM applies FORCE INDEX (ix_applies_state) WHERE state NOT IN ({known}) \
                 AND id > ? ORDER BY id LIMIT {CANDIDATES})"
            ));
            binds += 1;
        }
        let sql = format!(
            "SELECT DISTINCT id FROM ({}) c ORDER BY id LIMIT {CANDIDATES}",
            parts.join(" UNION ALL ")
        );
        let mut q = sqlx::query_scalar::<_, u64>(&sql);
        for _ in 0..binds {
            q = q.bind(after);
        }
        Ok(q.fetch_all(&mut **tx).await?)
    }

    /// `now - stale_after` as an SQL expression (a lease whose heartbeat is at or before it is
    /// stale, exactly as `TIMESTAMPDIFF(…) >= stale_after`).
    fn stale_cutoff(&self, now: &str) -> String {
        format!(
            "({now} - INTERVAL {} MICROSECOND)",
            self.rules.params.stale_after_ms.saturating_mul(1000)
        )
    }

    async fn claim_once(&self, owner: &str) -> Result<Option<Claimed>, Failure> {
        let now = self.now_sql();
        // The first lockable candidate in id order that the prefilter still admits: `FOR UPDATE
        // SKIP LOCKED` makes concurrent claimers take different rows, and the PK order means
        // only that one row stays locked.
        let marks = vec!["?"; CANDIDATES].join(", ");
        let select = format!(
            "SELECT {cols} FROM applies a WHERE a.id IN ({marks}) AND a.id > ? AND ({filter}) \
             ORDER BY a.id LIMIT 1 FOR UPDATE SKIP LOCKED",
            cols = apply_columns(&now),
            filter = self.claim_prefilter(&now),
        );
        let mut tx = self.pool.begin().await?;
        let mut after: ApplyId = 0;
        loop {
            let ids = self.apply_candidates(&mut tx, &now, after).await?;
            let Some(last) = ids.last().copied() else {
                // Commit, not roll back: a refused start (below) must stay refused.
                tx.commit().await?;
                return Ok(None);
            };
            let mut cursor = after;
            loop {
                let mut q = sqlx::query(&select);
                for i in 0..CANDIDATES {
                    // Id 0 never exists: it pads the list.
                    q = q.bind(ids.get(i).copied().unwrap_or(0));
                }
                let Some(row) = q.bind(cursor).fetch_optional(&mut *tx).await? else {
                    break;
                };
                let raw = RawApply::read(&row)?;
                cursor = raw.id;
                let Ok(parsed) = self.parse(&raw) else {
                    continue;
                };
                let Some(arm) = self.rules.matching_arm(&parsed.view(&raw)) else {
                    continue;
                };
                let via = ClaimedVia::Apply(arm);
                if let Some(claimed) = self.take(&mut tx, &raw, &parsed, via, owner, &now).await? {
                    tx.commit().await?;
                    return Ok(Some(claimed));
                }
            }
            after = last;
        }
    }

    /// Candidate operations after `(after_us, after_id)`, in `(created_at, id)` order: a superset
    /// of the operations some operation arm matches, found as [`Self::apply_candidates`] finds
    /// applies (pending, free or stale leases, retry path, a pending request on the parent,
    /// unknown states). Each entry is `(created_at in µs, id)`.
    async fn operation_candidates(
        &self,
        tx: &mut Transaction<'_, MySql>,
        now: &str,
        after: (i64, u64),
    ) -> Result<Vec<(i64, u64)>, Failure> {
        let rules = &self.rules;
        let cutoff = self.stale_cutoff(now);
        let created = "CAST(TIMESTAMPDIFF(MICROSECOND, TIMESTAMP'1970-01-01 00:00:00', o.created_at) AS SIGNED)";
        let after_sql = "(o.created_at > (TIMESTAMP'1970-01-01 00:00:00' + INTERVAL ? MICROSECOND) \
             OR (o.created_at = (TIMESTAMP'1970-01-01 00:00:00' + INTERVAL ? MICROSECOND) AND o.id > ?))";
        let part = |index: &str, cond: &str| {
            format!(
                "(SELECT {created} AS c_us, o.id FROM apply_operations o FORCE INDEX ({index}) \
                 WHERE {cond} AND {after_sql} ORDER BY o.created_at, o.id LIMIT {CANDIDATES})"
            )
        };
        let mut parts = Vec::new();
        if let Some(states) = in_list(&rules.states_in(ClaimClass::PendingQueue)) {
            parts.push(part(
                "ix_apply_operations_state",
                &format!("o.state IN ({states})"),
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
            parts.push(part(
                "ix_apply_operations_lease",
                &format!(
                    "o.state IN ({states}) AND (o.lease_hb IS NULL OR o.lease_hb <= {cutoff})"
                ),
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::RetryPath)) {
            parts.push(part(
                "ix_apply_operations_state",
                &format!("o.state IN ({states})"),
            ));
        }
        // DISTINCT, as for apply candidates: one operation per place, however many requests.
        parts.push(format!(
            "(SELECT DISTINCT {created} AS c_us, o.id FROM apply_control_requests r \
             FORCE INDEX (ix_apply_control_requests_status) \
             STRAIGHT_JOIN apply_operations o ON o.apply_id = r.apply_id \
             WHERE r.status = '{}' AND {after_sql} ORDER BY c_us, o.id LIMIT {CANDIDATES})",
            ControlStatus::Pending.as_str()
        ));
        if let Some(known) = in_list(ApplyState::ALL) {
            parts.push(part(
                "ix_apply_operations_state",
                &format!("o.state NOT IN ({known})"),
            ));
        }
        let sql = format!(
            "SELECT DISTINCT c_us, id FROM ({}) c ORDER BY c_us, id LIMIT {CANDIDATES}",
            parts.join(" UNION ALL ")
        );
        let mut q = sqlx::query_as::<_, (i64, u64)>(&sql);
        for _ in 0..parts.len() {
            q = q.bind(after.0).bind(after.0).bind(after.1);
        }
        Ok(q.fetch_all(&mut **tx).await?)
    }

    /// The operation claim: take candidates in `(created_at, id)` order, locking each with its
    /// parent in one `FOR UPDATE SKIP LOCKED` read (the operation is read first, so a parent
    /// held by its owner or by another claimer skips the pair, never waits); confirm an
    /// operation arm and an apply arm for the parent, and take both leases. Reads walk the
    /// primary key, so a claimer never holds a row it does not claim.
    async fn claim_operation_once(&self, owner: &str) -> Result<Option<Claimed>, Failure> {
        let now = self.now_sql();
        let head = format!(
            "SELECT {cols}, {op_cols} FROM apply_operations o STRAIGHT_JOIN applies a ON a.id = o.apply_id WHERE",
            cols = apply_columns(&now),
            op_cols = operation_columns(&now),
        );
        let filter = self.operation_prefilter(&now);
        // When the candidates' ids ascend with their (created_at, id) order (operations are
        // created with the database clock, so this is the rule), one statement locks the first
        // lockable candidate in primary-key order, as the apply claim does; otherwise each is
        // tried in turn.
        let marks = vec!["?"; CANDIDATES].join(", ");
        let first_of = format!(
            "{head} o.id IN ({marks}) AND o.id > ? AND ({filter}) ORDER BY o.id LIMIT 1 FOR UPDATE SKIP LOCKED"
        );
        let one = format!("{head} o.id = ? AND ({filter}) FOR UPDATE SKIP LOCKED");
        let mut tx = self.pool.begin().await?;
        // Before the epoch, so the first read starts at the beginning.
        let mut after: (i64, u64) = (-1, 0);
        loop {
            let candidates = self.operation_candidates(&mut tx, &now, after).await?;
            let Some(last) = candidates.last().copied() else {
                tx.commit().await?;
                return Ok(None);
            };
            let ids: Vec<u64> = candidates.iter().map(|(_, id)| *id).collect();
            let ascending = ids.windows(2).all(|w| w[0] < w[1]);
            let mut next = 0;
            let mut cursor = 0;
            loop {
                let row = if ascending {
                    let mut q = sqlx::query(&first_of);
                    for i in 0..CANDIDATES {
                        // Id 0 never exists: it pads the list.
                        q = q.bind(ids.get(i).copied().unwrap_or(0));
                    }
                    match q.bind(cursor).fetch_optional(&mut *tx).await? {
                        Some(row) => row,
                        None => break,
                    }
                } else {
                    let Some(id) = ids.get(next).copied() else {
                        break;
                    };
                    next += 1;
                    match sqlx::query(&one).bind(id).fetch_optional(&mut *tx).await? {
                        Some(row) => row,
                        None => continue,
                    }
                };
                let raw = RawApply::read(&row)?;
                let op = RawOperation::read(&row)?;
                cursor = op.id;
                let Ok(parsed) = self.parse(&raw) else {
                    continue;
                };
                let op_state = match ApplyState::from_str(&op.state) {
                    Ok(s) => s,
                    Err(e) => {
                        self.bad_row(raw.id, "apply_operations.state", &op.state, e.to_string());
                        continue;
                    }
                };
                let parent = parsed.view(&raw);
                let view = OperationClaimView {
                    op: op.view(op_state, parsed.controls),
                    parent,
                };
                let Some(op_arm) = self.rules.matching_operation_arm(&view) else {
                    continue;
                };
                // The parent is claimed as upstream's `ClaimApplyByID` does: by an apply arm.
                let Some(parent_arm) = self.rules.matching_arm(&parent) else {
                    continue;
                };
                // A stop that committed after this statement's snapshot but before the parent
                // was locked is seen by a fresh read (a request locks the parent first); it wins.
                if op_arm == OperationArm::O1Pending && self.stop_pending(&mut tx, raw.id).await? {
                    continue;
                }
                let via = ClaimedVia::Operation {
                    op: op_arm,
                    parent: parent_arm,
                };
                if let Some(claimed) = self.take(&mut tx, &raw, &parsed, via, owner, &now).await? {
                    tx.commit().await?;
                    return Ok(Some(claimed));
                }
            }
            after = last;
        }
    }

    async fn stop_pending(
        &self,
        tx: &mut Transaction<'_, MySql>,
        apply: ApplyId,
    ) -> Result<bool, Failure> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM apply_control_requests WHERE apply_id = ? AND operation = ? AND status = ? LIMIT 1",
        )
        .bind(apply)
        .bind(ControlOp::Stop.as_str())
        .bind(ControlStatus::Pending.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        Ok(found.is_some())
    }

    /// Take the lease of a locked apply and its operation row at one new epoch, moving the apply
    /// by the transition of the apply arm (its operation and tasks follow). `None`: skip this
    /// row (no transition, or a re-activation the target refused; the start then fails).
    async fn take(
        &self,
        tx: &mut Transaction<'_, MySql>,
        raw: &RawApply,
        parsed: &Parsed,
        via: ClaimedVia,
        owner: &str,
        now: &str,
    ) -> Result<Option<Claimed>, Failure> {
        let Some(mv) = self
            .rules
            .claim_move(parsed.engine, parsed.state, via.apply_arm())
        else {
            return Ok(None);
        };
        let to = mv.to;
        let pre_claim = parsed.state;
        let mut sets = format!(
            "lease_epoch = lease_epoch + 1, lease_owner = ?, lease_acquired_at = {now}, \
             heartbeat_at = {now}, updated_at = {now}, write_seq = write_seq + 1"
        );
        if to != pre_claim {
            sets.push_str(&format!(", state = ?, state_entered_at = {now}"));
        }
        let retry = mv.counts_attempt;
        if retry {
            sets.push_str(", attempt = attempt + 1, error_message = NULL");
        }
        let update =
            format!("UPDATE applies SET {sets} WHERE id = ? AND lease_epoch = ? AND state = ?");
        let mut q = sqlx::query(&update).bind(owner);
        if to != pre_claim {
            q = q.bind(to.as_str());
        }
        let done = q
            .bind(raw.id)
            .bind(raw.lease_epoch)
            .bind(&raw.state)
            .execute(&mut **tx)
            .await;
        match done {
            Ok(r) if r.rows_affected() == 1 => {}
            // Cannot happen while we hold the row lock; never guess, look at the next row.
            Ok(_) => return Ok(None),
            Err(e) if is_duplicate_key(&e) && mv.reactivates => {
                // Re-activating would give the target a second active apply: refuse the
                // start that asked for it, with the reason.
                let target = Target {
                    database: raw.database.clone(),
                    environment: raw.environment.clone(),
                };
                let existing = self.active_on_target(tx, &target, Some(raw.id)).await?;
                let message =
                    format!("start refused: another active apply ({existing}) exists on {target}");
                let sql = format!(
                    "UPDATE apply_control_requests SET status = ?, error_message = ?, updated_at = {now}, \
                     completed_at = {now} WHERE apply_id = ? AND operation = ? AND status = ?"
                );
                sqlx::query(&sql)
                    .bind(ControlStatus::Failed.as_str())
                    .bind(&message)
                    .bind(raw.id)
                    .bind(ControlOp::Start.as_str())
                    .bind(ControlStatus::Pending.as_str())
                    .execute(&mut **tx)
                    .await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        let epoch = raw.lease_epoch + 1;
        // The operation row takes the same lease (one epoch for both rows) and mirrors the state;
        // a retry re-dispatches it, so its own attempt counts too.
        let op_attempt = if retry { ", attempt = attempt + 1" } else { "" };
        let op = format!(
            "UPDATE apply_operations SET lease_owner = ?, lease_epoch = ?, lease_acquired_at = {now}, \
             heartbeat_at = {now}, updated_at = {now}, state = ?{op_attempt} WHERE apply_id = ?"
        );
        sqlx::query(&op)
            .bind(owner)
            .bind(epoch)
            .bind(to.as_str())
            .bind(raw.id)
            .execute(&mut **tx)
            .await?;
        self.sync_tasks(tx, raw.id, pre_claim, to, now).await?;
        self.log(
            tx,
            raw.id,
            &raw.state,
            to,
            epoch,
            Some(owner),
            &format!("claim {}", via.code()),
            now,
        )
        .await?;
        let attempt = if retry { raw.attempt + 1 } else { raw.attempt };
        Ok(Some(Claimed {
            lease: Lease {
                apply: raw.id,
                owner: owner.to_string(),
                epoch,
            },
            arm: via,
            pre_claim,
            record: parsed.record(raw, to, epoch, attempt),
        }))
    }

    /// The active apply on a target, other than `except`. A duplicate key says one exists; if it
    /// finished in between, the caller retries.
    async fn active_on_target(
        &self,
        tx: &mut Transaction<'_, MySql>,
        target: &Target,
        except: Option<ApplyId>,
    ) -> Result<ApplyId, Failure> {
        let existing: Option<ApplyId> = sqlx::query_scalar(
            "SELECT id FROM applies WHERE database_name = ? AND environment = ? AND active_flag = 1 \
             AND id <> ? LIMIT 1",
        )
        .bind(&target.database)
        .bind(&target.environment)
        .bind(except.unwrap_or(0))
        .fetch_optional(&mut **tx)
        .await?;
        existing.ok_or_else(|| {
            Failure::Retry(format!("the active apply on {target} finished meanwhile"))
        })
    }

    /// Bring an apply's task rows along with its move from `from` to `to`, through the one task
    /// rule (`machine::task::task_after_move`), in one statement: the rule is tabulated for
    /// every known task state, and each stored state maps to its successor at once, so a task
    /// never takes two steps. A task state we cannot read matches no entry and is left as it is.
    async fn sync_tasks(
        &self,
        tx: &mut Transaction<'_, MySql>,
        apply: ApplyId,
        from: ApplyState,
        to: ApplyState,
        now: &str,
    ) -> Result<(), Failure> {
        if from == to {
            return Ok(());
        }
        let steps: Vec<_> = TaskState::ALL
            .iter()
            .map(|stored| (*stored, task_after_move(*stored, from, to)))
            .filter(|(stored, step)| step.state != *stored)
            .collect();
        if steps.is_empty() {
            return Ok(());
        }
        let whens = vec!["WHEN ? THEN ?"; steps.len()].join(" ");
        let marks = vec!["?"; steps.len()].join(", ");
        // `attempt` is assigned first: MySQL evaluates SET left to right, so it still sees the
        // stored state.
        let sql = format!(
            "UPDATE tasks SET attempt = attempt + (CASE state {whens} ELSE 0 END), \
             state = (CASE state {whens} ELSE state END), updated_at = {now} \
             WHERE apply_id = ? AND state IN ({marks})"
        );
        let mut q = sqlx::query(&sql);
        for (stored, step) in &steps {
            q = q.bind(stored.as_str()).bind(u32::from(step.retried));
        }
        for (stored, step) in &steps {
            q = q.bind(stored.as_str()).bind(step.state.as_str());
        }
        q = q.bind(apply);
        for (stored, _) in &steps {
            q = q.bind(stored.as_str());
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }

    /// The store's own (unfenced) move of an apply, e.g. retry expiry: its operation row and
    /// task rows follow.
    async fn mirror_operation(
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
    async fn log(
        &self,
        tx: &mut Transaction<'_, MySql>,
        apply: ApplyId,
        from: &str,
        to: ApplyState,
        epoch: u64,
        owner: Option<&str>,
        cause: &str,
        now: &str,
    ) -> Result<(), Failure> {
        let sql = format!(
            "INSERT INTO apply_logs (apply_id, from_state, to_state, lease_epoch, lease_owner, cause, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, {now})"
        );
        sqlx::query(&sql)
            .bind(apply)
            .bind(from)
            .bind(to.as_str())
            .bind(epoch)
            .bind(owner)
            .bind(cause)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Settle a fenced write that matched 0 rows: the row is gone, or another epoch holds the
    /// apply or its operation row.
    async fn zero_rows<'c, E>(&self, exec: E, lease: &Lease) -> Failure
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
    async fn lock_owned(
        &self,
        tx: &mut Transaction<'_, MySql>,
        lease: &Lease,
    ) -> Result<RawState, Failure> {
        let row = sqlx::query(
            "SELECT state, engine, lease_epoch, database_name, environment FROM applies WHERE id = ? FOR UPDATE",
        )
        .bind(lease.apply)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::RowGone(lease.apply))?;
        let epoch: u64 = row.try_get("lease_epoch")?;
        if !self.rules.write_allowed(epoch, lease.epoch) {
            return Err(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            }
            .into());
        }
        Ok(RawState {
            state: row.try_get_unchecked("state")?,
            engine: row.try_get_unchecked("engine")?,
            target: Target {
                database: row.try_get_unchecked("database_name")?,
                environment: row.try_get_unchecked("environment")?,
            },
        })
    }

    async fn submit_once(&self, new: &NewApply) -> Result<ApplyId, Failure> {
        let now = self.now_sql();
        let options =
            serde_json::to_string(&new.options).map_err(|e| StoreError::Refused(e.to_string()))?;
        let ddl =
            serde_json::to_string(&new.ddl).map_err(|e| StoreError::Refused(e.to_string()))?;
        let resume = serde_json::to_string(&ResumeState::default())
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        let pending = ApplyState::Pending.as_str();
        let mut tx = self.pool.begin().await?;
        let insert = format!(
            "INSERT INTO applies (database_name, environment, engine, state, options, ddl, \
             state_entered_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, {now}, {now}, {now})"
        );
        let inserted = sqlx::query(&insert)
            .bind(&new.target.database)
            .bind(&new.target.environment)
            .bind(new.engine.as_str())
            .bind(pending)
            .bind(&options)
            .bind(&ddl)
            .execute(&mut *tx)
            .await;
        let id = match inserted {
            Ok(done) => done.last_insert_id(),
            Err(e) if is_duplicate_key(&e) => {
                let existing = self.active_on_target(&mut tx, &new.target, None).await?;
                return Err(StoreError::ActiveApplyExists {
                    target: new.target.to_string(),
                    existing,
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        sqlx::query("UPDATE applies SET apply_identifier = ? WHERE id = ?")
            .bind(identifier(id))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let op = format!(
            "INSERT INTO apply_operations (apply_id, state, engine_resume_state, created_at, updated_at) \
             VALUES (?, ?, ?, {now}, {now})"
        );
        let op_id = sqlx::query(&op)
            .bind(id)
            .bind(pending)
            .bind(&resume)
            .execute(&mut *tx)
            .await?
            .last_insert_id();
        let values = vec![format!("(?, ?, ?, ?, ?, {now}, {now})"); new.ddl.len()].join(", ");
        let tasks = format!(
            "INSERT INTO tasks (apply_id, apply_operation_id, seq, ddl, state, created_at, updated_at) VALUES {values}"
        );
        let mut q = sqlx::query(&tasks);
        for (seq, ddl) in new.ddl.iter().enumerate() {
            q = q
                .bind(id)
                .bind(op_id)
                .bind(seq as u32)
                .bind(ddl)
                .bind(crate::machine::TaskState::Pending.as_str());
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn load_once(&self, lease: &Lease) -> Result<DriveInputs, Failure> {
        let now = self.now_sql();
        let sql = format!(
            "SELECT {} FROM applies a WHERE a.id = ?",
            apply_columns(&now)
        );
        let row = sqlx::query(&sql)
            .bind(lease.apply)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::RowGone(lease.apply))?;
        let raw = RawApply::read(&row)?;
        if !self.rules.write_allowed(raw.lease_epoch, lease.epoch) {
            return Err(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            }
            .into());
        }
        let parsed = self.parse(&raw)?;
        Ok(DriveInputs {
            revert_window_expired: self
                .rules
                .revert_window_expired(parsed.state, age_ms(raw.state_age_us)),
            record: parsed.record(&raw, parsed.state, raw.lease_epoch, raw.attempt),
            controls: parsed.controls,
        })
    }

    /// A fenced move by the lease's owner: `write` (with the resume state) and `fail_apply`
    /// (with the reason, keeping the resume state, refusing a terminal row).
    async fn owner_move_once(&self, lease: &Lease, mv: OwnerMove<'_>) -> Result<(), Failure> {
        let now = self.now_sql();
        let mut tx = self.pool.begin().await?;
        let current = self.lock_owned(&mut tx, lease).await?;
        // A row we cannot read is never rewritten.
        let from = ApplyState::from_str(&current.state)
            .map_err(|e| self.bad_row(lease.apply, "state", &current.state, e.to_string()))?;
        let (to, resume, reason) = match mv {
            OwnerMove::Write { to, resume } => (to, Some(resume), None),
            OwnerMove::Fail { reason } => {
                let engine = EngineKind::from_str(&current.engine).map_err(|e| {
                    self.bad_row(lease.apply, "engine", &current.engine, e.to_string())
                })?;
                let Some(to) = self.rules.operator_failure_move(engine, from) else {
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
        let op = format!(
            "UPDATE apply_operations SET state = ?, {resume_set}heartbeat_at = {now}, \
             updated_at = {now}, write_seq = write_seq + 1 WHERE apply_id = ? AND lease_epoch = ?"
        );
        let mut q = sqlx::query(&op).bind(to.as_str());
        if let Some(resume) = resume {
            q = q.bind(resume);
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
        if from != to {
            self.log(
                &mut tx,
                lease.apply,
                &current.state,
                to,
                lease.epoch,
                Some(&lease.owner),
                "write",
                &now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn finish_request_once(
        &self,
        lease: &Lease,
        op: ControlOp,
        status: ControlStatus,
        message: Option<&str>,
    ) -> Result<(), Failure> {
        let now = self.now_sql();
        let mut tx = self.pool.begin().await?;
        self.lock_owned(&mut tx, lease).await?;
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

    /// A single fenced UPDATE of an apply and its operation row together (heartbeat, release),
    /// each row fenced by its own epoch; 0 rows is settled by a re-read. The apply is locked
    /// first (`STRAIGHT_JOIN`), the order every other write uses.
    async fn fenced_once(&self, lease: &Lease, sets: &[(&str, &str)]) -> Result<(), Failure> {
        let both: Vec<String> = sets
            .iter()
            .flat_map(|(col, value)| [format!("a.{col} = {value}"), format!("o.{col} = {value}")])
            .collect();
        let sql = format!(
            "UPDATE applies a STRAIGHT_JOIN apply_operations o ON o.apply_id = a.id \
             SET {}, a.write_seq = a.write_seq + 1, o.write_seq = o.write_seq + 1 \
             WHERE a.id = ? AND a.lease_epoch = ? AND o.lease_epoch = ?",
            both.join(", ")
        );
        let done = sqlx::query(&sql)
            .bind(lease.apply)
            .bind(lease.epoch)
            .bind(lease.epoch)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() >= 1 {
            Ok(())
        } else {
            Err(self.zero_rows(&self.pool, lease).await)
        }
    }

    async fn request_once(&self, apply: ApplyId, op: ControlOp) -> Result<RequestOutcome, Failure> {
        let now = self.now_sql();
        let mut tx = self.pool.begin().await?;
        // Locking the apply row serialises requests on one apply with each other and with claims
        // and owner writes (which lock it first too, so the lock order is always the same).
        let row = sqlx::query("SELECT state, engine FROM applies WHERE id = ? FOR UPDATE")
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
        self.rules
            .accepts_request(engine, state, op, &pending)
            .map_err(|r| StoreError::Refused(r.message()))?;
        let outcome = match existing {
            Some(ControlStatus::Pending) => RequestOutcome::AlreadyPending,
            Some(_) => {
                self.reset_request(&mut tx, apply, op, &now).await?;
                RequestOutcome::Reset
            }
            None => {
                let sql = format!(
                    "INSERT INTO apply_control_requests (apply_id, operation, status, created_at, updated_at) \
                     VALUES (?, ?, ?, {now}, {now})"
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
        tx.commit().await?;
        Ok(outcome)
    }

    async fn reset_request(
        &self,
        tx: &mut Transaction<'_, MySql>,
        apply: ApplyId,
        op: ControlOp,
        now: &str,
    ) -> Result<(), Failure> {
        let sql = format!(
            "UPDATE apply_control_requests SET status = ?, error_message = NULL, completed_at = NULL, \
             updated_at = {now} WHERE apply_id = ? AND operation = ?"
        );
        sqlx::query(&sql)
            .bind(ControlStatus::Pending.as_str())
            .bind(apply)
            .bind(op.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn expire_once(&self) -> Result<u32, Failure> {
        let now = self.now_sql();
        let Some(states) = in_list(&self.rules.states_in(ClaimClass::RetryPath)) else {
            return Ok(0);
        };
        let p = &self.rules.params;
        let select = format!(
            "SELECT {cols} FROM applies a WHERE a.state IN ({states}) AND (a.attempt >= {budget} \
             OR TIMESTAMPDIFF(MICROSECOND, a.updated_at, {now}) >= {fresh}) ORDER BY a.id FOR UPDATE SKIP LOCKED",
            cols = apply_columns(&now),
            budget = p.retry_budget,
            fresh = p.retry_freshness_ms.saturating_mul(1000),
        );
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&select).fetch_all(&mut *tx).await?;
        let mut expired = 0;
        for row in &rows {
            let raw = RawApply::read(row)?;
            let Ok(parsed) = self.parse(&raw) else {
                continue;
            };
            let Some((reason, to)) = self.rules.expiry_move(parsed.engine, &parsed.view(&raw))
            else {
                continue;
            };
            let sql = format!(
                "UPDATE applies SET state = ?, error_message = ?, updated_at = {now}, state_entered_at = {now}, \
                 write_seq = write_seq + 1 WHERE id = ? AND state = ? AND lease_epoch = ?"
            );
            let done = sqlx::query(&sql)
                .bind(to.as_str())
                .bind(reason.as_str())
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
                &now,
            )
            .await?;
            expired += 1;
        }
        tx.commit().await?;
        Ok(expired)
    }

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
        let rows =
            sqlx::query("SELECT apply_id, seq, state, attempt FROM tasks ORDER BY apply_id, seq")
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
            "SELECT apply_id, from_state, to_state, lease_epoch, lease_owner, cause FROM apply_logs \
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
                    from: r.try_get_unchecked("from_state")?,
                    to: r.try_get_unchecked("to_state")?,
                    epoch: r.try_get("lease_epoch")?,
                    owner: r.try_get_unchecked("lease_owner")?,
                    cause: r.try_get_unchecked("cause")?,
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

/// What an owner's fenced move writes besides the state.
#[derive(Clone, Copy)]
enum OwnerMove<'a> {
    Write { to: ApplyState, resume: &'a str },
    Fail { reason: &'a str },
}

struct RawState {
    state: String,
    engine: String,
    target: Target,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Pool options for the store: READ COMMITTED sessions (claims must not take gap locks or read
/// stale snapshots), bounded waits.
pub fn pool_options(max_connections: u32) -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
}

#[async_trait]
impl Store for MySqlStore {
    async fn submit(&self, new: NewApply) -> Result<ApplyId, StoreError> {
        validate_new_apply(&new)?;
        self.retrying("submit", || self.submit_once(&new)).await
    }

    async fn claim(&self, owner: &str) -> Result<Option<Claimed>, StoreError> {
        self.retrying("claim", || self.claim_once(owner)).await
    }

    async fn claim_operation(&self, owner: &str) -> Result<Option<Claimed>, StoreError> {
        self.retrying("claim operation", || self.claim_operation_once(owner))
            .await
    }

    async fn load(&self, lease: &Lease) -> Result<DriveInputs, StoreError> {
        self.retrying("load", || self.load_once(lease)).await
    }

    async fn write(
        &self,
        lease: &Lease,
        to: ApplyState,
        resume: ResumeState,
    ) -> Result<(), StoreError> {
        let resume =
            serde_json::to_string(&resume).map_err(|e| StoreError::Refused(e.to_string()))?;
        self.retrying("write", || {
            self.owner_move_once(
                lease,
                OwnerMove::Write {
                    to,
                    resume: &resume,
                },
            )
        })
        .await
    }

    async fn complete_request(&self, lease: &Lease, op: ControlOp) -> Result<(), StoreError> {
        self.retrying("complete request", || {
            self.finish_request_once(lease, op, ControlStatus::Completed, None)
        })
        .await
    }

    async fn fail_request(
        &self,
        lease: &Lease,
        op: ControlOp,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.retrying("fail request", || {
            self.finish_request_once(lease, op, ControlStatus::Failed, Some(reason))
        })
        .await
    }

    async fn heartbeat(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = self.now_sql();
        let sets = [("heartbeat_at", now.as_str())];
        self.retrying("heartbeat", || self.fenced_once(lease, &sets))
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.retrying("release", || {
            self.fenced_once(
                lease,
                &[("lease_owner", "NULL"), ("heartbeat_at", "NULL")][..],
            )
        })
        .await
    }

    async fn request(&self, apply: ApplyId, op: ControlOp) -> Result<RequestOutcome, StoreError> {
        self.retrying("request", || self.request_once(apply, op))
            .await
    }

    async fn fail_apply(&self, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        self.retrying("fail apply", || {
            self.owner_move_once(lease, OwnerMove::Fail { reason })
        })
        .await
    }

    async fn expire_retryable(&self) -> Result<u32, StoreError> {
        self.retrying("expire retryable", || self.expire_once())
            .await
    }
}
