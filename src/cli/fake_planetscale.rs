//! `applyd fake-planetscale`: the fake PlanetScale API over loopback, for integration tests and
//! trials. Prints `listening on ADDR` once it accepts connections.

use std::process::ExitCode;

use crate::engine::planetscale_fake_server::{quick_timings, serve, FakeServerOptions, Faults};

/// Options of `applyd fake-planetscale`.
#[derive(clap::Args)]
pub struct FakePlanetScaleArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Share of API requests answered 503 before anything happens (0..1).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Delay before every reply, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of API requests applied whose reply is then lost as a 502 (0..1).
    #[arg(long, default_value_t = 0.0)]
    lose_rate: f64,
    /// Seed of the fault injection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Every phase (branch ready, validation, deploy, cutover, revert) takes this long.
    #[arg(long)]
    phase_ms: Option<u64>,
    /// Require `Authorization: <token-id>:<token>` (both must be given).
    #[arg(long, requires = "token")]
    token_id: Option<String>,
    #[arg(
        long,
        requires = "token_id",
        env = "APPLYD_FAKE_PLANETSCALE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

pub fn run(args: FakePlanetScaleArgs) -> ExitCode {
    for (name, rate) in [
        ("--fail-rate", args.fail_rate),
        ("--lose-rate", args.lose_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            eprintln!("error: {name} must be between 0 and 1, not {rate}");
            return ExitCode::FAILURE;
        }
    }
    let opts = FakeServerOptions {
        faults: Faults {
            fail_rate: args.fail_rate,
            lose_rate: args.lose_rate,
            latency_ms: args.latency_ms,
        },
        seed: args.seed,
        timings: args.phase_ms.map(quick_timings).unwrap_or_default(),
        token: args.token_id.zip(args.token),
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
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
