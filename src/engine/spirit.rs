//! The Spirit engine: runs `spirit migrate` as a child process per apply (reference §3.4, §6.2).
//!
//! - Flags: `migrate --host H:P --username U --conf FILE --database D --statement S
//!   --threads N [--target-chunk-time T] [--defer-cutover]`. The password is only in FILE, a
//!   private (0600) `[client]` INI file, never on the command line where `ps` shows it.
//! - Progress is parsed from Spirit's log lines (`state=…`, `copy-progress="a/b p%"`); a line
//!   we cannot read is ignored, never trusted.
//! - Stop sends SIGTERM (Spirit checkpoints to `_<table>_chkpnt` and exits); resume re-runs the
//!   same statement and Spirit continues from the checkpoint.
//! - Deferred cutover: Spirit waits while `_spirit_sentinel` exists; we drop it over MySQL.
//! - After a restart no runner is known: the target is inspected. A sentinel means a deferred
//!   cutover was never done; Spirit's artifacts (`_<table>_new`, `_<table>_chkpnt`) mean work
//!   is left; otherwise the schema fingerprint recorded before the first start tells whether the
//!   change is in place (`_applyd_spirit`, one row per apply, written before Spirit starts).
//! - One runner per target per process. Calls carry the lease epoch: a newer epoch's start
//!   supersedes an older runner of the same apply here, an older epoch is refused.
//! - The child gets SIGTERM when this process dies (PR_SET_PDEATHSIG), so a runner never
//!   outlives its operator for long; Spirit's own table lock keeps a second runner out meanwhile.
//!
//! Over 700 lines: the process runner, the argument builder and the inspection of Spirit's
//! tables; the inspection is the first seam to split off.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Executor, Row};
use tokio::io::AsyncReadExt;

use super::Engine;
use crate::config::{Secret, SpiritSection};
use crate::machine::apply::ApplyId;
use crate::machine::apply::ApplyRecord;
use crate::machine::observe::{EngineFault, Observation, RunnerStatus};
use crate::machine::table::RunnerGone;
use crate::machine::{EngineCall, Probe};

/// Output lines kept per runner for error reports.
const TAIL_LINES: usize = 40;
/// Longest output line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 8 * 1024;
/// Where the adapter records each apply's pre-change schema fingerprint, in the target schema.
pub const STATE_TABLE: &str = "_applyd_spirit";
pub const SENTINEL: &str = "_spirit_sentinel";

/// How to run Spirit and reach the targets.
#[derive(Debug, Clone)]
pub struct SpiritConfig {
    pub binary: PathBuf,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    pub threads: u32,
    pub target_chunk_time: Option<String>,
    pub stop_timeout: Duration,
    /// Extra environment for the child (the stand-in's test knobs); never secrets.
    pub env: Vec<(String, String)>,
}

impl SpiritConfig {
    pub fn from_section(s: &SpiritSection) -> anyhow::Result<SpiritConfig> {
        Ok(SpiritConfig {
            binary: s.binary.clone(),
            host: s.host.clone(),
            port: s.port,
            username: s.username.clone(),
            password: s.password()?,
            threads: s.threads,
            target_chunk_time: s.target_chunk_time.clone(),
            stop_timeout: Duration::from_millis(s.stop_timeout_ms),
            env: Vec::new(),
        })
    }
}

/// What the runner's output said last.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Spirit's state name (`copyRows`, `waitingOnSentinelTable`, `cutOver`, …).
    pub state: Option<String>,
    pub copied: Option<(u64, u64)>,
    /// Spirit said it resumed from a checkpoint.
    pub resumed: bool,
    pub tail: VecDeque<String>,
}

impl Progress {
    fn absorb(&mut self, line: &str) {
        if let Some(s) = field(line, "state") {
            if !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                self.state = Some(s);
            }
        }
        if let Some(p) = field(line, "copy-progress") {
            // "copied/total pct%"
            let frac = p.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = frac.split_once('/') {
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    self.copied = Some((a, b));
                }
            }
        }
        if line.contains("resuming from checkpoint") || line.contains("resumed from checkpoint") {
            self.resumed = true;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }
}

/// The value of `key=value` or `key="value"` in a logfmt-style line.
fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let mut from = 0;
    while let Some(i) = line[from..].find(&pat) {
        let at = from + i;
        // A whole key, not the tail of another one.
        let whole = at == 0 || line.as_bytes()[at - 1] == b' ';
        let rest = &line[at + pat.len()..];
        if whole {
            return Some(match rest.strip_prefix('"') {
                Some(q) => q.split('"').next().unwrap_or("").to_string(),
                None => rest
                    .split(char::is_whitespace)
                    .next()
                    .unwrap_or("")
                    .to_string(),
            });
        }
        from = at + pat.len();
    }
    None
}

struct Runner {
    apply: ApplyId,
    epoch: u64,
    child: tokio::process::Child,
    progress: Arc<Mutex<Progress>>,
    conf: PathBuf,
}

/// What a statement list changes: the tables, and the one statement Spirit gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub tables: Vec<String>,
    pub statement: String,
}

/// What Spirit gets for the apply's DDL: the change as checked at submit ([`crate::ddl`]),
/// its tables, and its statements in their normalised form (no comments, so joining them with
/// `; ` can never comment out the next one), or say plainly why not.
pub fn plan(database: &str, ddl: &[String]) -> Result<Plan, String> {
    // The destructive gate was passed (or not needed) at submit; here only what Spirit can run
    // matters.
    let change = crate::ddl::check_change(crate::machine::EngineKind::Spirit, database, ddl, true)
        .map_err(|e| e.to_string())?;
    Ok(Plan {
        tables: change.tables(),
        statement: change
            .statements
            .iter()
            .map(|s| s.normalised.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Whether a failed run's output says the change itself is wrong (retrying cannot help).
fn is_permanent(tail: &str) -> bool {
    let t = tail.to_ascii_lowercase();
    [
        "error 1064",
        "error 1054",
        "error 1146",
        "error 1091",
        "error 1060",
        "error 1061",
        "error 1068",
        "error 1072",
        "error 1050",
        "error 4161",
        "you have an error in your sql syntax",
        "unknown data type",
        "unsupported statement",
        "could not parse",
        "unknown column",
        "duplicate column",
    ]
    .iter()
    .any(|p| t.contains(p))
}

fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// The Spirit engine.
pub struct SpiritEngine {
    cfg: SpiritConfig,
    runners: Mutex<BTreeMap<String, Runner>>,
    outcomes: Mutex<BTreeMap<ApplyId, RunnerStatus>>,
    epochs: Mutex<BTreeMap<ApplyId, u64>>,
    conf_seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SpiritEngine {
    pub fn new(cfg: SpiritConfig) -> SpiritEngine {
        SpiritEngine {
            cfg,
            runners: Mutex::new(BTreeMap::new()),
            outcomes: Mutex::new(BTreeMap::new()),
            epochs: Mutex::new(BTreeMap::new()),
            conf_seq: AtomicU64::new(0),
        }
    }

    /// The progress of this apply's live runner, if it has one here.
    pub fn progress(&self, apply: &ApplyRecord) -> Option<Progress> {
        let runners = lock(&self.runners);
        runners
            .get(&apply.spec.place())
            .filter(|r| r.apply == apply.row.operation)
            .map(|r| lock(&r.progress).clone())
    }

    /// A connection to the apply's target schema.
    fn options(&self) -> MySqlConnectOptions {
        let o = MySqlConnectOptions::new()
            .host(&self.cfg.host)
            .port(self.cfg.port)
            .username(&self.cfg.username);
        // An empty password must not be sent as one ("using password: YES").
        match self.cfg.password.expose() {
            "" => o,
            p => o.password(p),
        }
    }

    async fn connect(&self, database: &str) -> Result<MySqlConnection, sqlx::Error> {
        self.options().database(database).connect().await
    }

    /// Reachability of the MySQL target for `check-config`.
    pub async fn ping(&self, database: Option<&str>) -> Result<(), String> {
        let mut opts = self.options();
        if let Some(d) = database {
            opts = opts.database(d);
        }
        let mut c = opts.connect().await.map_err(|e| e.to_string())?;
        c.ping().await.map_err(|e| e.to_string())?;
        c.close().await.ok();
        Ok(())
    }

    /// Refuse an epoch older than one seen for the apply; remember the newest.
    fn fence(&self, apply: ApplyId, epoch: u64) -> bool {
        let mut e = lock(&self.epochs);
        let seen = e.entry(apply).or_insert(epoch);
        if epoch < *seen {
            return false;
        }
        *seen = epoch;
        true
    }

    async fn fingerprint(
        c: &mut MySqlConnection,
        tables: &[String],
    ) -> Result<String, sqlx::Error> {
        let mut out = String::new();
        for t in tables {
            let exists: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            )
            .bind(t)
            .fetch_one(&mut *c)
            .await?;
            out.push_str(t);
            out.push('\n');
            if exists == 0 {
                out.push_str("(absent)\n");
                continue;
            }
            let row = c
                .fetch_one(format!("SHOW CREATE TABLE {}", quote_ident(t)).as_str())
                .await?;
            let ddl: String = row.try_get(1)?;
            // AUTO_INCREMENT=N moves with every insert; it is not schema.
            let cleaned: Vec<&str> = ddl
                .split_whitespace()
                .filter(|w| !w.starts_with("AUTO_INCREMENT="))
                .collect();
            out.push_str(&cleaned.join(" "));
            out.push('\n');
        }
        Ok(out)
    }

    async fn table_exists(c: &mut MySqlConnection, t: &str) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        )
        .bind(t)
        .fetch_one(&mut *c)
        .await?;
        Ok(n > 0)
    }

    async fn ensure_state_table(c: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        c.execute(
            format!(
                "CREATE TABLE IF NOT EXISTS {STATE_TABLE} (identifier VARCHAR(255) NOT NULL PRIMARY KEY, \
                 fingerprint LONGTEXT NOT NULL, created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
            )
            .as_str(),
        )
        .await
        .map(|_| ())
    }

    /// What is left of an apply's work when no runner of it is alive here.
    async fn inspect(&self, apply: &ApplyRecord, plan: &Plan) -> Result<RunnerGone, sqlx::Error> {
        let mut c = self.connect(&apply.spec.target.database).await?;
        if Self::table_exists(&mut c, SENTINEL).await? {
            return Ok(RunnerGone::SentinelKept);
        }
        for t in &plan.tables {
            for artifact in [format!("_{t}_new"), format!("_{t}_chkpnt")] {
                if Self::table_exists(&mut c, &artifact).await? {
                    return Ok(RunnerGone::WorkLeft);
                }
            }
        }
        if !Self::table_exists(&mut c, STATE_TABLE).await? {
            return Ok(RunnerGone::WorkLeft);
        }
        let before: Option<String> = sqlx::query_scalar(&format!(
            "SELECT fingerprint FROM {STATE_TABLE} WHERE identifier = ?"
        ))
        .bind(&apply.spec.identifier)
        .fetch_optional(&mut c)
        .await?;
        let now = Self::fingerprint(&mut c, &plan.tables).await?;
        c.close().await.ok();
        Ok(match before {
            // The schema moved since our first start, and one active apply per target means
            // nobody else moved it: the change is in place.
            Some(b) if b != now => RunnerGone::NothingLeft,
            _ => RunnerGone::WorkLeft,
        })
    }

    fn write_conf(&self) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let n = self.conf_seq.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("applyd-spirit-{}-{n}.cnf", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(
            f,
            "[client]\nuser={}\npassword={}\nhost={}\nport={}",
            self.cfg.username,
            self.cfg.password.expose(),
            self.cfg.host,
            self.cfg.port
        )?;
        Ok(path)
    }

    fn spawn(&self, apply: &ApplyRecord, epoch: u64, plan: &Plan) -> Result<Runner, String> {
        let conf = self
            .write_conf()
            .map_err(|e| format!("cannot write the Spirit --conf file: {e}"))?;
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.arg("migrate")
            .arg("--host")
            .arg(format!("{}:{}", self.cfg.host, self.cfg.port))
            .arg("--username")
            .arg(&self.cfg.username)
            .arg("--conf")
            .arg(&conf)
            .arg("--database")
            .arg(&apply.spec.target.database)
            .arg("--statement")
            .arg(&plan.statement)
            .arg("--threads")
            .arg(self.cfg.threads.to_string());
        if let Some(t) = &self.cfg.target_chunk_time {
            cmd.arg("--target-chunk-time").arg(t);
        }
        if apply.row.options.defer_cutover {
            cmd.arg("--defer-cutover");
        }
        for (k, v) in &self.cfg.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&conf);
                return Err(format!(
                    "cannot start Spirit at {}: {e}",
                    self.cfg.binary.display()
                ));
            }
        };
        let progress = Arc::new(Mutex::new(Progress::default()));
        {
            // The password file is read at start-up; do not leave it behind (an operator killed
            // outright could not remove it later).
            let (conf, progress) = (conf.clone(), progress.clone());
            tokio::spawn(async move {
                for _ in 0..200 {
                    if !lock(&progress).tail.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = std::fs::remove_file(&conf);
            });
        }
        let redact = self.cfg.password.expose().to_string();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let p = progress.clone();
            let redact = redact.clone();
            let apply_id = apply.row.id;
            tokio::spawn(async move { read_lines(out, p, redact, apply_id).await });
        }
        tracing::info!(
            apply = apply.row.id,
            epoch,
            "started Spirit on {}",
            apply.spec.target
        );
        Ok(Runner {
            apply: apply.row.operation,
            epoch,
            child,
            progress,
            conf,
        })
    }

    /// Ask a runner to stop (SIGTERM: Spirit checkpoints), kill it past the deadline; its exit.
    async fn terminate(&self, mut r: Runner, signal: i32) -> Option<std::process::ExitStatus> {
        let status = match r.child.try_wait() {
            Ok(Some(s)) => Some(s),
            _ => {
                if let Some(pid) = r.child.id() {
                    // SAFETY: plain kill(2) on our own child's pid.
                    unsafe {
                        libc::kill(pid as i32, signal);
                    }
                }
                match tokio::time::timeout(self.cfg.stop_timeout, r.child.wait()).await {
                    Ok(Ok(s)) => Some(s),
                    _ => {
                        tracing::warn!(apply = r.apply, "Spirit did not exit in time; killing it");
                        let _ = r.child.kill().await;
                        None
                    }
                }
            }
        };
        let _ = std::fs::remove_file(&r.conf);
        status
    }

    /// The outcome of a runner that exited on its own.
    fn finished(&self, r: &Runner, status: std::process::ExitStatus) -> RunnerStatus {
        let _ = std::fs::remove_file(&r.conf);
        if status.success() {
            return RunnerStatus::Completed;
        }
        let tail: Vec<String> = lock(&r.progress).tail.iter().cloned().collect();
        let tail = tail.join("\n");
        let retryable = !is_permanent(&tail);
        tracing::error!(
            apply = r.apply,
            retryable,
            "Spirit exited with {status}; its last output:\n{tail}"
        );
        RunnerStatus::Failed { retryable }
    }

    fn plan_of(&self, apply: &ApplyRecord) -> Result<Plan, String> {
        plan(&apply.spec.target.database, &apply.spec.ddl)
    }

    async fn status(&self, apply: &ApplyRecord) -> Observation {
        let key = apply.spec.place();
        let id = apply.row.operation;
        {
            let mut runners = lock(&self.runners);
            if let Some(r) = runners.get_mut(&key).filter(|r| r.apply == id) {
                match r.child.try_wait() {
                    Ok(None) => {
                        let waiting =
                            lock(&r.progress).state.as_deref() == Some("waitingOnSentinelTable");
                        return Observation::Runner(if waiting {
                            RunnerStatus::WaitingOnSentinel
                        } else {
                            RunnerStatus::Copying
                        });
                    }
                    Ok(Some(status)) => {
                        let r = runners.remove(&key).expect("present");
                        let outcome = self.finished(&r, status);
                        lock(&self.outcomes).insert(id, outcome);
                        return Observation::Runner(outcome);
                    }
                    Err(e) => {
                        tracing::warn!(apply = id, "cannot poll the Spirit process: {e}");
                        return Observation::Fault(EngineFault::Transient);
                    }
                }
            }
        }
        if let Some(o) = lock(&self.outcomes).get(&id) {
            return Observation::Runner(*o);
        }
        let plan = match self.plan_of(apply) {
            Ok(p) => p,
            Err(m) => {
                tracing::error!(apply = id, "bad DDL: {m}");
                return Observation::Runner(RunnerStatus::Failed { retryable: false });
            }
        };
        match self.inspect(apply, &plan).await {
            Ok(g) => Observation::Runner(RunnerStatus::Gone(g)),
            Err(e) => {
                tracing::warn!(
                    apply = id,
                    "cannot inspect the target {}: {e}",
                    apply.spec.target
                );
                Observation::Fault(EngineFault::Transient)
            }
        }
    }

    async fn start(&self, apply: &ApplyRecord, epoch: u64) -> Observation {
        let key = apply.spec.place();
        let id = apply.row.operation;
        let plan = match self.plan_of(apply) {
            Ok(p) => p,
            Err(m) => {
                tracing::error!(apply = id, "bad DDL, Spirit not started: {m}");
                let f = RunnerStatus::Failed { retryable: false };
                lock(&self.outcomes).insert(id, f);
                return Observation::Runner(f);
            }
        };
        let superseded = {
            let mut runners = lock(&self.runners);
            match runners.get_mut(&key) {
                Some(r) if r.apply == id && r.epoch >= epoch => {
                    if matches!(r.child.try_wait(), Ok(None)) {
                        // Already running for this lease: starting is idempotent.
                        return Observation::Runner(RunnerStatus::Copying);
                    }
                    runners.remove(&key)
                }
                Some(r) if r.apply == id => runners.remove(&key),
                Some(r) => {
                    tracing::warn!(
                        apply = id,
                        "apply {} still has a Spirit runner on {key}; not starting a second",
                        r.apply
                    );
                    return Observation::Fault(EngineFault::Transient);
                }
                None => None,
            }
        };
        if let Some(old) = superseded {
            tracing::info!(
                apply = id,
                old_epoch = old.epoch,
                epoch,
                "superseding an older runner"
            );
            self.terminate(old, libc::SIGTERM).await;
        }
        // Record the pre-change fingerprint before Spirit can change anything.
        let prepared: Result<Option<RunnerGone>, sqlx::Error> = async {
            let mut c = self.connect(&apply.spec.target.database).await?;
            let gone = self.inspect(apply, &plan).await?;
            if gone == RunnerGone::NothingLeft {
                return Ok(Some(gone));
            }
            Self::ensure_state_table(&mut c).await?;
            let fp = Self::fingerprint(&mut c, &plan.tables).await?;
            sqlx::query(&format!(
                "INSERT IGNORE INTO {STATE_TABLE} (identifier, fingerprint) VALUES (?, ?)"
            ))
            .bind(&apply.spec.identifier)
            .bind(fp)
            .execute(&mut c)
            .await?;
            c.close().await.ok();
            Ok(None)
        }
        .await;
        match prepared {
            Ok(Some(g)) => return Observation::Runner(RunnerStatus::Gone(g)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(
                    apply = id,
                    "cannot prepare the target {}: {e}",
                    apply.spec.target
                );
                return Observation::Fault(EngineFault::Transient);
            }
        }
        match self.spawn(apply, epoch, &plan) {
            Ok(r) => {
                lock(&self.outcomes).remove(&id);
                lock(&self.runners).insert(key, r);
                Observation::Runner(RunnerStatus::Copying)
            }
            Err(m) => {
                tracing::error!(apply = id, "{m}");
                Observation::Fault(EngineFault::Transient)
            }
        }
    }

    fn take_runner(&self, apply: &ApplyRecord) -> Option<Runner> {
        let key = apply.spec.place();
        let mut runners = lock(&self.runners);
        if runners
            .get(&key)
            .is_some_and(|r| r.apply == apply.row.operation)
        {
            runners.remove(&key)
        } else {
            None
        }
    }

    async fn stop(&self, apply: &ApplyRecord) -> Observation {
        let id = apply.row.operation;
        let outcome = match self.take_runner(apply) {
            Some(mut r) => match r.child.try_wait() {
                Ok(Some(s)) => self.finished(&r, s),
                _ => {
                    self.terminate(r, libc::SIGTERM).await;
                    RunnerStatus::Stopped
                }
            },
            None => match lock(&self.outcomes).get(&id) {
                Some(done @ (RunnerStatus::Completed | RunnerStatus::Failed { .. })) => *done,
                _ => RunnerStatus::Stopped,
            },
        };
        lock(&self.outcomes).insert(id, outcome);
        Observation::Runner(outcome)
    }

    async fn cancel(&self, apply: &ApplyRecord) -> Observation {
        let id = apply.row.operation;
        if let Some(r) = self.take_runner(apply) {
            self.terminate(r, libc::SIGKILL).await;
        }
        let plan = match self.plan_of(apply) {
            Ok(p) => p,
            Err(_) => {
                lock(&self.outcomes).insert(id, RunnerStatus::Cancelled);
                return Observation::Runner(RunnerStatus::Cancelled);
            }
        };
        let result: Result<RunnerStatus, sqlx::Error> = async {
            if self.inspect(apply, &plan).await? == RunnerGone::NothingLeft {
                return Ok(RunnerStatus::Completed);
            }
            let mut c = self.connect(&apply.spec.target.database).await?;
            // The runner is dead: dropping its artifacts (and the sentinel) cuts nothing over.
            for t in &plan.tables {
                for artifact in [format!("_{t}_new"), format!("_{t}_chkpnt")] {
                    c.execute(format!("DROP TABLE IF EXISTS {}", quote_ident(&artifact)).as_str())
                        .await?;
                }
            }
            c.execute(format!("DROP TABLE IF EXISTS {SENTINEL}").as_str())
                .await?;
            if Self::table_exists(&mut c, STATE_TABLE).await? {
                sqlx::query(&format!("DELETE FROM {STATE_TABLE} WHERE identifier = ?"))
                    .bind(&apply.spec.identifier)
                    .execute(&mut c)
                    .await?;
            }
            c.close().await.ok();
            Ok(RunnerStatus::Cancelled)
        }
        .await;
        match result {
            Ok(s) => {
                lock(&self.outcomes).insert(id, s);
                Observation::Runner(s)
            }
            Err(e) => {
                tracing::warn!(apply = id, "cancelling on {}: {e}", apply.spec.target);
                Observation::Fault(EngineFault::Transient)
            }
        }
    }

    async fn drop_sentinel(&self, apply: &ApplyRecord) -> Observation {
        let r: Result<(), sqlx::Error> = async {
            let mut c = self.connect(&apply.spec.target.database).await?;
            c.execute(format!("DROP TABLE IF EXISTS {SENTINEL}").as_str())
                .await?;
            c.close().await.ok();
            Ok(())
        }
        .await;
        match r {
            Ok(()) => Observation::Accepted,
            Err(e) => {
                tracing::warn!(
                    apply = apply.row.id,
                    "dropping the sentinel on {}: {e}",
                    apply.spec.target
                );
                Observation::Fault(EngineFault::Transient)
            }
        }
    }
}

async fn read_lines(
    mut out: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    progress: Arc<Mutex<Progress>>,
    redact: String,
    apply: ApplyId,
) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    let flush = |line: &mut Vec<u8>| {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if redact.len() >= 4 {
            text = text.replace(&redact, "***");
        }
        tracing::debug!(apply, "spirit: {text}");
        lock(&progress).absorb(&text);
        line.clear();
    };
    loop {
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                flush(&mut line);
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        flush(&mut line);
    }
}

#[async_trait]
impl Engine for SpiritEngine {
    async fn probe(&self, apply: &ApplyRecord, _epoch: u64, probe: Probe) -> Observation {
        match probe {
            Probe::RunnerStatus => self.status(apply).await,
            other => {
                tracing::error!(
                    apply = apply.row.id,
                    "a PlanetScale probe reached the Spirit engine: {other:?}"
                );
                Observation::Fault(EngineFault::Permanent)
            }
        }
    }

    /// Kill the local runner as a crash would: Spirit writes nothing on a signal, and its
    /// periodic checkpoint is what a later resume starts from.
    async fn abandon(&self, apply: &ApplyRecord, epoch: u64) {
        let runner = {
            let mut runners = lock(&self.runners);
            let key = apply.spec.place();
            if runners
                .get(&key)
                .is_some_and(|r| r.apply == apply.row.operation && r.epoch <= epoch)
            {
                runners.remove(&key)
            } else {
                None
            }
        };
        if let Some(r) = runner {
            tracing::warn!(
                apply = apply.row.id,
                "lease presumed lost: killing the local Spirit runner"
            );
            self.terminate(r, libc::SIGKILL).await;
        }
    }

    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Observation {
        if !self.fence(apply.row.operation, epoch) {
            return Observation::Fault(EngineFault::StaleEpoch);
        }
        match call {
            EngineCall::StartRunner => self.start(apply, epoch).await,
            EngineCall::StopRunner => self.stop(apply).await,
            EngineCall::CancelRunner => self.cancel(apply).await,
            EngineCall::DropSentinel => self.drop_sentinel(apply).await,
            other => {
                tracing::error!(
                    apply = apply.row.id,
                    "a PlanetScale call reached the Spirit engine: {other:?}"
                );
                Observation::Fault(EngineFault::Permanent)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_name_tables_and_refuse_what_spirit_cannot_do() {
        let p = plan(
            "shop",
            &["ALTER TABLE `orders` ADD COLUMN note TEXT".into()],
        )
        .unwrap();
        assert_eq!(p.tables, vec!["orders"]);
        let p = plan(
            "shop",
            &[
                "alter table shop.items add index i (a);".into(),
                "ALTER TABLE orders ALTER COLUMN note SET DEFAULT 'x;y'".into(),
            ],
        )
        .unwrap();
        assert_eq!(p.tables, vec!["items", "orders"]);
        assert_eq!(
            p.statement,
            "ALTER TABLE shop.items ADD INDEX i (a); ALTER TABLE orders ALTER COLUMN note SET DEFAULT 'x;y'"
        );
        let p = plan(
            "shop",
            &[
                "ALTER TABLE a ADD c INT -- the next one must not be commented out".into(),
                "ALTER TABLE b ADD d INT".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            p.statement,
            "ALTER TABLE a ADD c INT; ALTER TABLE b ADD d INT"
        );
        assert!(plan("shop", &["ALTER TABLE other.t ADD c INT".into()])
            .unwrap_err()
            .contains("other"));
        assert!(plan("shop", &["UPDATE t SET a = 1".into()])
            .unwrap_err()
            .contains("not a schema change"));
        assert!(plan(
            "shop",
            &[
                "CREATE TABLE a (id INT)".into(),
                "ALTER TABLE b ADD c INT".into()
            ]
        )
        .is_err());
        assert!(plan("shop", &[]).is_err());
    }

    #[test]
    fn progress_lines_are_parsed_and_garbage_is_ignored() {
        let mut p = Progress::default();
        p.absorb(r#"time=2024 level=INFO msg="migration status" state=copyRows copy-progress="120/1000 12.00%" binlog-deltas=0"#);
        assert_eq!(p.state.as_deref(), Some("copyRows"));
        assert_eq!(p.copied, Some((120, 1000)));
        p.absorb("\u{0}\u{1}garbage state= copy-progress=\"x/y\"");
        assert_eq!(p.state.as_deref(), Some("copyRows"));
        p.absorb(r#"level=INFO msg="migration status" state=waitingOnSentinelTable"#);
        assert_eq!(p.state.as_deref(), Some("waitingOnSentinelTable"));
        p.absorb("resuming from checkpoint watermark=10");
        assert!(p.resumed);
        assert!(is_permanent(
            "Error 1064 (42000): You have an error in your SQL syntax"
        ));
        assert!(!is_permanent("dial tcp 127.0.0.1:3306: connection refused"));
    }
}
