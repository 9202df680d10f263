//! The command line. Each subcommand lives in its own module; this file only parses and
//! dispatches.

mod bench;
mod demo;
mod migrate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::machine::render::{render, Format};

/// applyd: crash-safe online schema changes on MySQL (Spirit) and PlanetScale (deploy requests).
#[derive(Parser)]
#[command(name = "applyd", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the state machine (claim classes, claim arms, transitions) generated from the rules.
    Table {
        /// markdown, mermaid or dot
        #[arg(long, default_value = "markdown")]
        format: Format,
    },
    /// Run the operator on in-process fakes, kill two drivers, and watch every apply finish.
    Demo(demo::DemoArgs),
    /// Apply the embedded schema migrations to a MySQL/MariaDB database.
    Migrate(migrate::MigrateArgs),
    /// Benchmarks (printed figures, measured against a baseline in the same run).
    Bench(bench::BenchArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Table { format } => {
            print!("{}", render(format));
            ExitCode::SUCCESS
        }
        Cmd::Demo(args) => demo::run(args),
        Cmd::Migrate(args) => migrate::run(args),
        Cmd::Bench(args) => bench::run(args),
    }
}

/// A multi-threaded tokio runtime for the async subcommands.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}
