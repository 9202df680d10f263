//! Crash test of real processes on the real engine code: three `applyd serve` processes with
//! `engines.kind = "real"` and a 2 s lease. PlanetScale applies go through the real client to
//! `applyd fake-engines` (with 5xx and lost replies), whose branch passwords log in to MariaDB,
//! so the real branch connection applies their DDL there. Spirit applies run the real adapter,
//! which runs `applyd-spirit-standin` on MariaDB tables with rows. A loop SIGKILLs and restarts
//! an operator every few seconds, in setup, copies and cutovers alike (a Spirit runner dies with
//! its operator). Every apply must complete; each PlanetScale apply has exactly one deploy
//! request and no branch password left; each Spirit table is altered (its new column in place)
//! by at most one cutover RENAME with every row kept, and no `_new`, `_old`, checkpoint or
//! sentinel table is left behind.

mod serve_support;
mod store_support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::str::FromStr;
use std::time::{Duration, Instant};

use applyd::machine::{ApplyOptions, ApplyState, EngineKind, Rules};
use applyd::store::mysql::MySqlStore;
use applyd::store::status::Inspect;
use applyd::store::{NewApply, Store, Target};
use serve_support::{fake_engines, operator_command, signal};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Executor};

const STANDIN: &str = env!("CARGO_BIN_EXE_applyd-spirit-standin");
const SPIRIT_APPLIES: usize = 6;
const PLANETSCALE_APPLIES: usize = 6;
/// Rows per Spirit table: at 100 rows and 100 ms a chunk, a copy takes about 5 s, so kills land
/// in copies as well as between them.
const ROWS: i64 = 5_000;

struct Server {
    host: String,
    port: u16,
    username: String,
    password: String,
}

impl Server {
    fn of(url: &str) -> Server {
        let o = MySqlConnectOptions::from_str(url).expect("a mysql:// URL");
        Server {
            host: o.get_host().to_string(),
            port: o.get_port(),
            username: o.get_username().to_string(),
            password: std::env::var("APPLYD_TEST_DATABASE_PASSWORD").unwrap_or_default(),
        }
    }
}

fn config_text(server: &Server, engines_url: &str) -> String {
    format!(
        r#"[engines]
kind = "real"

[engines.planetscale]
organization = "crash"
api_url = "{engines_url}/v1"
service_token_id = "crash"
service_token = {{ value = "crash" }}
request_timeout_ms = 3000
attempts = 4
backoff_ms = 50

[engines.spirit]
binary = "{STANDIN}"
host = "{host}"
port = {port}
username = "{user}"
password = {{ value = "{password}" }}
threads = 2
stop_timeout_ms = 5000
"#,
        host = server.host,
        port = server.port,
        user = server.username,
        password = server.password,
    )
}

fn spawn_operator(db_url: &str, config: &Path, host: u32, cutovers: &Path) -> Child {
    operator_command(db_url, &format!("real-p{host}"), 2000)
        .env("APPLYD_CONFIG", config)
        // The stand-in's knobs reach it through the operator's environment.
        .env("APPLYD_STANDIN_CHUNK_ROWS", "100")
        .env("APPLYD_STANDIN_CHUNK_DELAY_MS", "100")
        .env("APPLYD_STANDIN_POLL_MS", "20")
        .env("APPLYD_STANDIN_CHECKPOINT_MS", "300")
        .env("APPLYD_STANDIN_CUTOVER_LOG", cutovers)
        .spawn()
        .expect("start applyd serve")
}

/// The operators the test started, killed however the test ends, and its files.
struct Cleanup {
    operators: Vec<Child>,
    files: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.operators {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

async fn connect(url: &str, db: &str) -> MySqlConnection {
    MySqlConnectOptions::from_str(url)
        .unwrap()
        .database(db)
        .connect()
        .await
        .expect("connect to a target schema")
}

/// A target schema with an `items` table of `rows` rows.
async fn seed_schema(url: &str, schema: &str, rows: i64) {
    let base = MySqlConnectOptions::from_str(url).unwrap();
    let mut c = base.connect().await.unwrap();
    c.execute(format!("CREATE DATABASE `{schema}`").as_str())
        .await
        .unwrap();
    c.close().await.ok();
    let mut c = connect(url, schema).await;
    c.execute("CREATE TABLE items (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL)")
        .await
        .unwrap();
    let mut next = 0;
    while next < rows {
        let values: Vec<String> = (next..(next + 500).min(rows))
            .map(|i| format!("('item-{i}')"))
            .collect();
        next += values.len() as i64;
        c.execute(format!("INSERT INTO items (name) VALUES {}", values.join(",")).as_str())
            .await
            .unwrap();
    }
    c.close().await.ok();
}

/// The schema's tables other than `items` and applyd's own state table.
async fn leftovers(url: &str, schema: &str) -> Vec<String> {
    let mut c = connect(url, schema).await;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME NOT IN ('items', ?)",
    )
    .bind(applyd::engine::spirit::STATE_TABLE)
    .fetch_all(&mut c)
    .await
    .unwrap();
    c.close().await.ok();
    names
}

async fn column_and_rows(url: &str, schema: &str) -> (bool, i64) {
    let mut c = connect(url, schema).await;
    let columns: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'items' AND COLUMN_NAME = 'added'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
        .fetch_one(&mut c)
        .await
        .unwrap();
    c.close().await.ok();
    (columns == 1, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_engines_survive_sigkills_and_do_their_work_once() {
    let Some(url) = store_support::mysql_url() else {
        return;
    };
    let (options, name) = store_support::fresh_database(&url).await;
    let db_url = format!("{}/{name}", url.trim_end_matches('/'));
    let store = MySqlStore::connect_with(options, Rules::default(), 8)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let server = Server::of(&url);

    let spirit_schemas: Vec<String> = (0..SPIRIT_APPLIES)
        .map(|i| format!("{name}_s{i}"))
        .collect();
    let planetscale_schemas: Vec<String> = (0..PLANETSCALE_APPLIES)
        .map(|i| format!("{name}_p{i}"))
        .collect();
    for s in &spirit_schemas {
        seed_schema(&url, s, ROWS).await;
    }
    for s in &planetscale_schemas {
        seed_schema(&url, s, 10).await;
    }

    let branch_server = format!("{}:{}", server.host, server.port);
    let (_engines, engines_url) = fake_engines(
        &[
            "--phase-ms",
            "1000",
            "--fail-rate",
            "0.05",
            "--lose-rate",
            "0.05",
            "--seed",
            "17",
            "--branch-server",
            &branch_server,
            "--branch-user",
            &server.username,
        ],
        &[("APPLYD_FAKE_BRANCH_PASSWORD", &server.password)],
    );
    let scratch = std::env::temp_dir().join(format!("applyd-real-crash-{name}"));
    let config = scratch.with_extension("toml");
    let cutovers = scratch.with_extension("cutovers");
    let mut cleanup = Cleanup {
        operators: Vec::new(),
        files: vec![config.clone(), cutovers.clone()],
    };
    std::fs::write(&config, config_text(&server, &engines_url)).unwrap();

    // Half the applies now, half in the middle of the kills.
    let (first_wave, second_wave): (Vec<_>, Vec<_>) = spirit_schemas
        .iter()
        .map(|s| (s.clone(), EngineKind::Spirit))
        .chain(
            planetscale_schemas
                .iter()
                .map(|s| (s.clone(), EngineKind::PlanetScale)),
        )
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let submit = async |wave: Vec<(usize, (String, EngineKind))>| {
        for (_, (schema, engine)) in wave {
            store
                .submit(NewApply {
                    allow_destructive: false,
                    rollout: None,
                    target: Target {
                        database: schema,
                        environment: "prod".into(),
                    },
                    engine,
                    ddl: vec!["ALTER TABLE items ADD COLUMN added INT NOT NULL DEFAULT 7".into()],
                    options: ApplyOptions {
                        skip_revert: true,
                        ..Default::default()
                    },
                })
                .await
                .expect("submit");
        }
    };
    submit(first_wave).await;
    let mut second_wave = Some(second_wave);

    cleanup.operators = (1..=3)
        .map(|h| spawn_operator(&db_url, &config, h, &cutovers))
        .collect();
    let mut next_host = 4u32;
    // A fixed pseudo-random sequence keeps the schedule reproducible.
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let chaos_until = Instant::now() + Duration::from_secs(25);
    let mut kills = 0;
    while Instant::now() < chaos_until {
        // The first kill lands while the applies are being set up.
        let pause = if kills == 0 {
            700
        } else {
            1_500 + next() % 2_000
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if kills == 4 {
            if let Some(wave) = second_wave.take() {
                submit(wave).await;
            }
        }
        let victim = (next() % cleanup.operators.len() as u64) as usize;
        let mut dead = std::mem::replace(
            &mut cleanup.operators[victim],
            spawn_operator(&db_url, &config, next_host, &cutovers),
        );
        next_host += 1;
        let _ = dead.kill();
        let _ = dead.wait();
        kills += 1;
    }

    let deadline = Instant::now() + Duration::from_secs(150);
    let statuses = loop {
        let all = store.list(100).await.expect("list");
        if all.iter().all(|a| a.state.is_terminal()) || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for p in &cleanup.operators {
        signal(p.id(), "-TERM");
    }

    assert_eq!(
        statuses.len(),
        SPIRIT_APPLIES + PLANETSCALE_APPLIES,
        "no apply lost"
    );
    let unfinished: Vec<String> = statuses
        .iter()
        .filter(|a| a.state != ApplyState::Completed)
        .map(|a| {
            format!(
                "{} {} {} error {:?}",
                a.identifier, a.target, a.state, a.error
            )
        })
        .collect();
    assert!(
        unfinished.is_empty(),
        "every apply completes: {unfinished:#?}"
    );
    assert!(kills >= 6, "the chaos loop ran: {kills} kills");
    // The kills hit work under way: applies of both engines were taken over by a later lease.
    let taken_over = |engine: EngineKind| {
        statuses
            .iter()
            .filter(|a| a.engine == engine && a.lease_epoch > 1)
            .count()
    };
    let (spirit_taken, planetscale_taken) = (
        taken_over(EngineKind::Spirit),
        taken_over(EngineKind::PlanetScale),
    );
    assert!(
        spirit_taken > 0 && planetscale_taken > 0,
        "kills reached both engines' work: {spirit_taken} Spirit and {planetscale_taken} \
         PlanetScale applies taken over"
    );

    // PlanetScale: one deploy request per apply, no branch password left alive, the DDL in
    // place on the database's schema (where the fake's branch passwords log in).
    let facts: applyd::engine::fake_server::Facts =
        reqwest::get(format!("{engines_url}/_fake/facts"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        facts.deploy_requests.len(),
        PLANETSCALE_APPLIES,
        "every PlanetScale apply opened its deploy request: {:?}",
        facts.deploy_requests
    );
    for (branch, n) in &facts.deploy_requests {
        assert_eq!(*n, 1, "branch {branch} has {n} deploy requests");
    }
    assert!(
        facts.passwords_alive.is_empty(),
        "branch passwords left alive: {:?}",
        facts.passwords_alive
    );
    for schema in &planetscale_schemas {
        let (changed, rows) = column_and_rows(&url, schema).await;
        assert!(changed, "{schema}: the branch DDL is in place");
        assert_eq!(rows, 10, "{schema}: rows kept");
    }

    // Spirit: each table altered once (one cutover RENAME), every row kept, nothing left.
    let log = std::fs::read_to_string(&cutovers).unwrap_or_default();
    for schema in &spirit_schemas {
        let (changed, rows) = column_and_rows(&url, schema).await;
        assert!(changed, "{schema}: the change is in place");
        assert_eq!(rows, ROWS, "{schema}: every row kept");
        let renames = log
            .lines()
            .filter(|l| *l == format!("{schema}.items"))
            .count();
        assert!(renames <= 1, "{schema}.items was cut over {renames} times");
        assert_eq!(
            leftovers(&url, schema).await,
            Vec::<String>::new(),
            "{schema}: Spirit's tables are gone"
        );
    }

    // The runner's progress reached the task rows through the operator, with how each run began.
    let mut starts = std::collections::BTreeMap::new();
    for a in statuses.iter().filter(|a| a.engine == EngineKind::Spirit) {
        let status = store.status(a.id).await.expect("status");
        let progress = status.tasks[0]
            .progress
            .clone()
            .unwrap_or_else(|| panic!("{}: no progress on its task row", a.identifier));
        assert!(
            progress.start.is_some() && progress.phase.is_some(),
            "{}: the task row says how its last run began: {progress:?}",
            a.identifier
        );
        *starts
            .entry(progress.start.map_or("unknown", |s| s.as_str()))
            .or_insert(0) += 1;
    }

    // Every write carried the epoch of the latest claim before it; the kills forced reclaims.
    let logs = store.stored_logs().await.expect("logs");
    let audit =
        applyd::store::audit::summarise(logs.iter().map(|l| applyd::store::audit::AuditFact {
            apply: l.apply,
            operation: l.operation,
            cause: &l.cause,
            epoch: l.epoch,
        }));
    assert!(audit.fencing_held(), "fencing failed: {audit:?}");
    assert!(audit.reclaims > 0, "the kills forced reclaims");
    eprintln!(
        "real-engine crash test: {kills} kills, {} reclaims, {spirit_taken} Spirit and \
         {planetscale_taken} PlanetScale applies taken over, {} cutovers logged, last runs \
         {starts:?}",
        audit.reclaims,
        log.lines().count()
    );
    for schema in spirit_schemas.iter().chain(&planetscale_schemas) {
        store_support::drop_database(&url, schema).await;
    }
    store_support::drop_database(&url, &name).await;
}
