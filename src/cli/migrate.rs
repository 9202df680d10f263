//! `applyd migrate`: apply the embedded schema migrations to a database.

use std::process::ExitCode;

use sqlx::MySqlPool;

use crate::machine::Rules;
use crate::store::mysql::{MySqlStore, MIGRATOR};

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// mysql://user:password@host:port/database (or APPLYD_DATABASE_URL)
    #[arg(long, env = "APPLYD_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

/// Refuse to run against a database whose schema this binary did not migrate: the operator
/// would otherwise start, fail every query and only log about it.
pub(super) async fn check_schema(pool: &MySqlPool) -> Result<(), String> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
            .fetch_all(pool)
            .await
        {
            Ok(v) => v,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42S02") => {
                return Err(
                    "the database has no applyd schema yet: run `applyd migrate` first".into(),
                )
            }
            Err(e) => return Err(format!("cannot read the schema version: {e}")),
        };
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{} ({})", m.version, m.description))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the database schema is behind this applyd: migrations {} are not applied; run `applyd migrate`",
            missing.join(", ")
        ));
    }
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    if let Some(newer) = applied.iter().find(|v| !known.contains(v)) {
        return Err(format!(
            "the database schema has migration {newer}, which this applyd does not know: it is older than the schema; upgrade applyd"
        ));
    }
    Ok(())
}

pub fn run(args: MigrateArgs) -> ExitCode {
    super::runtime().block_on(async {
        let store = match MySqlStore::connect(&args.database_url, Rules::default()).await {
            Ok(store) => store,
            Err(e) => {
                eprintln!("applyd migrate: {e}");
                return ExitCode::FAILURE;
            }
        };
        match store.migrate().await {
            Ok(()) => {
                let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
                println!(
                    "schema up to date ({} migrations, latest {latest})",
                    MIGRATOR.iter().count()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("applyd migrate: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
