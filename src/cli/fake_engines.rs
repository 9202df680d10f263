//! `applyd fake-engines`: the fake PlanetScale and Spirit state machines served over loopback
//! (the demo's and the crash tests' separate processes share one set of fakes through it).

use std::process::ExitCode;

use crate::engine::fake::FakeTimings;

#[derive(clap::Args)]
pub struct FakeEnginesArgs {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// Phases of seconds instead of minutes (a deploy in 1.5 s, a Spirit copy in 3 s).
    #[arg(long)]
    fast: bool,
}

pub fn run(args: FakeEnginesArgs) -> ExitCode {
    let timings = if args.fast {
        FakeTimings::fast()
    } else {
        FakeTimings::default()
    };
    match super::runtime().block_on(crate::engine::remote_fake::serve(args.listen, timings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("applyd fake-engines: {e}");
            ExitCode::FAILURE
        }
    }
}
