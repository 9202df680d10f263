//! Rows stored exactly as a case says: in MariaDB/MySQL through plain INSERTs (any state string,
//! any lease, times placed against the store's frozen clock), and in the memory store through
//! its fault-injection hooks.

use std::sync::Arc;

use applyd::machine::{ApplyOptions, Rules, TaskState};
use applyd::store::memory::{
    ManualClock, MemoryOperation, MemoryRequest, MemoryRow, MemoryStore, MemoryTask,
};
use applyd::store::mysql::MySqlStore;
use applyd::store::{ApplySpec, Target};
use applyd::worker::{ApplyId, ResumeState};
use sqlx::MySqlPool;

use crate::cases::{Case, Side};

/// The memory store's frozen "now" (ms), far above every age a case uses.
pub const NOW_MS: u64 = 1_000 * 24 * 60 * 60 * 1000;
/// The MySQL store's frozen "now": 2030-01-01 00:00:00 UTC, in µs since the epoch.
pub const NOW_US: i64 = 1_893_456_000_000_000;
/// Orders the memory store's claims and requests as their times order them.
const SEQ_BASE: u64 = 1 << 50;

/// Every apply's target is its own, so the one-active-apply rule never interferes.
fn target(id: ApplyId) -> Target {
    Target {
        database: format!("c{id}"),
        environment: "prod".into(),
    }
}

const DDL: &str = "ALTER TABLE users ADD COLUMN nickname VARCHAR(64)";

/// A MySQL store with its clock frozen at [`NOW_US`], on a database of its own.
pub struct MySqlCases {
    pub store: MySqlStore,
    url: String,
    db: String,
    next_id: ApplyId,
}

impl MySqlCases {
    pub async fn new(rules: Rules) -> Option<MySqlCases> {
        let url = crate::store_support::mysql_url()?;
        let (options, db) = crate::store_support::fresh_database(&url).await;
        let store = MySqlStore::connect_with(options, rules, 8)
            .await
            .expect("connect the store");
        store.migrate().await.expect("migrate");
        store.freeze_clock(NOW_US);
        Some(MySqlCases {
            store,
            url,
            db,
            next_id: 1,
        })
    }

    pub fn pool(&self) -> &MySqlPool {
        self.store.pool()
    }

    /// Store the cases; returns their apply ids, ascending (operation rows share the apply's id
    /// and creation time, so the operation claim's order is the same).
    pub async fn insert(&mut self, cases: &[&Case]) -> Vec<ApplyId> {
        let ids: Vec<ApplyId> = (0..cases.len() as u64).map(|i| self.next_id + i).collect();
        self.next_id += cases.len() as u64;
        let time = "(TIMESTAMP'1970-01-01 00:00:00' + INTERVAL ? MICROSECOND)";
        let at = |age: Option<u64>| age.map(|ms| NOW_US - ms as i64 * 1000);
        let options = serde_json::to_string(&ApplyOptions::default()).unwrap();
        let ddl = serde_json::to_string(&[DDL]).unwrap();
        let resume = serde_json::to_string(&ResumeState::default()).unwrap();
        let created = Some(NOW_US - 400 * 24 * 3_600_000_000);

        let wake = |w: Option<i64>| w.map(|ms| NOW_US + ms * 1000);
        let row = format!(
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {time}, {time}, {time}, {time}, {time}, {time}, ?)"
        );
        let sql = format!(
            "INSERT INTO applies (id, apply_identifier, database_name, environment, engine, state, \
             options, ddl, attempt, lease_owner, lease_epoch, lease_acquired_at, heartbeat_at, \
             state_entered_at, created_at, updated_at, parked_until, cutover_policy) VALUES {}",
            vec![row; cases.len()].join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (id, case) in ids.iter().zip(cases) {
            let a = &case.apply;
            let t = target(*id);
            q = q
                .bind(id)
                .bind(format!("apply-{id}"))
                .bind(t.database)
                .bind(t.environment)
                .bind(case.engine.stored())
                .bind(a.state.stored())
                .bind(&options)
                .bind(&ddl)
                .bind(a.attempt)
                .bind(a.lease.owner.then_some("owner"))
                .bind(a.lease.epoch)
                .bind(at(a.lease.acquired_age))
                .bind(at(a.lease.hb_age))
                .bind(at(Some(case.state_age)))
                .bind(created)
                .bind(at(Some(a.updated_age)))
                .bind(wake(a.lease.wake_in))
                .bind(case.rollout.then_some("rolling"));
        }
        q.execute(self.pool()).await.expect("insert applies");

        let with_op: Vec<(ApplyId, &Side, u64)> = ids
            .iter()
            .zip(cases)
            .filter_map(|(id, c)| c.op.as_ref().map(|o| (*id, o, c.state_age)))
            .collect();
        if !with_op.is_empty() {
            let row =
                format!("(?, ?, ?, ?, ?, ?, ?, {time}, {time}, {time}, {time}, {time}, {time})");
            let sql = format!(
                "INSERT INTO apply_operations (id, apply_id, state, engine_resume_state, attempt, \
                 lease_owner, lease_epoch, lease_acquired_at, heartbeat_at, created_at, updated_at, \
                 parked_until, state_entered_at) VALUES {}",
                vec![row; with_op.len()].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (id, o, state_age) in &with_op {
                q = q
                    .bind(id)
                    .bind(id)
                    .bind(o.state.stored())
                    .bind(&resume)
                    .bind(o.attempt)
                    .bind(o.lease.owner.then_some("owner"))
                    .bind(o.lease.epoch)
                    .bind(at(o.lease.acquired_age))
                    .bind(at(o.lease.hb_age))
                    .bind(created)
                    .bind(at(Some(o.updated_age)))
                    .bind(wake(o.lease.wake_in))
                    .bind(at(Some(*state_age)));
            }
            q.execute(self.pool()).await.expect("insert operations");
            let row = format!("(?, ?, 0, ?, ?, {time}, {time})");
            let sql = format!(
                "INSERT INTO tasks (apply_id, apply_operation_id, seq, ddl, state, created_at, updated_at) VALUES {}",
                vec![row; with_op.len()].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (id, _, _) in &with_op {
                q = q
                    .bind(id)
                    .bind(id)
                    .bind(DDL)
                    .bind(TaskState::Pending.as_str())
                    .bind(created)
                    .bind(created);
            }
            q.execute(self.pool()).await.expect("insert tasks");
        }

        let requests: Vec<_> = ids
            .iter()
            .zip(cases)
            .flat_map(|(id, c)| c.requests.iter().map(move |r| (*id, r)))
            .collect();
        if !requests.is_empty() {
            let row = format!("(?, ?, ?, {time}, {time})");
            let sql = format!(
                "INSERT INTO apply_control_requests (apply_id, operation, status, created_at, updated_at) VALUES {}",
                vec![row; requests.len()].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (id, r) in &requests {
                q = q
                    .bind(id)
                    .bind(r.op.as_str())
                    .bind(r.status.as_str())
                    .bind(at(Some(r.age)))
                    .bind(at(Some(r.age)));
            }
            q.execute(self.pool()).await.expect("insert requests");
        }
        ids
    }

    /// Remove applies with everything that hangs off them.
    pub async fn delete(&self, ids: &[ApplyId]) {
        if ids.is_empty() {
            return;
        }
        let sql = format!(
            "DELETE FROM applies WHERE id IN ({})",
            vec!["?"; ids.len()].join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id);
        }
        q.execute(self.pool()).await.expect("delete applies");
    }

    pub async fn cleanup(self) {
        self.store.pool().close().await;
        crate::store_support::drop_database(&self.url, &self.db).await;
    }
}

fn seq_at(age: u64) -> u64 {
    SEQ_BASE - age
}

/// A memory store (clock frozen at [`NOW_MS`]) holding the case as apply 1, or `None` when its
/// typed rows cannot hold the case (a string no state or engine has, no child rows).
pub fn memory_store(rules: Rules, case: &Case) -> Option<MemoryStore> {
    let engine = case.engine.typed()?;
    let state = case.apply.state.typed()?;
    let op = case.op.as_ref()?;
    let op_state = op.state.typed()?;
    let at = |age: u64| NOW_MS - age;
    let wake = |w: i64| NOW_MS.saturating_add_signed(w);
    let store = MemoryStore::new(rules, Arc::new(ManualClock::new(NOW_MS)));
    let a = &case.apply;
    let spec = Arc::new(ApplySpec {
        identifier: "apply-1".into(),
        target: target(1),
        deployment: String::new(),
        ddl: vec![DDL.into()],
        fingerprint: None,
    });
    store.put_row(MemoryRow {
        id: 1,
        spec: spec.clone(),
        engine,
        state,
        options: ApplyOptions::default(),
        resume: ResumeState::default(),
        attempt: a.attempt,
        lease_owner: a.lease.owner.then(|| "owner".into()),
        lease_epoch: a.lease.epoch,
        lease_acquired_at: a.lease.acquired_age.map(at),
        lease_acquired_seq: a.lease.acquired_age.map_or(0, seq_at),
        heartbeat_at: a.lease.hb_age.map(at),
        parked_until: a.lease.wake_in.map(wake),
        updated_at: at(a.updated_age),
        state_entered_at: at(case.state_age),
        created_at: 0,
        error_message: None,
        rollout: case
            .rollout
            .then(applyd::machine::rollout::RolloutPolicy::default),
        operations: vec![MemoryOperation {
            id: 1,
            deployment: String::new(),
            deployment_index: 0,
            step: 0,
            key: String::new(),
            spec,
            state: op_state,
            resume: ResumeState::default(),
            state_entered_at: at(case.state_age),
            error_message: None,
            failed_closed: false,
            acked: Vec::new(),
            attempt: op.attempt,
            lease_owner: op.lease.owner.then(|| "owner".into()),
            lease_epoch: op.lease.epoch,
            lease_acquired_at: op.lease.acquired_age.map(at),
            lease_acquired_seq: op.lease.acquired_age.map_or(0, seq_at),
            heartbeat_at: op.lease.hb_age.map(at),
            parked_until: op.lease.wake_in.map(wake),
            updated_at: at(op.updated_age),
            created_at: 0,
        }],
        tasks: vec![MemoryTask {
            operation: 0,
            state: TaskState::Pending,
            attempt: 0,
            table: Some("users".into()),
            error_message: None,
            progress: None,
        }],
    });
    for r in &case.requests {
        store.put_request(
            1,
            r.op,
            MemoryRequest {
                status: r.status,
                updated_at: at(r.age),
                updated_seq: seq_at(r.age),
                message: None,
                requested_at: at(r.age),
                requested_by: None,
            },
        );
    }
    Some(store)
}
