use std::process::ExitCode;

use clap::{Parser, Subcommand};

use applyd::machine::render::{render, Format};

/// applyd: crash-safe online schema changes on MySQL (Spirit) and PlanetScale.
#[derive(Parser)]
#[command(name = "applyd", version, about)]
struct Cli {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Table { format } => {
            print!("{}", render(format));
            ExitCode::SUCCESS
        }
    }
}
