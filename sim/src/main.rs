//! `applyd-sim`: run seeds, replay one seed or a model counterexample.

use std::process::ExitCode;

use applyd::machine::claim::ClaimPath;
use applyd::machine::Mutant;
use applyd_sim::schedule::{self, Schedule};
use applyd_sim::{first_failure, run_seeds, self_check, Preset, Sim};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "applyd-sim",
    about = "Deterministic simulation of applyd's workers against fake PlanetScale and Spirit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run seeds START..START+N; print each failing seed; exit 1 if any failed.
    Run {
        #[arg(long)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long, default_value = "ci")]
        preset: String,
        /// Switch on one historical bug (see `applyd-sim mutants`).
        #[arg(long)]
        mutant: Option<String>,
        /// Threads to spread seeds over (each seed is single-threaded and deterministic).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Run every seed twice and fail a seed whose two traces differ.
        #[arg(long)]
        self_check: bool,
        /// The claims the workers make: `operation` (production's default) or `apply`.
        #[arg(long, default_value = "operation")]
        claim_path: ClaimPath,
    },
    /// Re-run one seed exactly, or replay a schedule exported by applyd-model.
    Replay {
        seed: Option<u64>,
        #[arg(long, conflicts_with = "seed")]
        schedule: Option<std::path::PathBuf>,
        /// Print every event: time, worker, apply, action, state, epoch.
        #[arg(long)]
        trace: bool,
        #[arg(long, default_value = "ci")]
        preset: String,
        #[arg(long)]
        mutant: Option<String>,
        /// Run the seed twice and compare the trace hashes.
        #[arg(long)]
        self_check: bool,
        /// The claims the workers make: `operation` (production's default) or `apply`.
        #[arg(long, default_value = "operation")]
        claim_path: ClaimPath,
    },
    /// For every mutant, the first failing seed within the budget.
    Mutants {
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long, default_value = "ci")]
        preset: String,
        /// The claims the workers make: `operation` (production's default) or `apply`.
        #[arg(long, default_value = "operation")]
        claim_path: ClaimPath,
    },
}

fn parse_mutant(m: Option<&str>) -> Result<Option<Mutant>, String> {
    m.map(str::parse).transpose()
}

fn replay_hint(seed: u64, preset: &str, path: ClaimPath, mutant: Option<Mutant>) -> String {
    let m = mutant.map(|m| format!(" --mutant {m}")).unwrap_or_default();
    let p = if path == ClaimPath::default() {
        String::new()
    } else {
        format!(" --claim-path {}", path.as_str())
    };
    format!("applyd-sim replay {seed} --preset {preset}{p}{m} --trace")
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("applyd-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode, String> {
    match Cli::parse().command {
        Command::Run {
            seeds,
            start,
            preset,
            mutant,
            jobs,
            self_check,
            claim_path,
        } => {
            let p = Preset::by_name(&preset)?.with_claim_path(claim_path);
            let mutant = parse_mutant(mutant.as_deref())?;
            let summary = run_seeds(start, seeds, p, mutant, jobs, self_check);
            for (seed, why) in &summary.failed {
                println!("seed {seed}: FAILED {why}");
                println!(
                    "  replay: {}",
                    replay_hint(*seed, &preset, claim_path, mutant)
                );
            }
            println!(
                "events_per_s={:.0} jobs={jobs} preset={preset} claim_path={} mutant={}",
                summary.events_per_s(),
                claim_path.as_str(),
                mutant.map_or("none".to_string(), |m| m.to_string())
            );
            println!("{}", summary.line());
            Ok(if summary.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Replay {
            seed,
            schedule: Some(path),
            trace,
            mutant,
            ..
        } => {
            let _ = seed;
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let s = Schedule::parse(&text)?;
            let mutant = match parse_mutant(mutant.as_deref())? {
                Some(m) => Some(m),
                None => s.mutant()?,
            };
            let r = schedule::replay(&s, mutant, trace);
            for d in &r.divergences {
                println!("diverged: {d}");
            }
            if let Some(v) = &s.violation {
                println!("model says: {v}");
            }
            let code = match &r.outcome.failure {
                Some(f) => {
                    println!("schedule {}: FAILED {f}", path.display());
                    if !trace {
                        for e in &f.recent {
                            println!("  {e}");
                        }
                    }
                    ExitCode::FAILURE
                }
                None => {
                    println!("schedule {}: pass (healed)", path.display());
                    ExitCode::SUCCESS
                }
            };
            println!("trace-hash: {:016x}", r.outcome.trace_hash);
            Ok(code)
        }
        Command::Replay {
            seed,
            trace,
            preset,
            mutant,
            self_check: check,
            claim_path,
            ..
        } => {
            let seed = seed.ok_or("replay needs a SEED or --schedule FILE")?;
            let p = Preset::by_name(&preset)?.with_claim_path(claim_path);
            let mutant = parse_mutant(mutant.as_deref())?;
            if check {
                self_check(seed, p, mutant)?;
                println!("self-check: seed {seed} replays identically");
            }
            let o = Sim::from_seed(seed, p, mutant, trace).run();
            let code = match &o.failure {
                Some(f) => {
                    println!("seed {seed}: FAILED {f}");
                    if !trace {
                        println!("last events:");
                        for e in &f.recent {
                            println!("  {e}");
                        }
                    }
                    ExitCode::FAILURE
                }
                None => {
                    println!(
                        "seed {seed}: pass events={} simulated={:.0}s",
                        o.events,
                        o.simulated_ms as f64 / 1000.0
                    );
                    ExitCode::SUCCESS
                }
            };
            println!("trace-hash: {:016x}", o.trace_hash);
            Ok(code)
        }
        Command::Mutants {
            seeds,
            start,
            preset,
            claim_path,
        } => {
            let p = Preset::by_name(&preset)?.with_claim_path(claim_path);
            let mut missed = 0;
            for m in Mutant::ALL {
                match first_failure(start, seeds, p, Some(*m)) {
                    Some((seed, f)) => println!(
                        "{:<40} {:<6} first failing seed {seed}: {}",
                        m.name(),
                        m.upstream_fix(),
                        f
                    ),
                    None => {
                        missed += 1;
                        println!(
                            "{:<40} {:<6} not caught in seeds {start}..{}",
                            m.name(),
                            m.upstream_fix(),
                            start + seeds
                        )
                    }
                }
            }
            println!(
                "mutants: {} caught, {missed} missed",
                Mutant::ALL.len() - missed
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
