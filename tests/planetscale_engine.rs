//! The real PlanetScale client and engine against the fake PlanetScale server over loopback:
//! a crash between creating a deploy request and persisting its id, 5xx storms with lost
//! replies, a deploy request deleted server-side, the token kept out of errors, and the
//! `applyd fake-planetscale` command itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use applyd::config::Secret;
use applyd::engine::fake_server::{quick_timings, router, FakeServerOptions, Faults};
use applyd::engine::planetscale::{
    BranchCredentials, BranchSql, PlanetScaleClient, PlanetScaleEngine,
};
use applyd::engine::Engine;
use applyd::machine::{ApplyOptions, ApplyState, EngineCall, EngineKind, Params, Probe, Rules};
use applyd::operator::{run_drive, Pacing};
use applyd::store::memory::{ManualClock, MemoryStore};
use applyd::store::{ApplyRecord, NewApply, Target};
use applyd::worker::{ApplyId, Finish, Observation, WaitFor};
use async_trait::async_trait;
use serde_json::Value;

const STALE_MS: u64 = 10_000;

fn rules() -> Rules {
    Rules::new(Params {
        stale_after_ms: STALE_MS,
        presumed_loss_ms: 7_000,
        revert_window_ms: 60_000,
        ..Params::DEFAULT
    })
}

/// Records the DDL instead of reaching a branch's MySQL endpoint.
#[derive(Default)]
struct RecordingBranchSql {
    applied: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

#[async_trait]
impl BranchSql for RecordingBranchSql {
    async fn apply(&self, conn: &BranchCredentials, ddl: &[String]) -> Result<(), String> {
        assert!(conn.password.expose().starts_with("pscale_pw_fake_"));
        self.applied
            .lock()
            .unwrap()
            .push((conn.branch.clone(), ddl.to_vec()));
        Ok(())
    }
}

struct Fake {
    url: String,
    http: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Fake {
    async fn start(faults: Faults, token: Option<(&str, &str)>) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = FakeServerOptions {
            faults,
            seed: 7,
            timings: quick_timings(30),
            token: token.map(|(a, b)| (a.to_string(), b.to_string())),
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

    fn client(&self, token: &str, attempts: u32) -> PlanetScaleClient {
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

    fn engine(&self, attempts: u32) -> (PlanetScaleEngine, Arc<RecordingBranchSql>) {
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
    async fn requests(&self) -> Vec<Value> {
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

    async fn admin(&self) -> Value {
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
struct Sleepy;

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
struct HangAfterCreate<'a>(&'a dyn Engine);

#[async_trait]
impl Engine for HangAfterCreate<'_> {
    async fn probe(&self, a: &ApplyRecord, epoch: u64, p: Probe) -> Observation {
        self.0.probe(a, epoch, p).await
    }
    async fn call(&self, a: &ApplyRecord, epoch: u64, c: EngineCall) -> Observation {
        let obs = self.0.call(a, epoch, c).await;
        if c == EngineCall::CreateDeployRequest {
            std::future::pending::<()>().await;
        }
        obs
    }
}

fn store() -> (Arc<MemoryStore>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = Arc::new(MemoryStore::new(rules(), clock.clone()));
    (store, clock)
}

fn submit(store: &MemoryStore, options: ApplyOptions) -> ApplyId {
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

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_create_and_persist_then_resume_makes_exactly_one_deploy_request() {
    let fake = Fake::start(Faults::default(), None).await;
    let (engine, sql) = fake.engine(3);
    let engine = Arc::new(engine);
    let (store, clock) = store();
    let id = submit(
        &store,
        ApplyOptions {
            skip_revert: true,
            ..Default::default()
        },
    );
    let r = rules();

    // Worker A: dies right after the deploy request is created, before its id is persisted.
    let claimed = store.claim("worker-a").unwrap().expect("claimable");
    let (s, e, rr) = (store.clone(), engine.clone(), r);
    let a = tokio::spawn(async move {
        let hang = HangAfterCreate(e.as_ref());
        run_drive(s.as_ref(), &hang, &claimed, &rr, &Sleepy, 10_000).await
    });
    until("worker A to create a deploy request", || async {
        fake.requests().await.len() == 1
    })
    .await;
    a.abort();
    let row = store.row(id).unwrap();
    assert_eq!(row.state, ApplyState::CreatingDeployRequest);
    assert!(row.resume.deploy_request_intent && row.resume.deploy_request_id.is_none());

    // Worker B reclaims the stale row and resumes: it must find the request, not open another.
    clock.advance(STALE_MS + 1);
    let claimed = store
        .claim("worker-b")
        .unwrap()
        .expect("stale row reclaimable");
    let report = run_drive(
        store.as_ref(),
        engine.as_ref(),
        &claimed,
        &r,
        &Sleepy,
        20_000,
    )
    .await;
    assert_eq!(report.finish, Finish::Settled, "{report:?}");
    assert_eq!(store.row(id).unwrap().state, ApplyState::Completed);
    let requests = fake.requests().await;
    assert_eq!(
        requests.len(),
        1,
        "exactly one deploy request: {requests:?}"
    );
    assert_eq!(requests[0]["deploys"], 1, "deployed once: {requests:?}");
    assert_eq!(requests[0]["deployment_state"], "complete");
    assert!(!sql.applied.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_xx_storms_and_lost_replies_never_duplicate_and_still_finish() {
    let fake = Fake::start(
        Faults {
            fail_rate: 0.35,
            lose_rate: 0.2,
            latency_ms: 0,
        },
        None,
    )
    .await;
    let (engine, _) = fake.engine(3);
    let (store, _clock) = store();
    let id = submit(
        &store,
        ApplyOptions {
            skip_revert: true,
            ..Default::default()
        },
    );
    let r = rules();
    let claimed = store.claim("worker").unwrap().unwrap();
    let report = run_drive(store.as_ref(), &engine, &claimed, &r, &Sleepy, 50_000).await;
    assert_eq!(report.finish, Finish::Settled, "{report:?}");
    assert_eq!(store.row(id).unwrap().state, ApplyState::Completed);
    let admin = fake.admin().await;
    let requests = admin["deploy_requests"].as_array().unwrap();
    assert_eq!(
        requests.len(),
        1,
        "exactly one deploy request: {requests:?}"
    );
    assert!(
        admin["injected_failures"].as_u64().unwrap() > 0
            && admin["lost_replies"].as_u64().unwrap() > 0,
        "the storm really happened: {admin}"
    );
    // Every branch password applyd made (also one whose reply was lost) was deleted.
    assert!(admin["passwords_made"].as_u64().unwrap() >= 1, "{admin}");
    assert_eq!(admin["passwords_alive"], 0, "{admin}");
}

/// A password create retried after a lost reply leaves a second password alive: both carry the
/// apply's name prefix, and both are deleted once the DDL is applied.
#[tokio::test]
async fn branch_passwords_are_named_per_drive_and_deleted_after_use() {
    let fake = Fake::start(Faults::default(), None).await;
    let client = fake.client("secret-token", 1);
    let branch = "applyd-apply-9";
    client.create_branch("shop", branch, "main").await.unwrap();
    let name = applyd::engine::planetscale::password_name(branch, 3);
    // The "lost" first reply and the retry.
    client.create_password("shop", branch, &name).await.unwrap();
    client.create_password("shop", branch, &name).await.unwrap();
    // Someone else's password on the same branch is not applyd's to delete, nor is a newer
    // lease's.
    client
        .create_password("shop", branch, "a-person")
        .await
        .unwrap();
    let newer = applyd::engine::planetscale::password_name(branch, 5);
    client
        .create_password("shop", branch, &newer)
        .await
        .unwrap();
    assert_eq!(
        client.list_passwords("shop", branch).await.unwrap().len(),
        4
    );
    let (engine, sql) = fake.engine(1);
    let mut apply = applyd::store::ApplyRecord {
        row: applyd::worker::ApplySnapshot {
            id: 9,
            operation: 9,
            engine: applyd::machine::EngineKind::PlanetScale,
            state: ApplyState::ApplyingBranchChanges,
            epoch: 4,
            attempt: 0,
            options: Default::default(),
            resume: Default::default(),
        },
        spec: Arc::new(applyd::store::ApplySpec {
            identifier: "apply-9".into(),
            target: applyd::store::Target {
                database: "shop".into(),
                environment: "test".into(),
            },
            deployment: String::new(),
            ddl: vec!["ALTER TABLE t ADD c INT".into()],
            fingerprint: None,
        }),
    };
    apply.row.epoch = 4;
    assert_eq!(
        applyd::engine::fake::branch_name("apply-9"),
        branch,
        "the branch the engine drives"
    );
    let obs = engine
        .call(&apply, 4, applyd::machine::EngineCall::ApplyBranchChanges)
        .await;
    assert_eq!(obs, Observation::BranchDiff { pending: false });
    assert_eq!(sql.applied.lock().unwrap().len(), 1);
    let left = client.list_passwords("shop", branch).await.unwrap();
    let mut left: Vec<&str> = left.iter().map(|p| p.name.as_str()).collect();
    left.sort();
    assert_eq!(
        left,
        vec!["a-person", newer.as_str()],
        "this drive's and older passwords deleted; a person's and a newer lease's kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_request_deleted_server_side_fails_the_apply() {
    let fake = Fake::start(Faults::default(), None).await;
    let (engine, _) = fake.engine(2);
    let engine = Arc::new(engine);
    let (store, clock) = store();
    let id = submit(
        &store,
        ApplyOptions {
            defer_deploy: true,
            ..Default::default()
        },
    );
    let r = rules();
    let drive = |claimed: &applyd::store::Claimed| {
        let (store, engine, claimed) = (store.clone(), engine.clone(), claimed.clone());
        async move {
            tokio::time::timeout(
                Duration::from_secs(20),
                run_drive(
                    store.as_ref(),
                    engine.as_ref(),
                    &claimed,
                    &r,
                    &Sleepy,
                    50_000,
                ),
            )
            .await
            .unwrap()
        }
    };
    let claimed = store.claim("worker").unwrap().unwrap();
    // The deferred deploy is a wait for a person: the drive parks it and gives its driver back.
    let report = drive(&claimed).await;
    assert_eq!(report.finish, Finish::Parked, "{report:?}");
    let row = store.row(id).unwrap();
    assert_eq!(
        (row.state, row.lease_owner),
        (ApplyState::WaitingForDeploy, None)
    );
    let number = row.resume.deploy_request_id.unwrap();
    fake.http
        .delete(format!("{}/_fake/deploy-requests/{number}", fake.url))
        .send()
        .await
        .unwrap();
    // At its wake time a driver looks at the deploy request again and finds it gone.
    assert!(store.claim("worker").unwrap().is_none(), "parked");
    clock.advance(r.params.park_poll_ms);
    let claimed = store.claim("worker").unwrap().expect("woken");
    let report = drive(&claimed).await;
    assert_eq!(report.finish, Finish::Settled, "{report:?}");
    assert_eq!(store.row(id).unwrap().state, ApplyState::Failed);
    // And the probe says NotFound plainly.
    let record = ApplyRecord {
        row: applyd::worker::ApplySnapshot {
            id,
            operation: store.row(id).unwrap().operations[0].id,
            engine: EngineKind::PlanetScale,
            state: ApplyState::Running,
            epoch: 1,
            attempt: 0,
            options: Default::default(),
            resume: store.row(id).unwrap().resume,
        },
        spec: store.row(id).unwrap().spec,
    };
    assert_eq!(
        engine.probe(&record, 1, Probe::GetDeployRequest).await,
        Observation::Fault(applyd::worker::EngineFault::NotFound)
    );
}

#[tokio::test]
async fn the_service_token_never_appears_in_errors() {
    let fake = Fake::start(Faults::default(), Some(("tid", "right-token"))).await;
    let secret = "pscale_tkn_wrong_and_secret";
    let err = fake.client(secret, 1).get_organization().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(secret), "the token leaked: {text}");
    assert!(
        text.contains("refused the service token") && text.contains("401"),
        "{text}"
    );
    fake.client("right-token", 1)
        .get_organization()
        .await
        .unwrap();

    // Transient failures past the retries are reported as such, never as "start fresh".
    let dead = PlanetScaleClient::new(
        "http://127.0.0.1:9/v1",
        "acme",
        "tid",
        &Secret::new(secret),
        Duration::from_millis(200),
        2,
        Duration::from_millis(1),
    )
    .unwrap();
    let err = dead.get_database("shop").await.unwrap_err();
    assert_eq!(err.fault(), applyd::worker::EngineFault::Transient, "{err}");
    assert!(!err.to_string().contains(secret));
}

#[tokio::test]
async fn the_fake_planetscale_command_serves_the_api() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_applyd"))
        .args([
            "fake-engines",
            "--listen",
            "127.0.0.1:0",
            "--phase-ms",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .expect("announces its address");
    let client = PlanetScaleClient::new(
        &format!("http://{addr}/v1"),
        "acme",
        "tid",
        &Secret::new("whatever"),
        Duration::from_secs(5),
        1,
        Duration::from_millis(1),
    )
    .unwrap();
    client.get_organization().await.unwrap();
    client
        .create_branch("shop", "applyd-x", "main")
        .await
        .unwrap();
    // A second create of the same deterministic name is reuse, not an error.
    client
        .create_branch("shop", "applyd-x", "main")
        .await
        .unwrap();
    assert!(client
        .get_branch("shop", "applyd-x")
        .await
        .unwrap()
        .is_some());
    assert!(client
        .get_branch("shop", "applyd-y")
        .await
        .unwrap()
        .is_none());
    child.kill().await.unwrap();
}

/// A list cut at the page cap could hide the deploy request an apply already made, and the
/// apply would make a second: past the cap the list is an error, never a partial answer.
#[tokio::test]
async fn a_list_past_the_page_cap_is_an_error() {
    let fake = Fake::start(Faults::default(), None).await;
    let client = fake.client("secret-token", 1).with_list_limits(1, 1);
    client
        .create_branch("shop", "applyd-many", "main")
        .await
        .unwrap();
    for _ in 0..2 {
        client
            .create_deploy_request("shop", "applyd-many", "main", false)
            .await
            .unwrap();
    }
    let err = client
        .list_deploy_requests("shop", "applyd-many", "main")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("partial"), "{err}");
    let whole = fake
        .client("secret-token", 1)
        .list_deploy_requests("shop", "applyd-many", "main")
        .await
        .unwrap();
    assert_eq!(whole.len(), 2);
}

/// Error replies are read as the API writes them (`{code, message}`): the code is in the
/// error. A second create of the same branch succeeds (the branch is read back).
#[tokio::test]
async fn error_replies_keep_their_code_and_a_taken_branch_name_is_read_back() {
    let fake = Fake::start(Faults::default(), None).await;
    let client = fake.client("secret-token", 1);
    let err = client.get_deploy_request("shop", 999).await.unwrap_err();
    assert!(err.to_string().contains("code not_found"), "{err}");
    client
        .create_branch("shop", "applyd-twice", "main")
        .await
        .unwrap();
    client
        .create_branch("shop", "applyd-twice", "main")
        .await
        .unwrap();
}
