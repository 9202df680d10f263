//! `applyd fake-engines`: the fake PlanetScale (over its real API's paths) and the fake Spirit,
//! served over loopback so that several processes share one set of fakes (trials, the crash
//! tests, `applyd bench operator`). Prints `listening on ADDR` once it accepts connections.

use std::process::ExitCode;

use crate::engine::fake::FakeTimings;
use crate::engine::fake_server::{quick_timings, serve, BranchServer, FakeServerOptions, Faults};

/// Options of `applyd fake-engines`.
#[derive(clap::Args)]
pub struct FakeEnginesArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Phases of seconds instead of minutes (a deploy in 1.5 s, a Spirit copy in 3 s).
    #[arg(long, conflicts_with = "phase_ms")]
    fast: bool,
    /// Every PlanetScale phase (branch ready, validation, deploy, cutover, revert) takes this long.
    #[arg(long)]
    phase_ms: Option<u64>,
    /// Share of PlanetScale API requests answered 503 before anything happens (0..1).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Delay before every PlanetScale API reply, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of PlanetScale API requests applied whose reply is then lost as a 502 (0..1).
    #[arg(long, default_value_t = 0.0)]
    lose_rate: f64,
    /// Seed of the fault injection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Require `Authorization: <token-id>:<token>` on the PlanetScale API (both must be given).
    #[arg(long, requires = "token")]
    token_id: Option<String>,
    #[arg(
        long,
        requires = "token_id",
        env = "APPLYD_FAKE_PLANETSCALE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// FAKE-ONLY: a MySQL server (`host:port`) every branch password points at, so the real
    /// engine applies branch DDL there: each PlanetScale database is the schema of that name.
    #[arg(long)]
    branch_server: Option<String>,
    /// The account branch passwords log in as on `--branch-server`.
    #[arg(long, default_value = "root", requires = "branch_server")]
    branch_user: String,
    /// Its password (empty: none).
    #[arg(
        long,
        default_value = "",
        requires = "branch_server",
        env = "APPLYD_FAKE_BRANCH_PASSWORD",
        hide_env_values = true
    )]
    branch_password: String,
}

pub fn run(args: FakeEnginesArgs) -> ExitCode {
    for (name, rate) in [
        ("--fail-rate", args.fail_rate),
        ("--lose-rate", args.lose_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            eprintln!("error: {name} must be between 0 and 1, not {rate}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(address) = &args.branch_server {
        let port = address.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(p)) if p > 0) {
            eprintln!("error: --branch-server must be host:port, not {address:?}");
            return ExitCode::FAILURE;
        }
    }
    let timings = match (args.fast, args.phase_ms) {
        (true, _) => FakeTimings::fast(),
        (false, Some(ms)) => quick_timings(ms),
        (false, None) => FakeTimings::default(),
    };
    let opts = FakeServerOptions {
        faults: Faults {
            fail_rate: args.fail_rate,
            lose_rate: args.lose_rate,
            latency_ms: args.latency_ms,
        },
        seed: args.seed,
        timings,
        token: args.token_id.zip(args.token),
        branch_server: args.branch_server.map(|address| BranchServer {
            address,
            username: args.branch_user,
            password: args.branch_password,
        }),
    };
    let result = super::runtime().block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening on {addr}");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(listener, opts, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("applyd fake-engines: {e}");
            ExitCode::FAILURE
        }
    }
}
