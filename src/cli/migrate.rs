//! `applyd migrate`: apply the embedded schema migrations to a database.

use std::process::ExitCode;

use crate::machine::Rules;
use crate::store::mysql::{MySqlStore, MIGRATOR};

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// mysql://user:password@host:port/database
    #[arg(long)]
    database_url: String,
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
