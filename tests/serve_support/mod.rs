//! Real processes for the tests of what people use and the crash tests: the fake engines served
//! over loopback and `applyd serve` against a fresh MariaDB database, each killed when the test
//! ends, however it ends.

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

/// Children killed on drop (operators replaced as a crash test kills them).
#[derive(Default)]
pub struct KilledAll(pub Vec<Child>);

impl Drop for KilledAll {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Send `sig` (`-STOP`, `-CONT`, `-TERM`, `-KILL`) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// `applyd serve` as the tests run it, not yet started: its owner, the API on a free loopback
/// port, a lease that goes stale after `stale_after_ms` (presumed lost at three quarters of
/// it), heartbeats every 300 ms, polls every 200 ms, 4 drivers, warnings only, no output kept.
pub fn operator_command(db_url: &str, owner: &str, stale_after_ms: u64) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("APPLYD_DATABASE_URL", db_url)
        .env("APPLYD_OWNER", owner)
        .env("APPLYD_API_LISTEN", "127.0.0.1:0")
        .env("APPLYD_STALE_AFTER_MS", stale_after_ms.to_string())
        .env(
            "APPLYD_PRESUMED_LOSS_MS",
            (stale_after_ms * 3 / 4).to_string(),
        )
        .env("APPLYD_HEARTBEAT_INTERVAL_MS", "300")
        .env("APPLYD_POLL_INTERVAL_MS", "200")
        .env("APPLYD_DRIVERS", "4")
        .env("APPLYD_LOG", "warn")
        .env_remove("APPLYD_API_TOKEN")
        .env_remove("APPLYD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// The settings that point an operator at the fake engines at `engines_url`, as process `host`
/// (its Spirit runners die with it).
pub fn remote_fake(engines_url: &str, host: u32) -> [(&'static str, String); 3] {
    [
        ("APPLYD_ENGINES", "remote-fake".into()),
        ("APPLYD_REMOTE_FAKE_URL", engines_url.into()),
        ("APPLYD_REMOTE_FAKE_HOST", host.to_string()),
    ]
}

/// `applyd fake-engines` on a free loopback port with `args` (and `envs`); its address.
pub fn fake_engines(args: &[&str], envs: &[(&str, &str)]) -> (Killed, String) {
    let mut engines = Command::new(BIN)
        .args(["fake-engines", "--listen", "127.0.0.1:0"])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the fake engines");
    let line = first_line(&mut engines, "applyd fake-engines");
    let url = format!(
        "http://{}",
        line.trim().rsplit(' ').next().unwrap_or_default()
    );
    (Killed(engines), url)
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

    let (engines, engines_url) = fake_engines(fake_args, &[]);
    let mut cmd = operator_command(&db_url, "ui-p1", 3000);
    cmd.envs(remote_fake(&engines_url, 1))
        .stdout(Stdio::piped());
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
        engines,
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
