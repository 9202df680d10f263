//! The Spirit engine: runs `spirit migrate` as a child process per apply (reference §3.4, §6.2).
//!
//! - Flags: `migrate --host H:P --username U --conf FILE --database D --statement S
//!   --threads N [--target-chunk-time T] [--defer-cutover]`. The password is only in FILE, a
//!   private (0600) `[client]` INI file, never on the command line where `ps` shows it.
//! - Progress is parsed from Spirit's log lines (`state=…`, `copy-progress="a/b p%"`); a line
//!   we cannot read is ignored, never trusted.
//! - Stop sends SIGTERM, and Spirit ends at once: `spirit migrate` installs no signal handler
//!   and writes nothing on exit (`cmd/spirit/main.go`). A re-run resumes from Spirit's last
//!   periodic checkpoint, written every 50 s and never in the first 50 s
//!   (`pkg/status/task.go`): a stop loses up to ~50 s of copy, and a stop in the first 50 s
//!   starts the copy over. Spirit says "could not resume from checkpoint" when it starts over
//!   (also for a checkpoint older than `--checkpoint-max-age` or a purged binlog); the adapter
//!   logs it as a warning and keeps it in the runner's progress.
//! - Deferred cutover: Spirit waits while `_spirit_sentinel` exists; we drop it over MySQL. The
//!   sentinel is schema-wide (every migration in the schema waits on it, and Spirit gives up
//!   after 48 h of waiting: `pkg/sentinel/sentinel.go`), so only an apply that defers its
//!   cutover reads it as its own or drops it. A run that gave up waiting is held for a person
//!   (`process::needs_person`): a retry would wait again, or copy again if the binlog was
//!   purged meanwhile; the status counts the 48 h down (`waits::sentinel_deadline`).
//! - After a restart no runner is known: the target is inspected (`target`). A runner still
//!   holding Spirit's lock on the tables is alive elsewhere, and nothing is touched. Otherwise
//!   `_<table>_new` means work is left; without it, the schema fingerprint recorded before the
//!   first start tells whether the change is in place (`_applyd_spirit`, one row per apply) — a
//!   checkpoint alone may be the tail of a finished run, which Spirit drops after the RENAME.
//!   Names follow Spirit's own rules (`names`).
//! - One runner per target per process. Calls carry the lease epoch: a newer epoch's start
//!   supersedes an older runner of the same apply here, an older epoch is refused.
//! - The child gets SIGTERM when this process dies (PR_SET_PDEATHSIG), so a runner never
//!   outlives its operator for long; Spirit's own table lock keeps a second runner out meanwhile.
//! - The credentials go in a private `--conf` file, every value backtick-quoted for go-ini
//!   (`process::conf_value`); exit 80 (a usage error) and the errors Spirit marks final are
//!   permanent failures, "ownership ambiguous" holds the apply for a person
//!   (`RunnerStatus::NeedsPerson`), any other exit is a retryable failure.
//!
//! The child process is `process`, its output `progress`, the target schema `target`.

mod flags;
pub mod names;
mod process;
mod progress;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Connection, Executor};

pub use flags::check_help;
use process::Runner;
pub use progress::Progress;
use target::InspectError;

use super::{Engine, Reply};
use crate::config::{Secret, SpiritSection};
use crate::machine::apply::ApplyId;
use crate::machine::apply::{ApplyRecord, ApplySpec};
use crate::machine::observe::{EngineFault, Observation, RunnerStatus};
use crate::machine::table::RunnerGone;
use crate::machine::{EngineCall, Probe};

/// Where the adapter records each apply's pre-change schema fingerprint, in the target schema.
pub const STATE_TABLE: &str = "_applyd_spirit";
pub const SENTINEL: &str = "_spirit_sentinel";

/// A MySQL server Spirit works on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Endpoint {
    /// `host` or `host:port` (3306 by default).
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{text:?} has a port that is not a number"))?,
            ),
            None => (text, 3306),
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{text:?} is not a host name"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

/// How to run Spirit and reach the targets.
#[derive(Debug, Clone)]
pub struct SpiritConfig {
    pub binary: PathBuf,
    /// The server of every environment `hosts` does not name.
    pub host: String,
    pub port: u16,
    /// Servers by environment, or by `environment/deployment` for one deployment of a
    /// rollout. No two name the same server (checked at load): a target — an environment's
    /// database, or a deployment's — is then one schema on one server, and the one active apply
    /// per target the store enforces is one per schema.
    pub hosts: BTreeMap<String, Endpoint>,
    pub username: String,
    pub password: Secret,
    pub threads: u32,
    pub target_chunk_time: Option<String>,
    pub stop_timeout: Duration,
    /// Extra environment for the child (the stand-in's test knobs); never secrets.
    pub env: Vec<(String, String)>,
}

impl SpiritConfig {
    /// The server of everything `hosts` does not name.
    pub fn default_endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The server an apply's target lives on: a deployment's own entry (required: the
    /// deployments of a rollout are different servers, and reaching one server for all of them
    /// would change one schema once per deployment), else the environment's, else the default.
    pub fn endpoint(&self, spec: &ApplySpec) -> Result<Endpoint, String> {
        let env = &spec.target.environment;
        if !spec.deployment.is_empty() {
            let key = format!("{env}/{}", spec.deployment);
            return self.hosts.get(&key).cloned().ok_or_else(|| {
                format!(
                    "no Spirit server for deployment {} of {env}: add \"{key}\" to \
                     [engines.spirit.hosts]",
                    spec.deployment
                )
            });
        }
        Ok(self
            .hosts
            .get(env)
            .cloned()
            .unwrap_or_else(|| self.default_endpoint()))
    }

    /// Every server configured, the default first.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut all = vec![self.default_endpoint()];
        all.extend(self.hosts.values().cloned());
        all
    }

    pub fn from_section(s: &SpiritSection) -> anyhow::Result<SpiritConfig> {
        let mut hosts = BTreeMap::new();
        let mut named: BTreeMap<Endpoint, String> = BTreeMap::new();
        named.insert(
            Endpoint {
                host: s.host.clone(),
                port: s.port,
            },
            "engines.spirit.host".into(),
        );
        for (key, text) in &s.hosts {
            let place = format!("engines.spirit.hosts.{key:?}");
            let e = Endpoint::parse(text).map_err(|m| anyhow::anyhow!("{place}: {m}"))?;
            if let Some(other) = named.insert(e.clone(), place.clone()) {
                anyhow::bail!(
                    "{place} and {other} both name {e}: each environment (or deployment) needs \
                     its own server, or two applies could change one schema at once"
                );
            }
            hosts.insert(key.clone(), e);
        }
        Ok(SpiritConfig {
            binary: s.binary.clone(),
            host: s.host.clone(),
            port: s.port,
            hosts,
            username: s.username.clone(),
            password: s.password()?,
            threads: s.threads,
            target_chunk_time: s.target_chunk_time.clone(),
            stop_timeout: Duration::from_millis(s.stop_timeout_ms),
            env: Vec::new(),
        })
        .and_then(|c| {
            // Refused here, at start-up and in `check-config`, rather than at the first apply.
            for e in c.endpoints() {
                process::conf_text(&c, &e)?;
            }
            Ok(c)
        })
    }
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

/// The Spirit engine.
pub struct SpiritEngine {
    cfg: SpiritConfig,
    runners: Mutex<BTreeMap<String, Runner>>,
    /// How each apply's last runner here ended, with Spirit's words for a failure.
    outcomes: Mutex<BTreeMap<ApplyId, (RunnerStatus, Option<String>)>>,
    epochs: Mutex<BTreeMap<ApplyId, u64>>,
    conf_seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn outcome_reply((status, why): (RunnerStatus, Option<String>)) -> Reply {
    let obs = Observation::Runner(status);
    match why {
        Some(why) => Reply::explained(obs, why),
        None => obs.into(),
    }
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

    fn plan_of(&self, apply: &ApplyRecord) -> Result<Plan, String> {
        plan(&apply.spec.target.database, &apply.spec.ddl)
    }

    async fn status(&self, apply: &ApplyRecord) -> Reply {
        let key = apply.spec.place();
        let id = apply.row.operation;
        {
            let mut runners = lock(&self.runners);
            if let Some(r) = runners.get_mut(&key).filter(|r| r.apply == id) {
                match r.child.try_wait() {
                    Ok(None) => {
                        let report = lock(&r.progress).report();
                        let waiting = report.phase.as_deref() == Some("waitingOnSentinelTable");
                        return Reply::from(Observation::Runner(if waiting {
                            RunnerStatus::WaitingOnSentinel
                        } else {
                            RunnerStatus::Copying
                        }))
                        .with_progress(report);
                    }
                    Ok(Some(status)) => {
                        let r = runners.remove(&key).expect("present");
                        let report = lock(&r.progress).report();
                        let outcome = self.finished(&r, status);
                        lock(&self.outcomes).insert(id, outcome.clone());
                        return outcome_reply(outcome).with_progress(report);
                    }
                    Err(e) => {
                        let why = format!("cannot poll the Spirit process: {e}");
                        tracing::warn!(apply = id, "{why}");
                        return Reply::fault(EngineFault::Transient, why);
                    }
                }
            }
        }
        if let Some(o) = lock(&self.outcomes).get(&id) {
            return outcome_reply(o.clone());
        }
        let plan = match self.plan_of(apply) {
            Ok(p) => p,
            Err(m) => {
                tracing::error!(apply = id, "bad DDL: {m}");
                return Reply::explained(
                    Observation::Runner(RunnerStatus::Failed { retryable: false }),
                    format!("Spirit cannot run this change: {m}"),
                );
            }
        };
        match self.inspect(apply, &plan).await {
            Ok(g) => Observation::Runner(RunnerStatus::Gone(g)).into(),
            Err(e) => {
                let why = format!("cannot inspect the target {}: {e}", apply.spec.target);
                tracing::warn!(apply = id, "{why}");
                Reply::fault(EngineFault::Transient, why)
            }
        }
    }

    async fn start(&self, apply: &ApplyRecord, epoch: u64) -> Reply {
        let key = apply.spec.place();
        let id = apply.row.operation;
        let plan = match self.plan_of(apply) {
            Ok(p) => p,
            Err(m) => {
                tracing::error!(apply = id, "bad DDL, Spirit not started: {m}");
                let f = (
                    RunnerStatus::Failed { retryable: false },
                    Some(format!("Spirit cannot run this change: {m}")),
                );
                lock(&self.outcomes).insert(id, f.clone());
                return outcome_reply(f);
            }
        };
        let superseded = {
            let mut runners = lock(&self.runners);
            match runners.get_mut(&key) {
                Some(r) if r.apply == id && r.epoch >= epoch => {
                    if matches!(r.child.try_wait(), Ok(None)) {
                        // Already running for this lease: starting is idempotent.
                        return Observation::Runner(RunnerStatus::Copying).into();
                    }
                    runners.remove(&key)
                }
                Some(r) if r.apply == id => runners.remove(&key),
                Some(r) => {
                    let why = format!(
                        "apply {} still has a Spirit runner on {key}; not starting a second",
                        r.apply
                    );
                    tracing::warn!(apply = id, "{why}");
                    return Reply::fault(EngineFault::Transient, why);
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
        let prepared: Result<Option<RunnerGone>, InspectError> = async {
            let mut c = self.connect(&apply.spec).await?;
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
            Ok(Some(g)) => return Observation::Runner(RunnerStatus::Gone(g)).into(),
            Ok(None) => {}
            Err(e) => {
                let why = format!("cannot prepare the target {}: {e}", apply.spec.target);
                tracing::warn!(apply = id, "{why}");
                return Reply::fault(EngineFault::Transient, why);
            }
        }
        match self.spawn(apply, epoch, &plan) {
            Ok(r) => {
                lock(&self.outcomes).remove(&id);
                lock(&self.runners).insert(key, r);
                Observation::Runner(RunnerStatus::Copying).into()
            }
            Err(m) => {
                tracing::error!(apply = id, "{m}");
                Reply::fault(EngineFault::Transient, m)
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

    async fn stop(&self, apply: &ApplyRecord) -> Reply {
        let id = apply.row.operation;
        let outcome = match self.take_runner(apply) {
            Some(mut r) => match r.child.try_wait() {
                Ok(Some(s)) => self.finished(&r, s),
                _ => {
                    self.terminate(r, libc::SIGTERM).await;
                    (RunnerStatus::Stopped, None)
                }
            },
            None => match lock(&self.outcomes).get(&id) {
                Some(done @ (RunnerStatus::Completed | RunnerStatus::Failed { .. }, _)) => {
                    done.clone()
                }
                _ => (RunnerStatus::Stopped, None),
            },
        };
        lock(&self.outcomes).insert(id, outcome.clone());
        outcome_reply(outcome)
    }

    async fn cancel(&self, apply: &ApplyRecord) -> Reply {
        let id = apply.row.operation;
        if let Some(r) = self.take_runner(apply) {
            self.terminate(r, libc::SIGKILL).await;
        }
        let plan = match self.plan_of(apply) {
            Ok(p) => p,
            Err(_) => {
                lock(&self.outcomes).insert(id, (RunnerStatus::Cancelled, None));
                return Observation::Runner(RunnerStatus::Cancelled).into();
            }
        };
        let result: Result<RunnerStatus, InspectError> = async {
            // `inspect` refuses while a runner elsewhere still holds the tables.
            if self.inspect(apply, &plan).await? == RunnerGone::NothingLeft {
                return Ok(RunnerStatus::Completed);
            }
            let mut c = self.connect(&apply.spec).await?;
            // The runner is dead: dropping its tables cuts nothing over.
            Self::drop_leftovers(&mut c, &plan, true).await?;
            // The sentinel is schema-wide: only one this apply made (it defers its cutover) is
            // dropped; another migration may be waiting on someone else's.
            if apply.row.options.defer_cutover {
                c.execute(format!("DROP TABLE IF EXISTS {SENTINEL}").as_str())
                    .await?;
            }
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
                lock(&self.outcomes).insert(id, (s, None));
                Observation::Runner(s).into()
            }
            Err(e) => {
                let why = format!("cancelling on {}: {e}", apply.spec.target);
                tracing::warn!(apply = id, "{why}");
                Reply::fault(EngineFault::Transient, why)
            }
        }
    }
}

#[async_trait]
impl Engine for SpiritEngine {
    async fn probe(&self, apply: &ApplyRecord, _epoch: u64, probe: Probe) -> Reply {
        if let Err(why) = self.cfg.endpoint(&apply.spec) {
            return Reply::fault(EngineFault::Permanent, why);
        }
        match probe {
            Probe::RunnerStatus => self.status(apply).await,
            other => {
                let why = format!("a PlanetScale probe reached the Spirit engine: {other:?}");
                tracing::error!(apply = apply.row.id, "{why}");
                Reply::fault(EngineFault::Permanent, why)
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

    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Reply {
        if !self.fence(apply.row.operation, epoch) {
            return Observation::Fault(EngineFault::StaleEpoch).into();
        }
        if let Err(why) = self.cfg.endpoint(&apply.spec) {
            return Reply::fault(EngineFault::Permanent, why);
        }
        match call {
            EngineCall::StartRunner => self.start(apply, epoch).await,
            EngineCall::StopRunner => self.stop(apply).await,
            EngineCall::CancelRunner => self.cancel(apply).await,
            EngineCall::DropSentinel => self.drop_sentinel(apply).await,
            other => {
                let why = format!("a PlanetScale call reached the Spirit engine: {other:?}");
                tracing::error!(apply = apply.row.id, "{why}");
                Reply::fault(EngineFault::Permanent, why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(hosts: &[(&str, &str)]) -> SpiritSection {
        SpiritSection {
            binary: "spirit".into(),
            host: "db-default".into(),
            port: 3306,
            hosts: hosts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            username: "spirit".into(),
            password: None,
            threads: 4,
            target_chunk_time: None,
            stop_timeout_ms: 1000,
        }
    }

    fn spec(environment: &str, deployment: &str) -> ApplySpec {
        ApplySpec {
            identifier: "apply-1".into(),
            target: crate::machine::apply::Target {
                database: "shop".into(),
                environment: environment.into(),
            },
            deployment: deployment.into(),
            ddl: vec!["ALTER TABLE t ADD COLUMN c INT".into()],
            fingerprint: None,
        }
    }

    #[test]
    fn each_environment_and_deployment_finds_its_server() {
        let cfg = SpiritConfig::from_section(&section(&[
            ("production", "db-prod:3307"),
            ("production/eu-west-1", "db-prod-eu"),
        ]))
        .unwrap();
        let at = |env, dep| cfg.endpoint(&spec(env, dep)).map(|e| e.to_string());
        assert_eq!(at("production", "").unwrap(), "db-prod:3307");
        assert_eq!(at("production", "eu-west-1").unwrap(), "db-prod-eu:3306");
        assert_eq!(at("staging", "").unwrap(), "db-default:3306");
        // A deployment is never sent to its environment's server by default.
        let e = at("production", "us-east-1").unwrap_err();
        assert!(e.contains("\"production/us-east-1\""), "{e}");
    }

    #[test]
    fn two_places_on_one_server_or_an_unreadable_host_are_refused() {
        let e = SpiritConfig::from_section(&section(&[
            ("production", "db-prod"),
            ("staging", "db-prod:3306"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"staging\"") && e.contains("\"production\"") && e.contains("db-prod:3306"),
            "{e}"
        );
        let e = SpiritConfig::from_section(&section(&[("qa", "db-default")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("engines.spirit.host"), "{e}");
        let e = SpiritConfig::from_section(&section(&[("qa", "db:port")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("engines.spirit.hosts.\"qa\""), "{e}");
    }

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
}
