//! The command line. Each subcommand lives in its own module; this file only parses and
//! dispatches.

mod applies;
mod bench;
mod bench_operator;
mod bench_relay;
mod check_config;
mod demo;
mod fake_engines;
mod logging;
mod migrate;
mod serve;
mod watch;

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
    /// Run the operator on in-process fakes, kill drivers mid-work, and watch every apply and a
    /// rollout finish.
    Demo(demo::DemoArgs),
    /// Run the operator: a pool of drivers and the HTTP API, against MySQL.
    Serve(serve::ServeArgs),
    /// Submit a schema change (`--wait` follows it to its end, with `watch`'s exit codes).
    Submit(applies::SubmitArgs),
    /// Show applies: state, lease owner, epoch, heartbeat age, pending requests; for one apply,
    /// why it is where it is and its timeline.
    Status(applies::StatusArgs),
    /// Follow an apply with progress bars until it is terminal; exit 0 only when it completed.
    Watch(watch::WatchArgs),
    /// Ask the owner to stop a Spirit apply (checkpoint kept; resume with `start`).
    Stop(applies::ControlArgs),
    /// Resume a stopped apply, or deploy a deferred PlanetScale deploy request.
    Start(applies::ControlArgs),
    /// Cancel an apply (not once deployed: revert or skip-revert then).
    Cancel(applies::ControlArgs),
    /// Cut over an apply waiting for cutover.
    Cutover(applies::ControlArgs),
    /// Revert a PlanetScale apply in its revert window.
    Revert(applies::ControlArgs),
    /// Close the revert window of a PlanetScale apply now.
    SkipRevert(applies::ControlArgs),
    /// Release a rollout held by `on_failure = pause`: later operations run (one-way).
    Release(applies::ControlArgs),
    /// Serve the fake PlanetScale (over its API's paths) and Spirit over loopback (tests, trials).
    FakeEngines(fake_engines::FakeEnginesArgs),
    /// Apply the embedded schema migrations to a MySQL/MariaDB database.
    Migrate(migrate::MigrateArgs),
    /// Validate a configuration file and reach every configured engine.
    CheckConfig(check_config::CheckConfigArgs),
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
        Cmd::Serve(args) => serve::run(args),
        Cmd::Submit(args) => applies::submit(args),
        Cmd::Status(args) => applies::status(args),
        Cmd::Watch(args) => watch::watch(args),
        Cmd::Stop(args) => applies::control(crate::machine::ControlOp::Stop, args),
        Cmd::Start(args) => applies::control(crate::machine::ControlOp::Start, args),
        Cmd::Cancel(args) => applies::control(crate::machine::ControlOp::Cancel, args),
        Cmd::Cutover(args) => applies::control(crate::machine::ControlOp::Cutover, args),
        Cmd::Revert(args) => applies::control(crate::machine::ControlOp::Revert, args),
        Cmd::SkipRevert(args) => applies::control(crate::machine::ControlOp::SkipRevert, args),
        Cmd::Release(args) => applies::control(crate::machine::ControlOp::Release, args),
        Cmd::FakeEngines(args) => fake_engines::run(args),
        Cmd::Migrate(args) => migrate::run(args),
        Cmd::CheckConfig(args) => check_config::run(args),
        Cmd::Bench(args) => bench::run(args),
    }
}

/// A multi-threaded tokio runtime for the async subcommands.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
