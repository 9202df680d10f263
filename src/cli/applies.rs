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
    async fn open(&self) -> Result<MySqlStore, String> {
        MySqlStore::connect(&self.database_url, Rules::default())
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

fn parse_id(raw: &str) -> Result<u64, String> {
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
        Ok(())
    });
    finish("submit", result)
}

fn age(ms: Option<u64>) -> String {
    ms.map_or("—".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
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
            age(a.heartbeat_age_ms),
            a.progress(),
            a.pending_requests
                .iter()
                .map(|o| o.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
}

/// A rollout's policy and one line per operation, for `applyd status APPLY` (nothing for an
/// apply without a rollout): `#n deployment [step-N] state owner@epoch hb attempt progress`,
/// then, indented, what holds the operation back and its error. Columns are as wide as their
/// widest value, so long deployment names stay aligned.
pub fn rollout_lines(a: &ApplyStatus) -> Vec<String> {
    let Some(policy) = &a.rollout else {
        return Vec::new();
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut lines = vec![format!(
        "rollout: cutover_policy={} on_failure={} max_drivers_per_apply={} released={} held={}",
        policy.cutover.as_str(),
        policy.on_failure.as_str(),
        policy.max_drivers,
        yes_no(policy.released),
        yes_no(policy.held),
    )];
    let rows: Vec<[String; 8]> = a
        .operations
        .iter()
        .enumerate()
        .map(|(i, o)| {
            [
                format!("#{}", i + 1),
                o.deployment.clone(),
                o.key.clone(),
                o.state.as_str().to_string(),
                o.lease_owner.as_ref().map_or("—".to_string(), |owner| {
                    format!("{owner}@{}", o.lease_epoch)
                }),
                // As on the apply's line: a finished operation's last heartbeat means nothing.
                format!(
                    "hb {}",
                    age(o.heartbeat_age_ms.filter(|_| o.state.is_active()))
                ),
                format!("attempt {}", o.attempt),
                format!("{}/{} tasks", o.tasks_completed, o.tasks_total),
            ]
        })
        .collect();
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for (row, o) in rows.iter().zip(&a.operations) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            // A column empty on every row (no table steps) takes no room.
            .filter(|(_, w)| *w > 0)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        lines.push(format!("  {}", cells.join("  ").trim_end()));
        if let Some(gate) = &o.gate {
            lines.push(format!("      {gate}"));
        }
        if let Some(e) = &o.error {
            let closed = if o.failed_closed {
                " (failed closed)"
            } else {
                ""
            };
            lines.push(format!("      error{closed}: {e}"));
        }
    }
    lines
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
            for line in rollout_lines(one) {
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
        }
        Ok(())
    });
    finish("status", result)
}

pub fn control(op: ControlOp, args: ControlArgs) -> ExitCode {
    let result = super::runtime().block_on(async {
        let id = parse_id(&args.id)?;
        let store = args.db.open().await?;
        let outcome = crate::api::request_control(&store, &store, id, op)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "{op} requested for apply-{id} ({outcome:?}); the owner acts on it at its next step"
        );
        Ok(())
    });
    finish(op.as_str(), result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::rollout::{CutoverPolicy, OnFailure, RolloutPolicy};
    use crate::machine::ApplyState;
    use crate::store::status::OperationStatus;

    fn operation(i: u32, deployment: &str, state: ApplyState) -> OperationStatus {
        OperationStatus {
            id: u64::from(i) + 10,
            deployment: deployment.into(),
            key: String::new(),
            deployment_index: i,
            step: 0,
            state,
            attempt: 0,
            lease_owner: None,
            lease_epoch: 0,
            heartbeat_age_ms: None,
            tasks_total: 1,
            tasks_completed: 0,
            failed_closed: false,
            error: None,
            gate: None,
        }
    }

    fn rollout(operations: Vec<OperationStatus>, policy: Option<RolloutPolicy>) -> ApplyStatus {
        ApplyStatus {
            id: 7,
            identifier: "apply-7".into(),
            target: Target {
                database: "shop".into(),
                environment: "production".into(),
            },
            engine: EngineKind::Spirit,
            state: ApplyState::Running,
            options: ApplyOptions::default(),
            ddl: vec!["ALTER TABLE users ADD COLUMN c INT".into()],
            attempt: 0,
            lease_owner: None,
            lease_epoch: 4,
            heartbeat_age_ms: None,
            state_age_ms: 0,
            resume: Default::default(),
            error: None,
            tasks_total: 3,
            tasks_completed: 1,
            tasks: Vec::new(),
            pending_requests: Vec::new(),
            requests: Vec::new(),
            parked_wake_in_ms: None,
            wait: None,
            operations,
            rollout: policy,
        }
        // The gates are filled as the stores fill them.
        .explain()
    }

    #[test]
    fn a_rollout_prints_its_policy_and_one_aligned_line_per_operation() {
        let mut first = operation(0, "us-east-1", ApplyState::Completed);
        first.attempt = 1;
        first.lease_epoch = 2;
        first.tasks_completed = 1;
        first.lease_owner = Some("db-1/17/driver-0".into());
        first.heartbeat_age_ms = Some(9_000);
        let mut second = operation(1, "us-west-2", ApplyState::Running);
        second.attempt = 2;
        second.lease_owner = Some("db-3/9001/driver-1".into());
        second.lease_epoch = 4;
        second.heartbeat_age_ms = Some(400);
        let third = operation(2, "eu-west-1", ApplyState::Pending);
        let policy = RolloutPolicy {
            cutover: CutoverPolicy::Rolling,
            on_failure: OnFailure::Pause,
            max_drivers: 1,
            released: false,
            held: false,
        };
        let status = rollout(vec![first, second, third], Some(policy));
        assert_eq!(
            rollout_lines(&status),
            [
                "rollout: cutover_policy=rolling on_failure=pause max_drivers_per_apply=1 released=no held=no",
                "  #1  us-east-1  completed  db-1/17/driver-0@2    hb —     attempt 1  1/1 tasks",
                "  #2  us-west-2  running    db-3/9001/driver-1@4  hb 0.4s  attempt 2  0/1 tasks",
                "  #3  eu-west-1  pending    —                     hb —     attempt 0  0/1 tasks",
                "      start: waits for operation #2 to complete",
            ]
        );
    }

    #[test]
    fn table_steps_and_errors_get_their_own_column_and_line() {
        let mut failed = operation(0, "a", ApplyState::Failed);
        failed.key = "step-1".into();
        failed.error = Some("duplicate column c".into());
        failed.failed_closed = true;
        let mut later = operation(0, "a", ApplyState::Pending);
        later.key = "step-2".into();
        later.step = 1;
        let status = rollout(vec![failed, later], Some(RolloutPolicy::default()));
        let lines = rollout_lines(&status);
        assert_eq!(
            lines[1..],
            [
                "  #1  a  step-1  failed   —  hb —  attempt 0  0/1 tasks",
                "      error (failed closed): duplicate column c",
                "  #2  a  step-2  pending  —  hb —  attempt 0  0/1 tasks",
                "      start: will not run: an earlier failure ended the rollout here",
            ]
        );
        assert!(rollout_lines(&rollout(Vec::new(), None)).is_empty());
    }
}
