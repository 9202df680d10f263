//! The Spirit engine against the test MariaDB, running the `applyd-spirit-standin` executable in
//! place of `spirit` (Spirit cannot be installed here): stop then resume from the checkpoint,
//! the operator SIGKILLed mid-copy and another adapter resuming, deferred cutover (with a
//! restart while waiting on the sentinel), and bad DDL as a clear permanent failure.
//! Needs APPLYD_TEST_DATABASE_URL (scripts/test sets it); skipped locally without it, fails
//! under CI.

mod store_support;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use applyd::config::Secret;
use applyd::engine::spirit::{SpiritConfig, SpiritEngine};
use applyd::engine::Engine;
use applyd::machine::table::RunnerGone;
use applyd::machine::{ApplyOptions, ApplyState, EngineCall, EngineKind, Probe};
use applyd::store::{ApplyRecord, ApplySpec, Target};
use applyd::worker::{ApplySnapshot, Observation, ResumeState, RunnerStatus};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Executor};

const ROWS: i64 = 2000;
const ROLE_VAR: &str = "APPLYD_SPIRIT_TEST_OPERATOR_DB";

fn config(url: &str) -> SpiritConfig {
    let base = MySqlConnectOptions::from_str(url).expect("a mysql:// URL");
    SpiritConfig {
        binary: env!("CARGO_BIN_EXE_applyd-spirit-standin").into(),
        host: base.get_host().to_string(),
        port: base.get_port(),
        username: base.get_username().to_string(),
        password: Secret::new(std::env::var("APPLYD_TEST_DATABASE_PASSWORD").unwrap_or_default()),
        threads: 2,
        target_chunk_time: None,
        stop_timeout: Duration::from_secs(20),
        env: vec![
            ("APPLYD_STANDIN_CHUNK_ROWS".into(), "50".into()),
            ("APPLYD_STANDIN_CHUNK_DELAY_MS".into(), "15".into()),
            ("APPLYD_STANDIN_POLL_MS".into(), "20".into()),
        ],
    }
}

fn record(db: &str, ddl: &str, options: ApplyOptions) -> ApplyRecord {
    ApplyRecord {
        row: ApplySnapshot {
            id: 1,
            operation: 1,
            engine: EngineKind::Spirit,
            state: ApplyState::Running,
            epoch: 1,
            attempt: 0,
            options,
            resume: ResumeState::default(),
        },
        spec: Arc::new(ApplySpec {
            identifier: "apply-1".into(),
            target: Target {
                database: db.into(),
                environment: "test".into(),
            },
            deployment: String::new(),
            ddl: vec![ddl.into()],
            fingerprint: None,
        }),
    }
}

async fn connect(url: &str, db: &str) -> MySqlConnection {
    MySqlConnectOptions::from_str(url)
        .unwrap()
        .database(db)
        .connect()
        .await
        .unwrap()
}

async fn seed(url: &str, db: &str) {
    let mut c = connect(url, db).await;
    c.execute("CREATE TABLE items (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL)")
        .await
        .unwrap();
    for chunk in 0..(ROWS / 500) {
        let values: Vec<String> = (0..500)
            .map(|i| format!("('item-{}')", chunk * 500 + i))
            .collect();
        c.execute(format!("INSERT INTO items (name) VALUES {}", values.join(",")).as_str())
            .await
            .unwrap();
    }
    c.close().await.ok();
}

async fn scalar(url: &str, db: &str, sql: &str) -> Option<i64> {
    let mut c = connect(url, db).await;
    let v: Option<i64> = sqlx::query_scalar(sql)
        .fetch_optional(&mut c)
        .await
        .ok()
        .flatten();
    c.close().await.ok();
    v
}

async fn has_column(url: &str, db: &str, column: &str) -> bool {
    scalar(
        url,
        db,
        &format!("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'items' AND COLUMN_NAME = '{column}'"),
    )
    .await
        == Some(1)
}

async fn watermark(url: &str, db: &str) -> i64 {
    scalar(
        url,
        db,
        "SELECT copier_watermark FROM _items_chkpnt WHERE id = 1",
    )
    .await
    .unwrap_or(0)
}

/// Probe until `done` holds for the observation, noting whether the runner said it resumed.
async fn probe_until(
    engine: &SpiritEngine,
    apply: &ApplyRecord,
    what: &str,
    done: impl Fn(&Observation) -> bool,
) -> (Observation, bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut resumed = false;
    loop {
        resumed |= engine.progress(apply).is_some_and(|p| p.resumed);
        let obs = engine
            .probe(apply, apply.row.epoch, Probe::RunnerStatus)
            .await;
        if done(&obs) {
            return (obs, resumed);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last {obs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup() -> Option<(String, String)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("applyd=info")
        .with_test_writer()
        .try_init();
    let url = store_support::mysql_url()?;
    let (_, db) = store_support::fresh_database(&url).await;
    seed(&url, &db).await;
    Some((url, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_then_resume_from_the_checkpoint() {
    let Some((url, db)) = setup().await else {
        return;
    };
    let engine = SpiritEngine::new(config(&url));
    let mut apply = record(
        &db,
        "ALTER TABLE items ADD COLUMN note VARCHAR(32) NULL",
        Default::default(),
    );
    assert_eq!(
        engine.call(&apply, 1, EngineCall::StartRunner).await,
        Observation::Runner(RunnerStatus::Copying)
    );
    until("some rows copied", async || {
        watermark(&url, &db).await >= 300
    })
    .await;
    assert_eq!(
        engine.call(&apply, 1, EngineCall::StopRunner).await,
        Observation::Runner(RunnerStatus::Stopped)
    );
    let kept = watermark(&url, &db).await;
    assert!(
        (300..ROWS).contains(&kept),
        "checkpoint kept mid-copy: {kept}"
    );
    assert!(!has_column(&url, &db, "note").await, "not cut over yet");

    apply.row.epoch = 2;
    apply.row.state = ApplyState::Resuming;
    assert_eq!(
        engine.call(&apply, 2, EngineCall::StartRunner).await,
        Observation::Runner(RunnerStatus::Copying)
    );
    let (obs, resumed) = probe_until(&engine, &apply, "completion", |o| {
        matches!(
            o,
            Observation::Runner(RunnerStatus::Completed | RunnerStatus::Failed { .. })
        )
    })
    .await;
    assert_eq!(obs, Observation::Runner(RunnerStatus::Completed));
    assert!(resumed, "the second run resumed from the checkpoint");
    assert!(has_column(&url, &db, "note").await);
    assert_eq!(
        scalar(&url, &db, "SELECT COUNT(*) FROM items").await,
        Some(ROWS)
    );
    // A fresh adapter (after a restart) sees the change in place.
    let fresh = SpiritEngine::new(config(&url));
    assert_eq!(
        fresh.probe(&apply, 3, Probe::RunnerStatus).await,
        Observation::Runner(RunnerStatus::Gone(RunnerGone::NothingLeft))
    );
    store_support::drop_database(&url, &db).await;
}

/// Not a test of its own: the "operator" process of the kill test (re-executed by it with
/// `APPLYD_SPIRIT_TEST_OPERATOR_DB` set). Without the variable it does nothing.
#[tokio::test]
async fn spirit_operator_role() {
    let Ok(db) = std::env::var(ROLE_VAR) else {
        return;
    };
    let url = std::env::var(store_support::URL_VAR).unwrap();
    let engine = SpiritEngine::new(config(&url));
    let apply = record(
        &db,
        "ALTER TABLE items ADD COLUMN killed INT NULL",
        Default::default(),
    );
    let obs = engine.call(&apply, 1, EngineCall::StartRunner).await;
    println!("operator started: {obs:?}");
    // Runs until the parent kills this process.
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_copy_then_another_adapter_resumes() {
    let Some((url, db)) = setup().await else {
        return;
    };
    let mut operator = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "spirit_operator_role", "--nocapture"])
        .env(ROLE_VAR, &db)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    until("the operator's runner to copy", async || {
        watermark(&url, &db).await >= 200
    })
    .await;
    operator.kill().await.unwrap(); // SIGKILL: no cleanup in the operator at all
                                    // The orphaned runner got SIGTERM (parent-death signal) and gives up the table lock.
    until("the runner to let go of the table", async || {
        scalar(
            &url,
            &db,
            &format!("SELECT IS_FREE_LOCK('spirit_{db}.items')"),
        )
        .await
            == Some(1)
    })
    .await;
    let kept = watermark(&url, &db).await;
    assert!((1..ROWS).contains(&kept), "checkpoint mid-copy: {kept}");

    let engine = SpiritEngine::new(config(&url));
    let mut apply = record(
        &db,
        "ALTER TABLE items ADD COLUMN killed INT NULL",
        Default::default(),
    );
    apply.row.epoch = 2;
    assert_eq!(
        engine.probe(&apply, 2, Probe::RunnerStatus).await,
        Observation::Runner(RunnerStatus::Gone(RunnerGone::WorkLeft))
    );
    assert_eq!(
        engine.call(&apply, 2, EngineCall::StartRunner).await,
        Observation::Runner(RunnerStatus::Copying)
    );
    let (obs, resumed) = probe_until(&engine, &apply, "completion", |o| {
        matches!(
            o,
            Observation::Runner(RunnerStatus::Completed | RunnerStatus::Failed { .. })
        )
    })
    .await;
    assert_eq!(obs, Observation::Runner(RunnerStatus::Completed));
    assert!(
        resumed,
        "the new adapter's runner resumed from the checkpoint"
    );
    assert!(has_column(&url, &db, "killed").await);
    assert_eq!(
        scalar(&url, &db, "SELECT COUNT(*) FROM items").await,
        Some(ROWS)
    );
    store_support::drop_database(&url, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_cutover_waits_on_the_sentinel_and_survives_a_restart() {
    let Some((url, db)) = setup().await else {
        return;
    };
    let options = ApplyOptions {
        defer_cutover: true,
        ..Default::default()
    };
    let engine = SpiritEngine::new(config(&url));
    let mut apply = record(&db, "ALTER TABLE items ADD INDEX by_name (name)", options);
    engine.call(&apply, 1, EngineCall::StartRunner).await;
    probe_until(&engine, &apply, "the sentinel wait", |o| {
        *o == Observation::Runner(RunnerStatus::WaitingOnSentinel)
    })
    .await;
    // The operator restarts while Spirit waits: the runner stops, the sentinel stays.
    engine.call(&apply, 1, EngineCall::StopRunner).await;
    let restarted = SpiritEngine::new(config(&url));
    apply.row.epoch = 2;
    assert_eq!(
        restarted.probe(&apply, 2, Probe::RunnerStatus).await,
        Observation::Runner(RunnerStatus::Gone(RunnerGone::SentinelKept))
    );
    restarted.call(&apply, 2, EngineCall::StartRunner).await;
    probe_until(&restarted, &apply, "the sentinel wait again", |o| {
        *o == Observation::Runner(RunnerStatus::WaitingOnSentinel)
    })
    .await;
    let index = "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'items' AND INDEX_NAME = 'by_name'";
    assert_eq!(
        scalar(&url, &db, index).await,
        Some(0),
        "no cutover before the sentinel goes"
    );
    // An older epoch may not cut over.
    assert_eq!(
        restarted.call(&apply, 1, EngineCall::DropSentinel).await,
        Observation::Fault(applyd::worker::EngineFault::StaleEpoch)
    );
    assert_eq!(
        restarted.call(&apply, 2, EngineCall::DropSentinel).await,
        Observation::Accepted
    );
    let (obs, _) = probe_until(&restarted, &apply, "completion", |o| {
        matches!(
            o,
            Observation::Runner(RunnerStatus::Completed | RunnerStatus::Failed { .. })
        )
    })
    .await;
    assert_eq!(obs, Observation::Runner(RunnerStatus::Completed));
    assert_eq!(scalar(&url, &db, index).await, Some(1));
    store_support::drop_database(&url, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ddl_is_a_clear_permanent_failure() {
    let Some((url, db)) = setup().await else {
        return;
    };
    let engine = SpiritEngine::new(config(&url));
    let apply = record(
        &db,
        "ALTER TABLE items ADD COLUMN oops NOT_A_TYPE",
        Default::default(),
    );
    engine.call(&apply, 1, EngineCall::StartRunner).await;
    let (obs, _) = probe_until(&engine, &apply, "the failure", |o| {
        matches!(
            o,
            Observation::Runner(RunnerStatus::Completed | RunnerStatus::Failed { .. })
        )
    })
    .await;
    assert_eq!(
        obs,
        Observation::Runner(RunnerStatus::Failed { retryable: false })
    );
    assert_eq!(
        scalar(&url, &db, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_items_new'").await,
        Some(0),
        "no half-made copy left behind"
    );
    // Statements Spirit cannot take never start a process.
    let other = record(&db, "UPDATE items SET name = 'x'", Default::default());
    assert_eq!(
        engine.call(&other, 1, EngineCall::StartRunner).await,
        Observation::Runner(RunnerStatus::Failed { retryable: false })
    );
    store_support::drop_database(&url, &db).await;
}
