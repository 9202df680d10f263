//! The production store: MySQL 8 or MariaDB 10.6+ through sqlx, with the semantics of the
//! reference [`super::memory::MemoryStore`] (one conformance suite in `tests/` runs both).
//!
//! - **Claims** run in one READ COMMITTED transaction: candidates come from small index ranges
//!   built from `machine`'s claim classes (the `IN (…)` lists come from [`Rules::states_in`]), so
//!   rows under a live lease are never walked; then `SELECT … ORDER BY id LIMIT 1 FOR UPDATE SKIP
//!   LOCKED` over a prefilter from the same classes locks the first one, [`Rules::matching_arm`]
//!   confirms it on ages the database computed, its move comes from [`Rules::claim_move`], and a
//!   guarded UPDATE takes the lease with a new epoch. Candidates and prefilter may only be wider
//!   than the arms, never narrower. A claim is three round trips (`claim_tx`): the transaction
//!   starts with the candidate read, the locking read is the second, and the writes of the apply,
//!   its operation, its tasks and the audit row go together with the `COMMIT`.
//! - **The idle poll** ([`Store::may_have_work`]) is the apply candidate read alone, in
//!   autocommit: every operation claim also moves its parent by an apply arm, and expiry reads
//!   only retry-path rows, so no candidate means nothing to claim or expire.
//! - **Operation claims** (O1–O7, [`Rules::matching_operation_arm`]) take operation rows in
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
//! - **Webhook events** (`store::webhooks`): the statement that writes an audit row of a move
//!   to another state, and an accepted control request, is followed in the same transaction by
//!   one `webhook_outbox` insert (queued in the claim's and the rollout's batches, executed in
//!   the others), so an event exists exactly when its change committed. Deliveries are leased
//!   per (event, endpoint) with `SKIP LOCKED` and marked under their lease (`deliveries`).
//! - **Bad rows**: a row whose state (or engine, options, resume state) cannot be read is
//!   reported with its id and value, skipped by claims, and never rewritten.
//!
//! Test clock: [`MySqlStore::advance_clock`] shifts every time expression of this store
//! (`NOW(6) + INTERVAL n MICROSECOND`), so the conformance suite can drive the database-clock
//! store and the manual-clock memory store with the same steps; [`MySqlStore::freeze_clock`]
//! pins it to one instant, so a test can place a heartbeat exactly on a bound. Production never
//! calls either; the expression is then exactly `NOW(6)`.
//!
//! Layout: `rows` decodes what is read (one decoder of an apply row for claims, loads and
//! inspection); `claims` finds candidates and takes leases; `writes` holds the fenced owner
//! writes, submit and load, and the task and audit rows that follow a move; `requests` holds
//! control requests and retry expiry; `status` serves the read-only listings; `outbox` records
//! and reads webhook events, `deliveries` leases, marks, prunes and reports their delivery.

use std::collections::BTreeSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions};
use sqlx::Executor;

use super::{
    validate_new_apply, Claimed, DriveInputs, Lease, LeaseChange, NewApply, RequestOutcome, Store,
    StoreError, Submitted,
};
use crate::machine::apply::{ApplyId, ResumeState};
use crate::machine::{
    ApplyOptions, ApplyState, ControlOp, ControlStatus, EngineKind, PendingControls, Rules,
};

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

mod claim_tx;
mod claims;
mod deliveries;
mod outbox;
mod progress;
mod requests;
mod rollout;
mod rows;
pub mod status;
mod submit;
mod writes;

use rows::{Parsed, RawApply};
pub use rows::{StoredApply, StoredLog, StoredOperation, StoredRequest, StoredTask};
use writes::OwnerMove;

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
        // No ping before each use: it would be a fourth round trip on every claim. The pool
        // already pings each connection it takes back; a connection that died while idle
        // fails its one statement as `Unavailable`, which every caller treats as "try later",
        // and is then dropped. Idle connections are retired long before a server's
        // `wait_timeout` (8 h by default) could close them.
        .test_before_acquire(false)
        .idle_timeout(Duration::from_secs(300))
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
    async fn submit_or_adopt(&self, new: NewApply) -> Result<Submitted, StoreError> {
        if let Some(plan) = &new.rollout {
            return self.submit_rollout(&new, plan).await;
        }
        let change = validate_new_apply(&new)?;
        self.retrying("submit", || self.submit_once(&new, &change))
            .await
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
        why: Option<String>,
    ) -> Result<(), StoreError> {
        let resume =
            serde_json::to_string(&resume).map_err(|e| StoreError::Refused(e.to_string()))?;
        self.retrying("write", || {
            self.owner_move_once(
                lease,
                OwnerMove::Write {
                    to,
                    resume: &resume,
                    why: why.as_deref(),
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
        self.retrying("heartbeat", || {
            self.fenced_once(lease, &sets, LeaseChange::Renew)
        })
        .await
    }

    async fn heartbeat_all(&self, leases: &[Lease]) -> Result<Vec<Lease>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        self.retrying("heartbeat all", || self.heartbeat_all_once(leases))
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.retrying("release", || {
            self.fenced_once(
                lease,
                &[("lease_owner", "NULL"), ("heartbeat_at", "NULL")][..],
                LeaseChange::Release,
            )
        })
        .await
    }

    async fn pending_requests(&self, applies: &[ApplyId]) -> Result<Vec<ApplyId>, StoreError> {
        if applies.is_empty() {
            return Ok(Vec::new());
        }
        self.retrying("pending requests", || async {
            let sql = format!(
                "SELECT DISTINCT apply_id FROM apply_control_requests \
                 WHERE status = '{}' AND apply_id IN ({}) ORDER BY apply_id",
                ControlStatus::Pending.as_str(),
                vec!["?"; applies.len()].join(", ")
            );
            let mut q = sqlx::query_scalar::<_, ApplyId>(&sql);
            for id in applies {
                q = q.bind(*id);
            }
            Ok::<_, Failure>(q.fetch_all(&self.pool).await?)
        })
        .await
    }

    async fn park(&self, lease: &Lease) -> Result<(), StoreError> {
        self.retrying("park", || self.park_once(lease)).await
    }

    async fn request(&self, apply: ApplyId, op: ControlOp) -> Result<RequestOutcome, StoreError> {
        self.retrying("request", || self.request_once(apply, op, None))
            .await
    }

    async fn request_by(
        &self,
        apply: ApplyId,
        op: ControlOp,
        by: &str,
    ) -> Result<RequestOutcome, StoreError> {
        self.retrying("request", || self.request_once(apply, op, Some(by)))
            .await
    }

    async fn fail_apply(&self, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        self.retrying("fail apply", || {
            self.owner_move_once(lease, OwnerMove::Fail { reason })
        })
        .await
    }

    async fn record_progress(
        &self,
        lease: &Lease,
        progress: &super::progress::TaskProgress,
    ) -> Result<(), StoreError> {
        let progress = progress.clone().bounded();
        self.retrying("record progress", || {
            self.record_progress_once(lease, &progress)
        })
        .await
    }

    async fn webhook_events(
        &self,
        apply: ApplyId,
    ) -> Result<Vec<super::webhooks::OutboxEvent>, StoreError> {
        self.retrying("read webhook events", || self.webhook_events_once(apply))
            .await
    }

    async fn expire_retryable(&self) -> Result<u32, StoreError> {
        self.retrying("expire retryable", || self.expire_once())
            .await
    }

    async fn may_have_work(&self) -> Result<bool, StoreError> {
        self.retrying("poll for work", || self.may_have_work_once())
            .await
    }
}
