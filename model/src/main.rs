//! `applyd-model`: exhaustive checks of applyd's rules, the mutant list, and stateright's
//! Explorer.

use std::process::ExitCode;

use applyd::machine::claim::ClaimPath;
use applyd::machine::Mutant;
use applyd_model::{graph, report, ApplydModel, Config, Preset, State};
use clap::{Parser, Subcommand, ValueEnum};
use stateright::{Checker, Model};

#[derive(Parser)]
#[command(
    name = "applyd-model",
    about = "Model checker of applyd's claim, heartbeat, crash and resume rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum PresetArg {
    Ci,
    Full,
    /// Stored changes may drift: every start and resume must refuse them.
    Pin,
    /// One driver, a wait for a person who never comes, and other work that must still run.
    Waits,
}

#[derive(clap::Args)]
struct Shape {
    #[arg(long, value_enum, default_value = "ci")]
    preset: PresetArg,
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    applies: Option<usize>,
    /// Crash budget (crashes and pauses together).
    #[arg(long)]
    crashes: Option<u8>,
    /// Engine-fault budget (lost replies and transient failures of engine calls).
    #[arg(long)]
    engine_faults: Option<u8>,
    /// The claims the workers make: `operation` (production's default) or `apply`.
    #[arg(long)]
    claim_path: Option<ClaimPath>,
    /// Historical bug to switch on (see `applyd-model mutants`).
    #[arg(long)]
    mutant: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Explore every reachable state and check every property.
    Check {
        #[command(flatten)]
        shape: Shape,
        /// Threads for the stateright DFS pass (`--dfs`); the graph pass is single-threaded.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Also run stateright's DFS checker over the same model (safety properties only).
        #[arg(long)]
        dfs: bool,
        /// Write the violating path as a schedule (docs/schedule-format.md).
        #[arg(long)]
        export_counterexample: Option<std::path::PathBuf>,
    },
    /// List the historical-bug switches.
    Mutants,
    /// Serve stateright's Explorer on 127.0.0.1.
    Explore {
        #[command(flatten)]
        shape: Shape,
        #[arg(long, default_value_t = 3000)]
        port: u16,
    },
}

fn build(shape: &Shape) -> Result<(ApplydModel, Option<Mutant>, &'static str), String> {
    let preset = match shape.preset {
        PresetArg::Ci => Preset::Ci,
        PresetArg::Full => Preset::Full,
        PresetArg::Pin => Preset::Pin,
        PresetArg::Waits => Preset::Waits,
    };
    let mut cfg = Config::preset(preset);
    if let Some(w) = shape.workers {
        cfg.workers = w;
    }
    if let Some(a) = shape.applies {
        if a == 0 {
            return Err("--applies must be at least 1".into());
        }
        cfg = cfg.with_applies(a);
    }
    if let Some(k) = shape.crashes {
        cfg.faults = k;
    }
    if let Some(k) = shape.engine_faults {
        cfg.engine_faults = k;
    }
    if let Some(path) = shape.claim_path {
        cfg.claim_path = path;
    }
    cfg.validate()?;
    let mutant = match &shape.mutant {
        Some(name) => Some(name.parse::<Mutant>()?),
        None => None,
    };
    Ok((ApplydModel::new(cfg, mutant), mutant, preset.name()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Cmd::Mutants => {
            for m in Mutant::ALL {
                println!("{:<40} {}", m.name(), m.upstream_fix());
            }
            ExitCode::SUCCESS
        }
        Cmd::Explore { shape, port } => {
            let (model, _, _) = match build(&shape) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("applyd-model: {e}");
                    return ExitCode::from(2);
                }
            };
            println!("serving stateright Explorer on http://127.0.0.1:{port}/");
            let _checker = model
                .checker()
                .symmetry_fn(State::representative)
                .serve(("127.0.0.1", port));
            loop {
                std::thread::park();
            }
        }
        Cmd::Check {
            shape,
            threads,
            dfs,
            export_counterexample,
        } => {
            let (model, mutant, preset) = match build(&shape) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("applyd-model: {e}");
                    return ExitCode::from(2);
                }
            };
            let c = &model.cfg;
            println!(
                "model: {} workers, {} applies on 1 target ({}), {} claim path, crash budget {}, engine faults {}, requests {}, stale after {} ticks, presumed loss {} ticks, retry budget {}, mutant {}",
                c.workers,
                c.applies.len(),
                c.applies.iter().map(|a| a.engine.as_str()).collect::<Vec<_>>().join(", "),
                c.claim_path.as_str(),
                c.faults,
                c.engine_faults,
                c.requests,
                c.stale_ticks,
                c.presumed_ticks,
                c.retry_budget,
                mutant.map_or("none", |m| m.name()),
            );
            if dfs {
                let start = std::time::Instant::now();
                let checker = model
                    .clone()
                    .checker()
                    .threads(threads)
                    .symmetry_fn(State::representative)
                    .finish_when(stateright::HasDiscoveries::AnyFailures)
                    .spawn_dfs()
                    .join();
                let secs = start.elapsed().as_secs_f64();
                let mut found: Vec<_> = checker.discoveries().into_keys().collect();
                found.sort();
                println!(
                    "stateright dfs: states={} unique={} depth={} elapsed={:.1}s rate={:.0}/s discoveries={:?}",
                    checker.state_count(),
                    checker.unique_state_count(),
                    checker.max_depth(),
                    secs,
                    checker.state_count() as f64 / secs.max(1e-9),
                    found
                );
            }
            let r = graph::explore(&model, true, u64::MAX);
            let result = match &r.found {
                Some(found) => {
                    print!("{}", report::print(&model, found));
                    if let Some(file) = &export_counterexample {
                        let json = report::schedule(&model, mutant, found);
                        let text = serde_json::to_string_pretty(&json).expect("json");
                        if let Err(e) = std::fs::write(file, text + "\n") {
                            eprintln!("applyd-model: cannot write {}: {e}", file.display());
                            return ExitCode::from(2);
                        }
                        println!("schedule written to {}", file.display());
                    }
                    "violation"
                }
                None => {
                    println!("all properties hold: world invariants, step invariants, reclaimability, no wedge");
                    "ok"
                }
            };
            println!(
                "no-wedge pass: {:.1}s over {} edges",
                r.wedge_s, r.generated
            );
            println!("{}", r.coverage);
            println!(
                "model: preset={preset} states={} unique={} depth={} elapsed={:.1}s rate={:.0}/s result={result}",
                r.generated,
                r.unique,
                r.depth,
                r.elapsed_s,
                r.generated as f64 / r.elapsed_s.max(1e-9)
            );
            if r.found.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
