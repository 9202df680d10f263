//! The harness of the PlanetScale engine tests: the fake PlanetScale server served in-process
//! over loopback, a stand-in for a branch's MySQL endpoint, and the apply records and stores the
//! tests drive.

#![allow(dead_code, unused_imports)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use applyd::config::Secret;
use applyd::engine::fake_server::{quick_timings, router, FakeServerOptions, Faults};
use applyd::engine::planetscale::{
    BranchCredentials, BranchSql, BranchSqlError, MySqlBranchSql, PlanetScaleClient,
    PlanetScaleEngine,
};
use applyd::engine::{Engine, Reply};
use applyd::machine::{ApplyOptions, ApplyState, EngineCall, EngineKind, Params, Probe, Rules};
use applyd::operator::{run_drive, Pacing};
use applyd::store::memory::{ManualClock, MemoryStore};
use applyd::store::{ApplyRecord, NewApply, Target};
use applyd::worker::{ApplyId, Finish, Observation, WaitFor};
use async_trait::async_trait;
use serde_json::Value;

pub const STALE_MS: u64 = 10_000;

pub fn rules() -> Rules {
    Rules::new(Params {
        stale_after_ms: STALE_MS,
        presumed_loss_ms: 7_000,
        revert_window_ms: 60_000,
        ..Params::DEFAULT
    })
}

/// Records the DDL instead of reaching a branch's MySQL endpoint.
#[derive(Default)]
pub struct RecordingBranchSql {
    pub applied: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

#[async_trait]
impl BranchSql for RecordingBranchSql {
    async fn apply(&self, conn: &BranchCredentials, ddl: &[String]) -> Result<(), BranchSqlError> {
        assert!(conn.password.expose().starts_with("pscale_pw_fake_"));
        self.applied
            .lock()
            .unwrap()
            .push((conn.branch.clone(), ddl.to_vec()));
        Ok(())
    }
}

pub struct Fake {
    pub url: String,
    pub http: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Fake {
    pub async fn start(faults: Faults, token: Option<(&str, &str)>) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = FakeServerOptions {
            faults,
            seed: 7,
            timings: quick_timings(30),
            token: token.map(|(a, b)| (a.to_string(), b.to_string())),
            branch_server: None,
        };
        tokio::spawn(async move {
            axum::serve(listener, router(opts))
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Fake {
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
            _shutdown: tx,
        }
    }

    pub fn client(&self, token: &str, attempts: u32) -> PlanetScaleClient {
        PlanetScaleClient::new(
            &format!("{}/v1", self.url),
            "acme",
            "tid",
            &Secret::new(token),
            Duration::from_secs(5),
            attempts,
            Duration::from_millis(5),
        )
        .unwrap()
    }

    pub fn engine(&self, attempts: u32) -> (PlanetScaleEngine, Arc<RecordingBranchSql>) {
        let sql = Arc::new(RecordingBranchSql::default());
        let e = PlanetScaleEngine::new(
            self.client("secret-token", attempts),
            Some("shop".into()),
            "main".into(),
            sql.clone(),
        );
        (e, sql)
    }

    /// FAKE-ONLY inspection of every deploy request.
    pub async fn requests(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_fake/deploy-requests", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["deploy_requests"].as_array().cloned().unwrap_or_default()
    }

    pub async fn admin(&self) -> Value {
        self.http
            .get(format!("{}/_fake/deploy-requests", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Waits on tokio time between polls; the fake moves on the wall clock.
pub struct Sleepy;

#[async_trait]
impl Pacing for Sleepy {
    async fn wait(&self, _why: WaitFor) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fn heartbeat_ok_age_ms(&self) -> u64 {
        0
    }
}

/// Forwards everything; after forwarding a `CreateDeployRequest` it never answers, so the
/// drive can be aborted right between the create and the persist of its id.
pub struct HangAfterCreate<'a>(pub &'a dyn Engine);

#[async_trait]
impl Engine for HangAfterCreate<'_> {
    async fn probe(&self, a: &ApplyRecord, epoch: u64, p: Probe) -> Reply {
        self.0.probe(a, epoch, p).await
    }
    async fn call(&self, a: &ApplyRecord, epoch: u64, c: EngineCall) -> Reply {
        let obs = self.0.call(a, epoch, c).await;
        if c == EngineCall::CreateDeployRequest {
            std::future::pending::<()>().await;
        }
        obs
    }
}

pub fn store() -> (Arc<MemoryStore>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = Arc::new(MemoryStore::new(rules(), clock.clone()));
    (store, clock)
}

pub fn submit(store: &MemoryStore, options: ApplyOptions) -> ApplyId {
    store
        .submit(NewApply {
            allow_destructive: false,
            rollout: None,
            target: Target {
                database: "shop".into(),
                environment: "production".into(),
            },
            engine: EngineKind::PlanetScale,
            ddl: vec!["ALTER TABLE orders ADD COLUMN note TEXT".into()],
            options,
        })
        .unwrap()
}

pub async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An apply record whose deploy request is `number`, on branch `applyd-<identifier>`.
pub fn record_with_request(identifier: &str, number: u64) -> ApplyRecord {
    ApplyRecord {
        row: applyd::worker::ApplySnapshot {
            id: 11,
            operation: 11,
            engine: EngineKind::PlanetScale,
            state: ApplyState::Running,
            epoch: 1,
            attempt: 0,
            options: Default::default(),
            resume: applyd::worker::ResumeState {
                branch: true,
                deploy_request_intent: true,
                deploy_request_id: Some(number),
            },
        },
        spec: Arc::new(applyd::store::ApplySpec {
            identifier: identifier.into(),
            target: Target {
                database: "shop".into(),
                environment: "test".into(),
            },
            deployment: String::new(),
            ddl: vec!["ALTER TABLE t ADD c INT".into()],
            fingerprint: None,
        }),
    }
}

impl Fake {
    /// A deploy request opened for `identifier`'s branch.
    pub async fn open_request(&self, identifier: &str) -> u64 {
        let client = self.client("secret-token", 1);
        let branch = applyd::engine::fake::branch_name(identifier);
        client.create_branch("shop", &branch, "main").await.unwrap();
        client
            .create_deploy_request("shop", &branch, "main", false)
            .await
            .unwrap()
            .number
    }

    /// FAKE-ONLY: report `state` for the next `reads` reads of deploy request `number`.
    pub async fn report(&self, number: u64, state: &str, reads: u32) {
        self.report_fields(
            number,
            serde_json::json!({ "deployment_state": state, "reads": reads }),
        )
        .await
    }

    /// FAKE-ONLY: report the given fields (and `reads`) instead of the truth.
    pub async fn report_fields(&self, number: u64, fields: Value) {
        let r = self
            .http
            .post(format!(
                "{}/_fake/deploy-requests/{number}/report",
                self.url
            ))
            .json(&fields)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
}
