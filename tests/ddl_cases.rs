//! What a change may contain, as one table of accepted and refused submissions, run through the
//! HTTP API, `applyd submit --ddl`, `applyd submit --file` and `applyd submit --plan`, with the
//! exact messages.

mod store_support;

use std::sync::Arc;

use applyd::api::{router, ApiState};
use applyd::machine::Rules;
use applyd::store::memory::{ManualClock, MemoryStore};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_applyd");

struct Case {
    engine: &'static str,
    ddl: &'static [&'static str],
    allow_destructive: bool,
    /// The tables it touches, or the exact refusal (after "invalid ddl: ").
    want: Result<&'static [&'static str], &'static str>,
}

const fn ok(
    engine: &'static str,
    ddl: &'static [&'static str],
    tables: &'static [&'static str],
) -> Case {
    Case {
        engine,
        ddl,
        allow_destructive: false,
        want: Ok(tables),
    }
}

const fn refused(engine: &'static str, ddl: &'static [&'static str], why: &'static str) -> Case {
    Case {
        engine,
        ddl,
        allow_destructive: false,
        want: Err(why),
    }
}

const fn destructive(
    engine: &'static str,
    ddl: &'static [&'static str],
    tables: &'static [&'static str],
) -> Case {
    Case {
        engine,
        ddl,
        allow_destructive: true,
        want: Ok(tables),
    }
}

const S: &str = "spirit";
const P: &str = "planetscale";
/// The exact refusal of a statement that is not a schema change.
macro_rules! not_ddl {
    ($what:literal) => {
        concat!(
            "statement 1 is ",
            $what,
            ", not a schema change (accepted: ALTER TABLE, CREATE TABLE, DROP TABLE, \
             CREATE INDEX, DROP INDEX, RENAME TABLE)"
        )
    };
}

/// Every case targets database `shop`.
#[rustfmt::skip]
const CASES: &[Case] = &[
    // Each kind of schema change.
    ok(S, &["ALTER TABLE users ADD COLUMN nickname VARCHAR(64)"], &["users"]),
    ok(S, &["alter table users add column c int"], &["users"]),
    ok(S, &["ALTER TABLE shop.users ADD COLUMN c INT"], &["users"]),
    ok(S, &["CREATE TABLE audit (id BIGINT PRIMARY KEY)"], &["audit"]),
    ok(S, &["CREATE INDEX ix_email ON users (email)"], &["users"]),
    ok(S, &["CREATE UNIQUE INDEX ux_email ON users (email)"], &["users"]),
    ok(S, &["RENAME TABLE users TO customers"], &["users"]),
    ok(S, &["ALTER TABLE users RENAME COLUMN nick TO nickname"], &["users"]),
    ok(P, &["ALTER TABLE users RENAME TO customers"], &["users"]),
    ok(P, &["ALTER TABLE users ADD CONSTRAINT fk_org FOREIGN KEY (org_id) REFERENCES orgs (id)"], &["users"]),
    // Several statements: Spirit only as one atomic set of ALTERs.
    ok(S, &["ALTER TABLE users ADD COLUMN a INT", "ALTER TABLE orders ADD COLUMN b INT"], &["users", "orders"]),
    ok(S, &["ALTER TABLE users ADD COLUMN a INT", "CREATE INDEX ix_a ON users (a)"], &["users"]),
    refused(S, &["ALTER TABLE users ADD COLUMN a INT", "CREATE TABLE t2 (id INT PRIMARY KEY)"],
        "a Spirit change of several statements must be ALTER TABLE (or CREATE/DROP INDEX) only; statement 2 is CREATE TABLE"),
    ok(P, &["ALTER TABLE users ADD COLUMN a INT", "CREATE TABLE t2 (id INT PRIMARY KEY)"], &["users", "t2"]),
    // String literals, comments and quoted names holding `;`, and unicode names.
    ok(S, &["ALTER TABLE users ADD COLUMN note VARCHAR(20) DEFAULT 'a;b'"], &["users"]),
    ok(S, &["ALTER TABLE users ADD COLUMN c INT /* why; because */"], &["users"]),
    ok(S, &["-- adds c; see ticket\nALTER TABLE users ADD COLUMN c INT"], &["users"]),
    ok(S, &["ALTER TABLE `order` ADD COLUMN `a;b` INT"], &["order"]),
    ok(S, &["CREATE TABLE café (id INT PRIMARY KEY)"], &["café"]),
    ok(S, &["ALTER TABLE `用户` ADD COLUMN 名字 VARCHAR(10)"], &["用户"]),
    // The destructive gate, each kind, then the same statements allowed.
    refused(S, &["DROP TABLE legacy"], "statement 1 drops table legacy and every row in it; submit with allow_destructive to apply it"),
    refused(S, &["ALTER TABLE users DROP COLUMN nickname"], "statement 1 drops column users.nickname and its data; submit with allow_destructive to apply it"),
    refused(S, &["DROP INDEX ix_email ON users"], "statement 1 drops index ix_email of users; submit with allow_destructive to apply it"),
    refused(S, &["ALTER TABLE users DROP INDEX ix_email"], "statement 1 drops index ix_email of users; submit with allow_destructive to apply it"),
    refused(S, &["ALTER TABLE users MODIFY COLUMN age BIGINT"], "statement 1 redefines column users.age, which can truncate or convert its data; submit with allow_destructive to apply it"),
    refused(S, &["ALTER TABLE users CHANGE age years INT"], "statement 1 redefines column users.age, which can truncate or convert its data; submit with allow_destructive to apply it"),
    refused(P, &["ALTER TABLE users DROP FOREIGN KEY fk_org"], "statement 1 drops foreign key fk_org of users; submit with allow_destructive to apply it"),
    refused(P, &["ALTER TABLE users DROP PRIMARY KEY"], "statement 1 drops the primary key of users; submit with allow_destructive to apply it"),
    refused(S, &["ALTER TABLE users ADD COLUMN a INT", "DROP INDEX ix ON users"], "statement 2 drops index ix of users; submit with allow_destructive to apply it"),
    destructive(S, &["DROP TABLE legacy"], &["legacy"]),
    destructive(S, &["ALTER TABLE users DROP COLUMN nickname"], &["users"]),
    destructive(S, &["DROP INDEX ix_email ON users"], &["users"]),
    destructive(S, &["ALTER TABLE users CHANGE age years INT"], &["users"]),
    destructive(P, &["ALTER TABLE users DROP PRIMARY KEY"], &["users"]),
    // What Spirit cannot run, whatever the gate says.
    refused(S, &["ALTER TABLE users RENAME TO customers"], "statement 1: Spirit does not rename a table inside ALTER TABLE (use RENAME TABLE)"),
    refused(S, &["ALTER TABLE users ADD COLUMN c INT, ALGORITHM=INPLACE"], "statement 1: Spirit does not take ALGORITHM= or LOCK= (it chooses how to copy)"),
    refused(S, &["ALTER TABLE users LOCK=NONE, ADD COLUMN c INT"], "statement 1: Spirit does not take ALGORITHM= or LOCK= (it chooses how to copy)"),
    refused(S, &["ALTER TABLE users ADD CONSTRAINT fk_org FOREIGN KEY (org_id) REFERENCES orgs (id)"], "statement 1: Spirit does not add foreign keys"),
    Case { engine: S, ddl: &["ALTER TABLE users DROP PRIMARY KEY"], allow_destructive: true,
        want: Err("statement 1: Spirit does not drop a primary key") },
    refused(S, &["CREATE TABLE copy AS SELECT * FROM users"], "statement 1: Spirit does not run CREATE TABLE … AS SELECT (it copies rows, not schema)"),
    // Not schema changes.
    refused(S, &["DELETE FROM users"], not_ddl!("DELETE")),
    refused(S, &["INSERT INTO users (id) VALUES (1)"], not_ddl!("INSERT")),
    refused(S, &["UPDATE users SET age = 1"], not_ddl!("UPDATE")),
    refused(S, &["SELECT 1"], not_ddl!("SELECT")),
    refused(S, &["TRUNCATE TABLE users"], not_ddl!("TRUNCATE")),
    refused(S, &["DROP DATABASE shop"], not_ddl!("DROP DATABASE")),
    refused(S, &["CREATE VIEW v AS SELECT 1"], not_ddl!("CREATE VIEW")),
    refused(S, &["CREATE TEMPORARY TABLE tmp (id INT)"], not_ddl!("CREATE TEMPORARY TABLE")),
    // Another database, several statements in one entry, unparsable, empty.
    refused(S, &["ALTER TABLE other.users ADD COLUMN c INT"], "statement 1 names database \"other\", but the change targets \"shop\""),
    refused(P, &["RENAME TABLE users TO archive.users"], "statement 1 names database \"archive\", but the change targets \"shop\""),
    refused(S, &["ALTER TABLE users ADD COLUMN a INT; ALTER TABLE users ADD COLUMN b INT"], "statement 1 holds 2 statements; give one statement per entry"),
    refused(S, &["ALTER TABLE users ADD COLUMN c INT,"], "statement 1 cannot be parsed: Expected: ADD, RENAME, PARTITION, SWAP, DROP, REPLICA IDENTITY, SET, or SET TBLPROPERTIES after ALTER TABLE, found: EOF"),
    refused(S, &["ALTER TABLE"], "statement 1 cannot be parsed: Expected: identifier, found: EOF"),
    refused(S, &["ALTER TABLE users ADD COLUMN a INT", "/* nothing */"], "statement 2 is empty"),
];

/// Each entry written to a file, separated by `;` — possible when no entry holds two statements
/// or nothing at all (a file cannot say where one entry ends but by `;`).
fn as_file(case: &Case) -> Option<String> {
    let splits_the_same = case
        .ddl
        .iter()
        .all(|d| applyd::ddl::split_script(d).is_ok_and(|parts| parts.len() == 1));
    splits_the_same.then(|| case.ddl.join(";\n") + ";\n")
}

/// The API over loopback on a fresh memory store; its address.
async fn serve_api() -> std::net::SocketAddr {
    let store = Arc::new(MemoryStore::new(
        Rules::default(),
        Arc::new(ManualClock::new(0)),
    ));
    let state = ApiState {
        store: store.clone(),
        inspect: store,
        token: None,
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    addr
}

/// `POST /v1/applies`: the status and the JSON reply.
async fn post_apply(
    addr: std::net::SocketAddr,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/applies"))
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn spirit_apply(database: &str, environment: &str, ddl: &str) -> serde_json::Value {
    json!({
        "target": { "database": database, "environment": environment },
        "engine": "spirit",
        "ddl": [ddl],
    })
}

fn body(case: &Case, environment: &str) -> serde_json::Value {
    json!({
        "target": { "database": "shop", "environment": environment },
        "engine": case.engine,
        "ddl": case.ddl,
        "allow_destructive": case.allow_destructive,
    })
}

#[test]
fn the_table_is_big_enough() {
    assert!(CASES.len() >= 30, "{} cases", CASES.len());
}

#[test]
fn each_case_checks_as_the_table_says_with_the_tables_it_touches() {
    for (i, case) in CASES.iter().enumerate() {
        let engine = case.engine.parse().unwrap();
        let ddl: Vec<String> = case.ddl.iter().map(|s| s.to_string()).collect();
        let got = applyd::ddl::check_change(engine, "shop", &ddl, case.allow_destructive);
        match (&case.want, got) {
            (Ok(tables), Ok(change)) => {
                assert_eq!(change.tables(), *tables, "case {i}: {:?}", case.ddl);
                assert!(change.fingerprint.starts_with("sha256:"));
            }
            (Err(want), Err(e)) => assert_eq!(e.to_string(), *want, "case {i}"),
            (want, got) => panic!("case {i} {:?}: want {want:?}, got {got:?}", case.ddl),
        }
    }
}

#[tokio::test]
async fn each_case_through_the_api_is_created_or_refused_with_422_and_the_message() {
    let addr = serve_api().await;
    for (i, case) in CASES.iter().enumerate() {
        let (status, reply) = post_apply(addr, &body(case, &format!("api{i}"))).await;
        match case.want {
            Ok(_) => assert_eq!(status, 201, "case {i}: {reply}"),
            Err(why) => {
                assert_eq!(status, 422, "case {i}: {reply}");
                assert_eq!(reply["error"], format!("invalid ddl: {why}"), "case {i}");
                assert_eq!(reply["field"], "ddl", "case {i}");
            }
        }
    }
}

/// How the CLI is given a case.
enum Given<'a> {
    Flags,
    File(&'a std::path::Path),
    Plan(&'a std::path::Path),
}

/// The case as a plan file (TOML written by the toml crate, so every statement is quoted right).
fn as_plan(case: &Case, environment: &str) -> String {
    let mut t = toml::Table::new();
    t.insert("database".into(), "shop".into());
    t.insert("environment".into(), environment.into());
    t.insert("engine".into(), case.engine.into());
    t.insert(
        "ddl".into(),
        toml::Value::Array(case.ddl.iter().map(|d| (*d).into()).collect()),
    );
    t.insert("allow_destructive".into(), case.allow_destructive.into());
    toml::to_string(&t).unwrap()
}

fn submit(database_url: &str, environment: &str, case: &Case, given: Given) -> (bool, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("submit").env("APPLYD_DATABASE_URL", database_url);
    if let Given::Plan(path) = given {
        cmd.arg("--plan").arg(path);
    } else {
        cmd.args([
            "--database",
            "shop",
            "--environment",
            environment,
            "--engine",
            case.engine,
        ]);
        if case.allow_destructive {
            cmd.arg("--allow-destructive");
        }
    }
    match given {
        Given::File(path) => {
            cmd.arg("--file").arg(path);
        }
        Given::Flags => {
            for d in case.ddl {
                // `--ddl=…`: a statement may itself start with `--` (a comment).
                cmd.arg(format!("--ddl={d}"));
            }
        }
        Given::Plan(_) => {}
    }
    let out = cmd.output().expect("run applyd submit");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn each_case_through_the_cli_with_ddl_with_a_file_and_with_a_plan() {
    let Some(url) = store_support::mysql_url() else {
        return;
    };
    let (options, name) = store_support::fresh_database(&url).await;
    let store = applyd::store::mysql::MySqlStore::connect_with(options, Rules::default(), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let db_url = format!("{}/{name}", url.trim_end_matches('/'));
    let dir = std::env::temp_dir().join(format!("applyd-ddl-cases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut accepted = 0;
    for (i, case) in CASES.iter().enumerate() {
        let file = as_file(case).map(|text| {
            let path = dir.join(format!("case{i}.sql"));
            std::fs::write(&path, text).unwrap();
            path
        });
        let plan = dir.join(format!("case{i}.toml"));
        std::fs::write(&plan, as_plan(case, &format!("plan{i}"))).unwrap();
        let mut runs = vec![(format!("cli{i}"), Given::Flags)];
        if let Some(path) = &file {
            runs.push((format!("file{i}"), Given::File(path)));
        }
        runs.push((format!("plan{i}"), Given::Plan(&plan)));
        for (environment, given) in runs {
            let (success, text) = submit(&db_url, &environment, case, given);
            match case.want {
                Ok(_) => {
                    assert!(
                        success && text.starts_with("submitted apply-"),
                        "case {i} ({environment}): {text}"
                    );
                    accepted += 1;
                }
                Err(why) => {
                    assert!(!success, "case {i} ({environment}) was accepted");
                    assert_eq!(
                        text.trim_end(),
                        format!("applyd submit: invalid ddl: {why}"),
                        "case {i} ({environment})"
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    use applyd::store::status::Inspect;
    let stored = store.list(1_000).await.unwrap();
    assert_eq!(
        stored.len(),
        accepted,
        "every accepted submission is stored, nothing else"
    );
    assert!(accepted >= 60, "{accepted} accepted runs");
    store_support::drop_database(&url, &name).await;
}

#[tokio::test]
async fn target_names_are_refused_with_422_naming_the_field_and_conflicts_stay_409() {
    let addr = serve_api().await;
    let long = "d".repeat(65);
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("shop", "prod", None),
        ("shop-eu_2", "prod", None),
        ("x'; DROP TABLE applies; --", "prod", Some("invalid database: database \"x'; DROP TABLE applies; --\" contains '\\''; use ASCII letters, digits, '_' and '-'")),
        ("", "prod", Some("invalid database: database \"\" is empty")),
        (&long, "prod", Some("invalid database: database \"ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd\" has 65 characters; at most 64")),
        (" shop", "prod", Some("invalid database: database \" shop\" contains ' '; use ASCII letters, digits, '_' and '-'")),
        ("shop", "prod env", Some("invalid environment: environment \"prod env\" contains ' '; use ASCII letters, digits, '_' and '-'")),
        ("shop", "", Some("invalid environment: environment \"\" is empty")),
    ];
    for (database, environment, want) in cases {
        let (status, reply) = post_apply(
            addr,
            &spirit_apply(database, environment, "ALTER TABLE users ADD COLUMN c INT"),
        )
        .await;
        match want {
            None => assert_eq!(status, 201, "{database:?}: {reply}"),
            Some(why) => {
                assert_eq!(status, 422, "{database:?}: {reply}");
                assert_eq!(reply["error"], *why);
            }
        }
    }
    // A real conflict is still 409.
    let (status, _) = post_apply(
        addr,
        &spirit_apply("shop", "prod", "ALTER TABLE users ADD COLUMN d INT"),
    )
    .await;
    assert_eq!(status, 409);
    // The same change again (a retried job) is the live apply: 200, nothing new.
    let (status, reply) = post_apply(
        addr,
        &spirit_apply("shop", "prod", "alter table users add column c int"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (reply["id"].as_u64(), reply["adopted"].as_bool()),
        (Some(1), Some(true))
    );
}
