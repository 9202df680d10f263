//! Differential test: random sequences of store operations applied to the memory store (the
//! reference) and to the MySQL store give the same results and leave the same rows.
//!
//! Both stores see the same clock steps (multiples of 10 s); MySQL's clock also moves in real
//! time while a case runs, so times are compared in 10 s buckets and every step is coarse
//! enough that the rules' thresholds (60 s, 30 min, 1 day) fall on the same side for both.

mod store_support;

use std::fmt::Debug;

use applyd::machine::{ApplyOptions, ApplyState, ControlOp, EngineKind};
use applyd::store::{Claimed, DriveInputs, Lease, NewApply, RequestOutcome, StoreError, Target};
use applyd::worker::{ApplyId, ResumeState};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use store_support::{AuditView, Env, OperationView, RowView};

const STEPS_MS: &[u64] = &[10_000, 30_000, 60_000, 60 * 60 * 1000, 12 * 60 * 60 * 1000];
const BUCKET_MS: u64 = 10_000;

#[derive(Debug, Clone)]
enum Op {
    Submit {
        target: usize,
        engine: EngineKind,
        options: ApplyOptions,
    },
    Claim {
        owner: usize,
    },
    ClaimOperation {
        owner: usize,
    },
    Write {
        lease: usize,
        to: ApplyState,
        resume: usize,
    },
    Heartbeat {
        lease: usize,
    },
    Release {
        lease: usize,
    },
    Load {
        lease: usize,
    },
    Request {
        apply: usize,
        op: ControlOp,
    },
    Complete {
        lease: usize,
        op: ControlOp,
    },
    Fail {
        lease: usize,
        op: ControlOp,
    },
    Expire,
    Advance {
        step: usize,
    },
}

fn resume_of(i: usize) -> ResumeState {
    match i % 3 {
        0 => ResumeState::default(),
        1 => ResumeState {
            branch: true,
            ..Default::default()
        },
        _ => ResumeState {
            branch: true,
            deploy_request_intent: true,
            deploy_request_id: Some(7),
        },
    }
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let state = prop::sample::select(ApplyState::ALL.to_vec());
    let op = prop::sample::select(ControlOp::ALL.to_vec());
    let engine = prop::sample::select(EngineKind::ALL.to_vec());
    let one = prop_oneof![
        3 => (0..3usize, engine, any::<bool>()).prop_map(|(target, engine, defer)| Op::Submit {
            target,
            engine,
            options: ApplyOptions { defer_deploy: defer, ..Default::default() },
        }),
        3 => (0..3usize).prop_map(|owner| Op::Claim { owner }),
        3 => (0..3usize).prop_map(|owner| Op::ClaimOperation { owner }),
        4 => (0..8usize, state, 0..3usize).prop_map(|(lease, to, resume)| Op::Write { lease, to, resume }),
        2 => (0..8usize).prop_map(|lease| Op::Heartbeat { lease }),
        1 => (0..8usize).prop_map(|lease| Op::Release { lease }),
        1 => (0..8usize).prop_map(|lease| Op::Load { lease }),
        3 => (0..4usize, op.clone()).prop_map(|(apply, op)| Op::Request { apply, op }),
        1 => (0..8usize, op.clone()).prop_map(|(lease, op)| Op::Complete { lease, op }),
        1 => (0..8usize, op).prop_map(|(lease, op)| Op::Fail { lease, op }),
        1 => Just(Op::Expire),
        3 => (0..STEPS_MS.len()).prop_map(|step| Op::Advance { step }),
    ];
    prop::collection::vec(one, 1..40)
}

/// One store's side of a run: its ids by submission order and the leases it handed out.
struct Side {
    env: Env,
    ids: Vec<ApplyId>,
    leases: Vec<Lease>,
}

/// A store-independent rendering of a result: ids become submission indexes.
type Outcome = String;

impl Side {
    fn index(&self, id: ApplyId) -> String {
        match self.ids.iter().position(|i| *i == id) {
            Some(i) => format!("#{i}"),
            None => "#ghost".into(),
        }
    }

    fn err(&self, e: &StoreError) -> String {
        match e {
            StoreError::LeaseLost { apply, epoch } => {
                format!("LeaseLost({}, {epoch})", self.index(*apply))
            }
            StoreError::RowGone(id) => format!("RowGone({})", self.index(*id)),
            StoreError::ActiveApplyExists { target, existing } => {
                format!("ActiveApplyExists({target}, {})", self.index(*existing))
            }
            StoreError::Refused(m) => format!("Refused({m})"),
            StoreError::Invalid { field, message } => format!("Invalid({field}, {message})"),
            StoreError::BadRow {
                apply,
                column,
                detail,
            } => format!("BadRow({}, {column}, {detail})", self.index(*apply)),
            StoreError::Unavailable(m) => panic!("store unavailable: {m}"),
        }
    }

    fn unit(&self, r: Result<(), StoreError>) -> Outcome {
        match r {
            Ok(()) => "ok".into(),
            Err(e) => self.err(&e),
        }
    }

    /// The lease at a position, or one for an apply that does not exist.
    fn lease(&self, i: usize) -> Lease {
        if self.leases.is_empty() {
            Lease {
                apply: 999_999,
                owner: "ghost".into(),
                epoch: 1,
            }
        } else {
            self.leases[i % self.leases.len()].clone()
        }
    }

    fn apply(&self, i: usize) -> ApplyId {
        self.ids.get(i).copied().unwrap_or(999_999)
    }

    fn claimed(&mut self, r: Result<Option<Claimed>, StoreError>) -> Outcome {
        match r {
            Ok(None) => "none".into(),
            Ok(Some(c)) => {
                let out = format!(
                    "{} {} epoch {} {} from {} -> {} attempt {} {:?} {:?} {} {:?}",
                    self.index(c.lease.apply),
                    c.lease.owner,
                    c.lease.epoch,
                    c.arm,
                    c.pre_claim,
                    c.record.row.state,
                    c.record.row.attempt,
                    c.record.row.resume,
                    c.record.row.options,
                    c.record.spec.target,
                    c.record.spec.ddl,
                );
                self.leases.push(c.lease);
                out
            }
            Err(e) => self.err(&e),
        }
    }

    fn loaded(&self, r: Result<DriveInputs, StoreError>) -> Outcome {
        match r {
            Ok(d) => format!(
                "{} {} epoch {} attempt {} {:?} {:?} revert_expired {}",
                self.index(d.record.row.id),
                d.record.row.state,
                d.record.row.epoch,
                d.record.row.attempt,
                d.record.row.resume,
                d.controls,
                d.revert_window_expired
            ),
            Err(e) => self.err(&e),
        }
    }

    async fn step(&mut self, op: &Op) -> Outcome {
        let store = self.env.store.clone();
        match op {
            Op::Submit {
                target,
                engine,
                options,
            } => {
                let new = NewApply {
                    allow_destructive: false,
                    rollout: None,
                    target: Target {
                        database: format!("t{target}"),
                        environment: "prod".into(),
                    },
                    engine: *engine,
                    ddl: vec![
                        "ALTER TABLE t ADD COLUMN c INT".into(),
                        "ALTER TABLE u DROP COLUMN d".into(),
                    ],
                    options: *options,
                };
                match store.submit(new).await {
                    Ok(id) => {
                        self.ids.push(id);
                        self.index(id)
                    }
                    Err(e) => self.err(&e),
                }
            }
            Op::Claim { owner } => {
                let r = store.claim(&format!("w{owner}")).await;
                self.claimed(r)
            }
            Op::ClaimOperation { owner } => {
                let r = store.claim_operation(&format!("w{owner}")).await;
                self.claimed(r)
            }
            Op::Write { lease, to, resume } => self.unit(
                store
                    .write(
                        &self.lease(*lease),
                        *to,
                        resume_of(*resume),
                        to.is_failure().then(|| format!("the engine refused {to}")),
                    )
                    .await,
            ),
            Op::Heartbeat { lease } => self.unit(store.heartbeat(&self.lease(*lease)).await),
            Op::Release { lease } => self.unit(store.release(&self.lease(*lease)).await),
            Op::Load { lease } => self.loaded(store.load(&self.lease(*lease)).await),
            Op::Request { apply, op } => match store.request(self.apply(*apply), *op).await {
                Ok(
                    o @ (RequestOutcome::Created
                    | RequestOutcome::AlreadyPending
                    | RequestOutcome::Reset),
                ) => format!("{o:?}"),
                Err(e) => self.err(&e),
            },
            Op::Complete { lease, op } => {
                self.unit(store.complete_request(&self.lease(*lease), *op).await)
            }
            Op::Fail { lease, op } => self.unit(
                store
                    .fail_request(&self.lease(*lease), *op, "refused in test")
                    .await,
            ),
            Op::Expire => match store.expire_retryable().await {
                Ok(n) => format!("expired {n}"),
                Err(e) => self.err(&e),
            },
            Op::Advance { step } => {
                self.env.advance(STEPS_MS[*step]);
                "advanced".into()
            }
        }
    }

    /// Rows (apply, operation, task), request statuses and audit, with ids as indexes and times
    /// in buckets.
    async fn snapshot(&self) -> Snapshot {
        let bucket = |t: u64| t / BUCKET_MS;
        let rows = self
            .env
            .rows()
            .await
            .into_iter()
            .map(|(id, mut r)| {
                r.lease_acquired_at = r.lease_acquired_at.map(bucket);
                r.heartbeat_at = r.heartbeat_at.map(bucket);
                r.updated_at = bucket(r.updated_at);
                r.state_entered_at = bucket(r.state_entered_at);
                (self.index(id), r)
            })
            .collect();
        let mut requests = Vec::new();
        for id in &self.ids {
            for op in ControlOp::ALL {
                if let Some(status) = self.env.request_status(*id, *op).await {
                    requests.push(format!("{} {op} {status:?}", self.index(*id)));
                }
            }
        }
        let audit = self
            .env
            .audit()
            .await
            .into_iter()
            .map(|mut a| {
                // Ids are compared through the rows; keep the entry's own fields.
                a.apply = self
                    .ids
                    .iter()
                    .position(|i| *i == a.apply)
                    .unwrap_or(usize::MAX) as ApplyId;
                a
            })
            .collect();
        let operations = self
            .env
            .operations()
            .await
            .into_iter()
            .map(|(id, mut o)| {
                o.lease_acquired_at = o.lease_acquired_at.map(bucket);
                o.heartbeat_at = o.heartbeat_at.map(bucket);
                o.updated_at = bucket(o.updated_at);
                (self.index(id), o)
            })
            .collect();
        let tasks = self
            .env
            .tasks()
            .await
            .into_iter()
            .map(|t| (self.index(t.apply), t.seq, t.state, t.attempt, t.error))
            .collect();
        Snapshot {
            rows,
            operations,
            tasks,
            requests,
            audit,
        }
    }
}

struct Snapshot {
    rows: Vec<(String, RowView)>,
    operations: Vec<(String, OperationView)>,
    tasks: Vec<(String, u32, String, u32, Option<String>)>,
    requests: Vec<String>,
    audit: Vec<AuditView>,
}

fn same<T: PartialEq + Debug>(
    what: &str,
    i: usize,
    op: &Op,
    memory: T,
    mysql: T,
) -> Result<(), TestCaseError> {
    if memory != mysql {
        return Err(TestCaseError::fail(format!(
            "{what} differs at step {i} ({op:?}):\n  memory: {memory:?}\n  mysql:  {mysql:?}"
        )));
    }
    Ok(())
}

async fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut memory = Side {
        env: Env::memory(),
        ids: Vec::new(),
        leases: Vec::new(),
    };
    let env = Env::mysql().await.expect("checked by the caller");
    let mut mysql = Side {
        env,
        ids: Vec::new(),
        leases: Vec::new(),
    };
    let mut result = Ok(());
    for (i, op) in ops.iter().enumerate() {
        let a = memory.step(op).await;
        let b = mysql.step(op).await;
        result = same("result", i, op, a, b);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        let (m, y) = (memory.snapshot().await, mysql.snapshot().await);
        let end = Op::Expire;
        result = same("final rows", ops.len(), &end, m.rows, y.rows)
            .and_then(|_| {
                same(
                    "final operations",
                    ops.len(),
                    &end,
                    m.operations,
                    y.operations,
                )
            })
            .and_then(|_| same("final tasks", ops.len(), &end, m.tasks, y.tasks))
            .and_then(|_| same("final requests", ops.len(), &end, m.requests, y.requests))
            .and_then(|_| same("audit", ops.len(), &end, m.audit, y.audit));
    }
    mysql.env.cleanup().await;
    result
}

#[test]
fn random_operation_sequences_agree_on_both_stores() {
    if store_support::mysql_url().is_none() {
        return;
    }
    let config = Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&ops(), |ops| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_case(ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
