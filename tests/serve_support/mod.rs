//! Real processes for the tests of what people use: the fake engines served over loopback and
//! `applyd serve` against a fresh MariaDB database, each killed when the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use applyd::machine::{ApplyOptions, EngineKind, Rules};
use applyd::store::mysql::MySqlStore;
use applyd::store::{NewApply, Target};

pub const BIN: &str = env!("CARGO_BIN_EXE_applyd");

/// A child process killed on drop, however the test ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first line a child prints on stdout, read within a deadline.
fn first_line(child: &mut Child, what: &str) -> String {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} printed nothing within 60 s"))
}

pub struct Served {
    pub db_url: String,
    pub store: MySqlStore,
    /// `http://127.0.0.1:PORT`
    pub api: String,
    pub engines: Killed,
    pub operator: Killed,
}

/// A fresh database, the fake engines (`fake_args`, e.g. `--phase-ms 300`) and one operator
/// with `token` (none: loopback without one). `None` when MariaDB tests are skipped.
pub async fn serve(fake_args: &[&str], token: Option<&str>) -> Option<Served> {
    let url = crate::store_support::mysql_url()?;
    let (options, name) = crate::store_support::fresh_database(&url).await;
    let db_url = format!("{}/{name}", url.trim_end_matches('/'));
    let store = MySqlStore::connect_with(options, Rules::default(), 4)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");

    let mut engines = Command::new(BIN)
        .args(["fake-engines", "--listen", "127.0.0.1:0"])
        .args(fake_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the fake engines");
    let line = first_line(&mut engines, "applyd fake-engines");
    let engines_url = format!("http://{}", line.trim().rsplit(' ').next().unwrap());

    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("APPLYD_DATABASE_URL", &db_url)
        .env("APPLYD_ENGINES", "remote-fake")
        .env("APPLYD_REMOTE_FAKE_URL", &engines_url)
        .env("APPLYD_REMOTE_FAKE_HOST", "1")
        .env("APPLYD_OWNER", "ui-p1")
        .env("APPLYD_API_LISTEN", "127.0.0.1:0")
        .env("APPLYD_STALE_AFTER_MS", "3000")
        .env("APPLYD_PRESUMED_LOSS_MS", "2000")
        .env("APPLYD_HEARTBEAT_INTERVAL_MS", "300")
        .env("APPLYD_POLL_INTERVAL_MS", "200")
        .env("APPLYD_DRIVERS", "4")
        .env("APPLYD_LOG", "warn")
        .env_remove("APPLYD_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(token) = token {
        cmd.env("APPLYD_API_TOKEN", token);
    }
    let mut operator = cmd.spawn().expect("start applyd serve");
    let line = first_line(&mut operator, "applyd serve");
    let api = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("applyd serve said {line:?}, not its address"))
        .trim_end_matches('/')
        .to_string();
    Some(Served {
        db_url,
        store,
        api,
        engines: Killed(engines),
        operator: Killed(operator),
    })
}

/// Poll `check` until it holds, within `limit`.
pub async fn until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One statement on `<database>_items` in production: the submissions these tests make.
pub fn apply(database: &str, engine: EngineKind, options: ApplyOptions) -> NewApply {
    NewApply {
        allow_destructive: false,
        rollout: None,
        target: Target {
            database: database.into(),
            environment: "production".into(),
        },
        engine,
        ddl: vec![format!("ALTER TABLE {database}_items ADD COLUMN note TEXT")],
        options,
    }
}
