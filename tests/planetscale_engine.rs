//! The real PlanetScale client and engine against the fake PlanetScale server over loopback:
//! a crash between creating a deploy request and persisting its id, 5xx storms with lost
//! replies, a deploy request deleted server-side, the token kept out of errors, and the
//! `applyd fake-engines` command itself.

mod planetscale_support;

use std::sync::Arc;
use std::time::Duration;

use applyd::config::Secret;
use applyd::engine::fake_server::Faults;
use applyd::engine::planetscale::PlanetScaleClient;
use applyd::engine::Engine;
use applyd::machine::{ApplyOptions, ApplyState, EngineKind, Probe};
use applyd::operator::run_drive;
use applyd::store::ApplyRecord;
use applyd::worker::{Finish, Observation};
use planetscale_support::*;

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
    assert_eq!(obs.obs, Observation::BranchDiff { pending: false });
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
    // The row says why, in the API's words.
    let error = store.row(id).unwrap().error_message.unwrap();
    assert!(
        error.contains("GetDeployRequest") && error.contains("not found"),
        "{error}"
    );
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
        engine.probe(&record, 1, Probe::GetDeployRequest).await.obs,
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
