//! `applyd check-config`: validate a configuration file and reach every configured engine.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

/// Options of `applyd check-config`.
#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML configuration file.
    #[arg(long)]
    config: PathBuf,
}

pub fn run(args: CheckConfigArgs) -> ExitCode {
    let config = match Config::load(Some(&args.config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ok    config {} parses and validates",
        args.config.display()
    );
    if config.engines.planetscale.is_none() && config.engines.spirit.is_none() {
        println!("note  no [engines.planetscale] or [engines.spirit] section: nothing to reach");
        return ExitCode::SUCCESS;
    }
    let checks = super::runtime().block_on(crate::engine::real::check_engines(&config));
    let mut ok = true;
    for c in &checks {
        println!(
            "{:<5} {}: {}",
            if c.ok { "ok" } else { "FAIL" },
            c.what,
            c.detail
        );
        ok &= c.ok;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
