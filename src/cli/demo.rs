use std::process::ExitCode;

use crate::demo::DemoStore;

/// Options of `applyd demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Run the demo on MySQL/MariaDB instead of the in-memory store (mysql://user:pass@host:port/db;
    /// the database is migrated and the demo's applies stay there afterwards).
    #[arg(long)]
    database_url: Option<String>,
}

pub fn run(args: DemoArgs) -> ExitCode {
    let store = match args.database_url {
        Some(url) => DemoStore::MySql { url },
        None => DemoStore::Memory,
    };
    let result = super::runtime().block_on(crate::demo::run_on(store, |line| println!("{line}")));
    match result {
        Ok(summary) => {
            for line in &summary.lines {
                println!("{line}");
            }
            if summary.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("applyd demo: {e}");
            ExitCode::FAILURE
        }
    }
}
