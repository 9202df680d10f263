//! Shared harness of the store tests: one `Env` per test, backed by the memory store (manual
//! clock) or by the MySQL store on a database of its own (database clock, shifted by the same
//! steps). The MySQL variant needs `APPLYD_TEST_DATABASE_URL` (scripts/test starts MariaDB and
//! sets it); without it the test is skipped locally and fails under CI.

#![allow(dead_code)]

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use applyd::machine::{ApplyState, ControlOp, ControlStatus, Rules};
use applyd::store::memory::{ManualClock, MemoryStore};
use applyd::store::mysql::MySqlStore;
use applyd::store::Store;
use applyd::worker::{ApplyId, ResumeState};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{Connection, Executor};

pub const URL_VAR: &str = "APPLYD_TEST_DATABASE_URL";

/// A one-statement apply on `db`/prod.
pub fn new_apply(db: &str, engine: applyd::machine::EngineKind) -> applyd::store::NewApply {
    applyd::store::NewApply {
        allow_destructive: false,
        rollout: None,
        target: applyd::store::Target {
            database: db.into(),
            environment: "prod".into(),
        },
        engine,
        ddl: vec!["ALTER TABLE users ADD COLUMN nickname VARCHAR(64)".into()],
        options: Default::default(),
    }
}

/// The server URL, or `None` (with a note) when the MySQL tests may be skipped.
pub fn mysql_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{URL_VAR} is not set under CI: the MySQL store tests must run (scripts/test starts MariaDB and sets it)")
        }
        _ => {
            eprintln!("note: {URL_VAR} is not set; skipping a MySQL store test (scripts/test starts MariaDB and sets it)");
            None
        }
    }
}

/// A database of its own for one test, so tests run in parallel.
pub async fn fresh_database(url: &str) -> (MySqlConnectOptions, String) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base =
        MySqlConnectOptions::from_str(url).expect("APPLYD_TEST_DATABASE_URL is a mysql:// URL");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "applyd_t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        nanos
    );
    let mut conn = MySqlConnection::connect_with(&base)
        .await
        .expect("connect to the test server");
    conn.execute(format!("CREATE DATABASE `{name}`").as_str())
        .await
        .expect("create the test database");
    conn.close().await.ok();
    (base.database(&name), name)
}

pub async fn drop_database(url: &str, name: &str) {
    let Ok(base) = MySqlConnectOptions::from_str(url) else {
        return;
    };
    if let Ok(mut conn) = MySqlConnection::connect_with(&base).await {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS `{name}`").as_str())
            .await;
        conn.close().await.ok();
    }
}

pub enum Backend {
    Memory {
        store: Arc<MemoryStore>,
        clock: Arc<ManualClock>,
    },
    MySql {
        store: Arc<MySqlStore>,
        url: String,
        db: String,
        base_us: i64,
    },
}

/// One store under test plus what the suite needs to look at beyond the trait.
pub struct Env {
    pub store: Arc<dyn Store>,
    pub backend: Backend,
}

/// An apply row, normalised across the stores. Times are milliseconds of the store's clock
/// since the `Env` was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowView {
    pub state: String,
    pub attempt: u32,
    pub owner: Option<String>,
    pub epoch: u64,
    pub error: Option<String>,
    pub resume: ResumeState,
    pub lease_acquired_at: Option<u64>,
    pub heartbeat_at: Option<u64>,
    pub updated_at: u64,
    pub state_entered_at: u64,
}

/// An operation row, normalised across the stores (times as in `RowView`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationView {
    pub state: String,
    pub attempt: u32,
    pub owner: Option<String>,
    pub epoch: u64,
    pub lease_acquired_at: Option<u64>,
    pub heartbeat_at: Option<u64>,
    pub updated_at: u64,
}

/// A task row: its state and attempt, by apply and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub apply: ApplyId,
    pub seq: u32,
    pub state: String,
    pub attempt: u32,
    pub table: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditView {
    pub apply: ApplyId,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub owner: Option<String>,
    pub cause: String,
    pub detail: Option<String>,
}

impl Env {
    pub fn memory() -> Env {
        let clock = Arc::new(ManualClock::new(0));
        let store = Arc::new(MemoryStore::new(Rules::default(), clock.clone()));
        Env {
            store: store.clone(),
            backend: Backend::Memory { store, clock },
        }
    }

    /// A MySQL store on a fresh, migrated database; `None` when skipped (see `mysql_url`).
    pub async fn mysql() -> Option<Env> {
        Env::mysql_with(Rules::default()).await
    }

    /// [`Env::mysql`] under the given rules.
    pub async fn mysql_with(rules: Rules) -> Option<Env> {
        let url = mysql_url()?;
        let (options, db) = fresh_database(&url).await;
        let store = MySqlStore::connect_with(options, rules, 24)
            .await
            .expect("connect the store");
        store.migrate().await.expect("migrate");
        let base_us = store.now_us().await.expect("read the database clock");
        let store = Arc::new(store);
        Some(Env {
            store: store.clone(),
            backend: Backend::MySql {
                store,
                url,
                db,
                base_us,
            },
        })
    }

    pub fn is_mysql(&self) -> bool {
        matches!(self.backend, Backend::MySql { .. })
    }

    /// The read-only view the CLI, the API and the status page show.
    pub async fn inspect(&self, id: ApplyId) -> applyd::store::status::ApplyStatus {
        use applyd::store::status::Inspect;
        match &self.backend {
            Backend::Memory { store, .. } => store.status(id).await.expect("status"),
            Backend::MySql { store, .. } => store.status(id).await.expect("status"),
        }
    }

    /// The timeline the CLI, the API and the dashboard show, newest last.
    pub async fn timeline(&self, id: ApplyId) -> Vec<applyd::store::timeline::TimelineEntry> {
        use applyd::store::status::Inspect;
        match &self.backend {
            Backend::Memory { store, .. } => store.timeline(id, 100).await.expect("timeline"),
            Backend::MySql { store, .. } => store.timeline(id, 100).await.expect("timeline"),
        }
    }

    pub fn mysql_store(&self) -> Option<&MySqlStore> {
        match &self.backend {
            Backend::MySql { store, .. } => Some(store),
            Backend::Memory { .. } => None,
        }
    }

    /// Move both kinds of clock by the same step.
    pub fn advance(&self, ms: u64) {
        match &self.backend {
            Backend::Memory { clock, .. } => clock.advance(ms),
            Backend::MySql { store, .. } => store.advance_clock(ms),
        }
    }

    /// Every apply row, by id.
    pub async fn rows(&self) -> Vec<(ApplyId, RowView)> {
        match &self.backend {
            Backend::Memory { store, .. } => store
                .rows()
                .into_iter()
                .map(|r| {
                    (
                        r.id,
                        RowView {
                            state: r.state.as_str().to_string(),
                            attempt: r.attempt,
                            owner: r.lease_owner,
                            epoch: r.lease_epoch,
                            error: r.error_message,
                            resume: r.resume,
                            lease_acquired_at: r.lease_acquired_at,
                            heartbeat_at: r.heartbeat_at,
                            updated_at: r.updated_at,
                            state_entered_at: r.state_entered_at,
                        },
                    )
                })
                .collect(),
            Backend::MySql { store, base_us, .. } => {
                let ms = |us: i64| ((us - base_us).max(0) / 1000) as u64;
                store
                    .stored_applies()
                    .await
                    .expect("read applies")
                    .into_iter()
                    .map(|r| {
                        let resume = r
                            .resume
                            .as_deref()
                            .map(|t| serde_json::from_str(t).expect("resume state JSON"))
                            .unwrap_or_default();
                        (
                            r.id,
                            RowView {
                                state: r.state,
                                attempt: r.attempt,
                                owner: r.lease_owner,
                                epoch: r.lease_epoch,
                                error: r.error_message,
                                resume,
                                lease_acquired_at: r.lease_acquired_at_us.map(ms),
                                heartbeat_at: r.heartbeat_at_us.map(ms),
                                updated_at: ms(r.updated_at_us),
                                state_entered_at: ms(r.state_entered_at_us),
                            },
                        )
                    })
                    .collect()
            }
        }
    }

    /// Every operation row, by apply id.
    pub async fn operations(&self) -> Vec<(ApplyId, OperationView)> {
        match &self.backend {
            Backend::Memory { store, .. } => store
                .rows()
                .into_iter()
                .map(|r| {
                    let o = r.operations[0].clone();
                    (
                        r.id,
                        OperationView {
                            state: o.state.as_str().to_string(),
                            attempt: o.attempt,
                            owner: o.lease_owner,
                            epoch: o.lease_epoch,
                            lease_acquired_at: o.lease_acquired_at,
                            heartbeat_at: o.heartbeat_at,
                            updated_at: o.updated_at,
                        },
                    )
                })
                .collect(),
            Backend::MySql { store, base_us, .. } => {
                let ms = |us: i64| ((us - base_us).max(0) / 1000) as u64;
                let mut ops: Vec<_> = store
                    .stored_operations()
                    .await
                    .expect("read operations")
                    .into_iter()
                    .map(|o| {
                        (
                            o.apply,
                            OperationView {
                                state: o.state,
                                attempt: o.attempt,
                                owner: o.lease_owner,
                                epoch: o.lease_epoch,
                                lease_acquired_at: o.lease_acquired_at_us.map(ms),
                                heartbeat_at: o.heartbeat_at_us.map(ms),
                                updated_at: ms(o.updated_at_us),
                            },
                        )
                    })
                    .collect();
                ops.sort_by_key(|(id, _)| *id);
                ops
            }
        }
    }

    pub async fn operation(&self, id: ApplyId) -> OperationView {
        self.operations()
            .await
            .into_iter()
            .find(|(i, _)| *i == id)
            .map(|(_, o)| o)
            .expect("the operation exists")
    }

    /// Every task row, by apply and position.
    pub async fn tasks(&self) -> Vec<TaskView> {
        match &self.backend {
            Backend::Memory { store, .. } => store
                .rows()
                .into_iter()
                .flat_map(|r| {
                    let id = r.id;
                    r.tasks
                        .into_iter()
                        .enumerate()
                        .map(move |(seq, t)| TaskView {
                            apply: id,
                            seq: seq as u32,
                            state: t.state.as_str().to_string(),
                            attempt: t.attempt,
                            table: t.table,
                            error: t.error_message,
                        })
                })
                .collect(),
            Backend::MySql { store, .. } => store
                .stored_tasks()
                .await
                .expect("read tasks")
                .into_iter()
                .map(|t| TaskView {
                    apply: t.apply,
                    seq: t.seq,
                    state: t.state,
                    attempt: t.attempt,
                    table: t.table,
                    error: t.error_message,
                })
                .collect(),
        }
    }

    /// The task states of one apply, in order.
    pub async fn task_states(&self, id: ApplyId) -> Vec<String> {
        self.tasks()
            .await
            .into_iter()
            .filter(|t| t.apply == id)
            .map(|t| t.state)
            .collect()
    }

    /// Fault injection: set an operation row's state alone (a row another operator version
    /// may have left), leaving its lease and its apply as they are.
    pub async fn force_operation_state(&self, id: ApplyId, state: ApplyState) {
        match &self.backend {
            Backend::Memory { store, .. } => {
                assert!(store.force_operation_state(id, state), "apply {id} exists");
            }
            Backend::MySql { store, .. } => {
                sqlx::query("UPDATE apply_operations SET state = ? WHERE apply_id = ?")
                    .bind(state.as_str())
                    .bind(id)
                    .execute(store.pool())
                    .await
                    .expect("force the operation state");
            }
        }
    }

    /// Fault injection: alter an apply's stored DDL behind the operator's back, as an
    /// out-of-band `UPDATE` would; its reviewed fingerprint stays.
    pub async fn alter_stored_ddl(&self, id: ApplyId, ddl: &[&str]) {
        let ddl: Vec<String> = ddl.iter().map(|s| s.to_string()).collect();
        match &self.backend {
            Backend::Memory { store, .. } => {
                assert!(store.alter_stored_ddl(id, ddl), "apply {id} exists");
            }
            Backend::MySql { store, .. } => {
                sqlx::query("UPDATE applies SET ddl = ? WHERE id = ?")
                    .bind(serde_json::to_string(&ddl).unwrap())
                    .bind(id)
                    .execute(store.pool())
                    .await
                    .expect("alter the stored DDL");
            }
        }
    }

    /// Fault injection: give an operation row a lease epoch of its own, as if another lease
    /// had taken the operation, leaving its apply as it is.
    pub async fn force_operation_epoch(&self, id: ApplyId, epoch: u64) {
        match &self.backend {
            Backend::Memory { store, .. } => {
                let mut row = store.row(id).expect("the apply exists");
                row.operations[0].lease_epoch = epoch;
                store.put_row(row);
            }
            Backend::MySql { store, .. } => {
                sqlx::query("UPDATE apply_operations SET lease_epoch = ? WHERE apply_id = ?")
                    .bind(epoch)
                    .bind(id)
                    .execute(store.pool())
                    .await
                    .expect("force the operation epoch");
            }
        }
    }

    /// Everything the store holds of its applies: rows, operations, tasks, every request and
    /// the audit log (a write that changed nothing leaves this equal).
    pub async fn snapshot(&self) -> String {
        let mut requests = Vec::new();
        for (id, _) in self.rows().await {
            for op in ControlOp::ALL {
                requests.push((id, *op, self.request_status(id, *op).await));
            }
        }
        format!(
            "{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}",
            self.rows().await,
            self.operations().await,
            self.tasks().await,
            requests,
            self.audit().await
        )
    }

    pub async fn row(&self, id: ApplyId) -> RowView {
        self.rows()
            .await
            .into_iter()
            .find(|(i, _)| *i == id)
            .map(|(_, r)| r)
            .expect("the row exists")
    }

    /// A control request's status and message.
    pub async fn request_status(
        &self,
        id: ApplyId,
        op: ControlOp,
    ) -> Option<(ControlStatus, Option<String>)> {
        match &self.backend {
            Backend::Memory { store, .. } => {
                store.request_status(id, op).map(|r| (r.status, r.message))
            }
            Backend::MySql { store, .. } => store
                .stored_request(id, op)
                .await
                .expect("read request")
                .map(|r| (r.status.parse().expect("known status"), r.error_message)),
        }
    }

    pub async fn audit(&self) -> Vec<AuditView> {
        match &self.backend {
            Backend::Memory { store, .. } => store
                .audit()
                .into_iter()
                .map(|a| AuditView {
                    apply: a.apply,
                    from: a.from.as_str().into(),
                    to: a.to.as_str().into(),
                    epoch: a.epoch,
                    owner: a.owner,
                    cause: a.cause,
                    detail: a.detail,
                })
                .collect(),
            Backend::MySql { store, .. } => store
                .stored_logs()
                .await
                .expect("read logs")
                .into_iter()
                .map(|l| AuditView {
                    apply: l.apply,
                    from: l.from,
                    to: l.to,
                    epoch: l.epoch,
                    owner: l.owner,
                    cause: l.cause,
                    detail: l.detail,
                })
                .collect(),
        }
    }

    /// Drop the test database (best effort; the test server is thrown away anyway).
    pub async fn cleanup(self) {
        if let Backend::MySql { store, url, db, .. } = self.backend {
            store.pool().close().await;
            drop_database(&url, &db).await;
        }
    }
}

/// One test per name against each store: `memory::name` and `mysql::name` call `name(env)`.
#[allow(unused_macros)]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Env::memory()).await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(env) = super::Env::mysql().await {
                        super::$name(env).await;
                    }
                }
            )*
        }
    };
}
