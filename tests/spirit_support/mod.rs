//! The harness of the Spirit engine tests: the adapter configured to run the
//! `applyd-spirit-standin` executable in place of `spirit` against the test MariaDB (with the
//! stand-in's test knobs), a seeded `items` table, apply records, and probes that note what the
//! runner said along the way.

#![allow(dead_code, unused_imports)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use applyd::config::Secret;
use applyd::engine::spirit::{SpiritConfig, SpiritEngine};
use applyd::engine::Engine;
use applyd::machine::{ApplyOptions, ApplyState, EngineKind, Probe};
use applyd::store::progress::RunnerStart;
use applyd::store::{ApplyRecord, ApplySpec, Target};
use applyd::worker::{ApplySnapshot, Observation, ResumeState, RunnerStatus};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Executor};

pub const ROWS: i64 = 2000;

pub fn config(url: &str) -> SpiritConfig {
    let base = MySqlConnectOptions::from_str(url).expect("a mysql:// URL");
    SpiritConfig {
        binary: env!("CARGO_BIN_EXE_applyd-spirit-standin").into(),
        host: base.get_host().to_string(),
        port: base.get_port(),
        hosts: Default::default(),
        username: base.get_username().to_string(),
        password: Secret::new(std::env::var("APPLYD_TEST_DATABASE_PASSWORD").unwrap_or_default()),
        threads: 2,
        target_chunk_time: None,
        stop_timeout: Duration::from_secs(20),
        env: vec![
            ("APPLYD_STANDIN_CHUNK_ROWS".into(), "50".into()),
            ("APPLYD_STANDIN_CHUNK_DELAY_MS".into(), "15".into()),
            ("APPLYD_STANDIN_POLL_MS".into(), "20".into()),
            // Spirit checkpoints every 50 s; the tests' copies last a second or two.
            ("APPLYD_STANDIN_CHECKPOINT_MS".into(), "100".into()),
        ],
    }
}

/// As `config`, with Spirit's own checkpoint interval (50 s): nothing is saved in a short run.
pub fn config_with_spirits_checkpoint_interval(url: &str) -> SpiritConfig {
    let mut c = config(url);
    c.env.retain(|(k, _)| k != "APPLYD_STANDIN_CHECKPOINT_MS");
    c
}

pub fn record(db: &str, ddl: &str, options: ApplyOptions) -> ApplyRecord {
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

pub async fn connect(url: &str, db: &str) -> MySqlConnection {
    MySqlConnectOptions::from_str(url)
        .unwrap()
        .database(db)
        .connect()
        .await
        .unwrap()
}

pub async fn seed(url: &str, db: &str) {
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

pub async fn scalar(url: &str, db: &str, sql: &str) -> Option<i64> {
    let mut c = connect(url, db).await;
    let v: Option<i64> = sqlx::query_scalar(sql)
        .fetch_optional(&mut c)
        .await
        .ok()
        .flatten();
    c.close().await.ok();
    v
}

pub async fn has_column(url: &str, db: &str, column: &str) -> bool {
    scalar(
        url,
        db,
        &format!("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'items' AND COLUMN_NAME = '{column}'"),
    )
    .await
        == Some(1)
}

pub async fn watermark(url: &str, db: &str) -> i64 {
    scalar(
        url,
        db,
        "SELECT copier_watermark FROM _items_chkpnt WHERE id = 1",
    )
    .await
    .unwrap_or(0)
}

/// What the runner said along the way.
#[derive(Debug, Default)]
pub struct Said {
    pub resumed: bool,
    pub restarted: Option<String>,
    /// How the run began, as its replies report it for the task rows.
    pub start: Option<RunnerStart>,
}

/// Probe until `done` holds for the observation, noting whether the runner said it resumed.
pub async fn probe_until(
    engine: &SpiritEngine,
    apply: &ApplyRecord,
    what: &str,
    done: impl Fn(&Observation) -> bool,
) -> (Observation, bool) {
    let (obs, said) = probe_saying(engine, apply, what, done).await;
    (obs, said.resumed)
}

pub async fn probe_saying(
    engine: &SpiritEngine,
    apply: &ApplyRecord,
    what: &str,
    done: impl Fn(&Observation) -> bool,
) -> (Observation, Said) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = Said::default();
    loop {
        if let Some(p) = engine.progress(apply) {
            said.resumed |= p.resumed;
            said.restarted = said.restarted.or(p.restarted);
        }
        let reply = engine
            .probe(apply, apply.row.epoch, Probe::RunnerStatus)
            .await;
        if let Some(start) = reply.progress.and_then(|p| p.start) {
            said.start = Some(start);
        }
        let obs = reply.obs;
        if done(&obs) {
            return (obs, said);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last {obs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn setup() -> Option<(String, String)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("applyd=info")
        .with_test_writer()
        .try_init();
    let url = super::store_support::mysql_url()?;
    let (_, db) = super::store_support::fresh_database(&url).await;
    seed(&url, &db).await;
    Some((url, db))
}

pub fn finished(o: &Observation) -> bool {
    matches!(
        o,
        Observation::Runner(RunnerStatus::Completed | RunnerStatus::Failed { .. })
    )
}

pub async fn table_exists(url: &str, db: &str, table: &str) -> bool {
    scalar(
        url,
        db,
        &format!("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{table}'"),
    )
    .await
        == Some(1)
}

pub async fn rows_in(url: &str, db: &str, table: &str) -> i64 {
    scalar(url, db, &format!("SELECT COUNT(*) FROM `{table}`"))
        .await
        .unwrap_or(0)
}
