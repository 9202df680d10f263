//! `applyd submit`, `applyd status` and the control commands: talk to the database directly.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::machine::{ApplyOptions, ControlOp, EngineKind, Rules};
use crate::store::mysql::MySqlStore;
use crate::store::status::{ApplyStatus, Inspect};
use crate::store::{NewApply, Store, Target};

#[derive(clap::Args)]
pub struct Db {
    /// mysql://user:password@host:port/database (or APPLYD_DATABASE_URL)
    #[arg(long, env = "APPLYD_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

impl Db {
    /// Opens the store under the rules the operators run (their `[operator]` parameters, from
    /// `APPLYD_CONFIG` and the `APPLYD_*` variables, as `applyd serve` reads them), so
    /// explanations give the operators' own timings.
    pub(super) async fn open(&self) -> Result<MySqlStore, String> {
        let path = std::env::var_os("APPLYD_CONFIG").map(std::path::PathBuf::from);
        let rules = crate::config::Config::load(path.as_deref())
            .map(|c| Rules::new(c.operator.params()))
            .map_err(|e| format!("cannot read the configuration: {e}"))?;
        MySqlStore::connect(&self.database_url, rules)
            .await
            .map_err(|e| format!("cannot open the database: {e}"))
    }
}

#[derive(clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    db: Db,
    /// A plan file (TOML) naming the whole submission instead of the options below; see
    /// README.md for its fields.
    #[arg(long, conflicts_with_all = ["database", "environment", "engine", "ddl", "file", "allow_destructive", "defer_cutover", "defer_deploy", "skip_revert"])]
    plan: Option<PathBuf>,
    /// Target database name.
    #[arg(long, required_unless_present = "plan")]
    database: Option<String>,
    /// Target environment, e.g. production.
    #[arg(long, required_unless_present = "plan")]
    environment: Option<String>,
    /// planetscale or spirit
    #[arg(long, required_unless_present = "plan")]
    engine: Option<EngineKind>,
    /// A DDL statement (repeatable).
    #[arg(long = "ddl")]
    ddl: Vec<String>,
    /// A file of DDL statements separated by `;` (split by the SQL tokenizer, so a `;` in a
    /// string or a comment does not split).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Accept statements that can lose data (DROP TABLE, DROP COLUMN, DROP INDEX, MODIFY, …).
    #[arg(long)]
    allow_destructive: bool,
    #[arg(long)]
    defer_cutover: bool,
    #[arg(long)]
    defer_deploy: bool,
    #[arg(long)]
    skip_revert: bool,
    /// Follow the apply until it is terminal, as `applyd watch` does, and exit with its code.
    #[arg(long)]
    wait: bool,
    /// With --wait: stop following after this many seconds (exit 6; the apply goes on).
    #[arg(long, requires = "wait", value_name = "SECONDS")]
    timeout: Option<u64>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    db: Db,
    /// One apply (a number or apply-<number>); all recent applies when absent.
    id: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ControlArgs {
    #[command(flatten)]
    db: Db,
    /// The apply: a number or apply-<number>.
    id: String,
}

pub(super) fn parse_id(raw: &str) -> Result<u64, String> {
    raw.strip_prefix("apply-")
        .unwrap_or(raw)
        .parse()
        .map_err(|_| format!("{raw:?} is not an apply id (a number, or apply-<number>)"))
}

fn finish(what: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("applyd {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The submission the flags describe (the plan file is read by `plan::read`).
fn from_flags(args: &SubmitArgs) -> Result<NewApply, String> {
    let mut ddl = args.ddl.clone();
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let statements = crate::ddl::split_script(&text)
            .map_err(|e| format!("cannot read the statements of {}: {e}", path.display()))?;
        ddl.extend(statements);
    }
    if ddl.is_empty() {
        return Err("no DDL: pass --ddl \"ALTER TABLE ...\" or --file schema.sql".to_string());
    }
    // clap requires these unless a plan is given.
    let required = |what: &str| format!("--{what} is required without --plan");
    Ok(NewApply {
        allow_destructive: args.allow_destructive,
        rollout: None,
        target: Target {
            database: args.database.clone().ok_or_else(|| required("database"))?,
            environment: args
                .environment
                .clone()
                .ok_or_else(|| required("environment"))?,
        },
        engine: args.engine.ok_or_else(|| required("engine"))?,
        ddl,
        options: ApplyOptions {
            defer_cutover: args.defer_cutover,
            defer_deploy: args.defer_deploy,
            skip_revert: args.skip_revert,
        },
    })
}

pub fn submit(args: SubmitArgs) -> ExitCode {
    let result = super::runtime().block_on(async {
        let new = match &args.plan {
            Some(path) => crate::plan::read(path).map_err(|e| e.to_string())?,
            None => from_flags(&args)?,
        };
        // Refused before the database is even opened: the same checks the store makes,
        // the rollout's included.
        crate::plan::check(&new).map_err(|e| e.to_string())?;
        let store = args.db.open().await?;
        let done = store.submit_or_adopt(new).await.map_err(|e| e.to_string())?;
        if done.adopted {
            println!(
                "apply-{} is already live with this change on the target; nothing new was submitted",
                done.id
            );
        } else {
            println!("submitted apply-{}", done.id);
        }
        if !args.wait {
            return Ok(0);
        }
        let timeout = args.timeout.map(std::time::Duration::from_secs);
        super::watch::follow(&store, done.id, std::time::Duration::from_secs(1), timeout).await
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("applyd submit: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn print_table(applies: &[ApplyStatus]) {
    println!(
        "{:<10} {:<12} {:<24} {:<26} {:<28} {:>5} {:>8} {:>9}  pending",
        "apply", "engine", "target", "state", "owner", "epoch", "hb age", "progress"
    );
    for a in applies {
        println!(
            "{:<10} {:<12} {:<24} {:<26} {:<28} {:>5} {:>8} {:>9}  {}",
            a.identifier,
            a.engine.as_str(),
            a.target.to_string(),
            a.state.as_str(),
            a.lease_owner
                .as_deref()
                .unwrap_or(if a.parked_wake_in_ms.is_some() {
                    "(parked)"
                } else {
                    "—"
                }),
            a.lease_epoch,
            crate::report::age(a.heartbeat_age_ms),
            a.progress(),
            a.pending_requests
                .iter()
                .map(|o| o.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
}

pub fn status(args: StatusArgs) -> ExitCode {
    let result = super::runtime().block_on(async {
        let store = args.db.open().await?;
        let applies = match &args.id {
            Some(raw) => vec![store
                .status(parse_id(raw)?)
                .await
                .map_err(|e| e.to_string())?],
            None => store.list(100).await.map_err(|e| e.to_string())?,
        };
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&applies).map_err(|e| e.to_string())?
            );
            return Ok(());
        }
        print_table(&applies);
        if let [one] = applies.as_slice() {
            if let Some(e) = &one.explanation {
                println!("\nwhy:");
                for line in e.lines() {
                    println!("  {line}");
                }
            }
            for line in crate::report::rollout_lines(one) {
                println!("{line}");
            }
            println!("\nddl:");
            for d in &one.ddl {
                println!("  {d};");
            }
            if !one.tasks.is_empty() {
                println!("tasks:");
                for (i, t) in one.tasks.iter().enumerate() {
                    let table = t.table.as_deref().unwrap_or("(table not recorded)");
                    println!("  {}. {table:<32} {}", i + 1, t.state);
                    if let Some(p) = &t.progress {
                        println!("     progress: {}", p.summary());
                    }
                    // A reason stays on a task a retry took up again; shown while it holds.
                    let failed = t.state.is_failure();
                    if let Some(e) = t.error.as_ref().filter(|_| failed) {
                        println!("     why: {e}");
                    }
                }
            }
            if let Some(w) = &one.wait {
                println!("wait: {w}");
            }
            if let Some(e) = &one.error {
                println!("error: {e}");
            }
            for (op, status) in &one.requests {
                println!("request {op}: {status}");
            }
            let timeline = store
                .timeline(one.id, 10)
                .await
                .map_err(|e| e.to_string())?;
            if !timeline.is_empty() {
                println!("timeline (last {}):", timeline.len());
                for line in crate::report::timeline_lines(&timeline) {
                    println!("  {line}");
                }
            }
        }
        Ok(())
    });
    finish("status", result)
}

/// Who asks from this command line, for the timeline: `cli:alice@db-7`.
fn asker() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        format!("cli:{user}")
    } else {
        format!("cli:{user}@{host}")
    }
}

pub fn control(op: ControlOp, args: ControlArgs) -> ExitCode {
    let result = super::runtime().block_on(async {
        let id = parse_id(&args.id)?;
        let store = args.db.open().await?;
        let outcome = crate::store::Store::request_by(&store, id, op, &asker())
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "{op} requested for apply-{id} ({outcome:?}); the owner acts on it at its next step"
        );
        Ok(())
    });
    finish(op.as_str(), result)
}
