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
    /// A rolling Spirit rollout of two deployments, continuing past a failure.
    Rolling,
    /// A PlanetScale rollout of two deployments behind a cutover barrier, halting on a failure.
    Barrier,
    /// A PlanetScale rollout copying in parallel under a cap of one, held on a failure until released.
    Pause,
}

impl PresetArg {
    fn preset(self) -> Preset {
        match self {
            PresetArg::Ci => Preset::Ci,
            PresetArg::Full => Preset::Full,
            PresetArg::Pin => Preset::Pin,
            PresetArg::Waits => Preset::Waits,
            PresetArg::Rolling => Preset::Rolling,
            PresetArg::Barrier => Preset::Barrier,
            PresetArg::Pause => Preset::Pause,
        }
    }
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
    /// Check only this world of the preset (`ci` has the worlds ci, rolling, barrier, pause).
    #[arg(long)]
    world: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Explore every reachable state and check every property.
    Check {
        #[command(flatten)]
        shape: Shape,
        /// Threads expanding states (the graph pass, and stateright's DFS pass with `--dfs`);
        /// the result does not depend on them.
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

/// The models a check runs, one per world of the preset, with the shape's overrides.
fn build(shape: &Shape) -> Result<(Vec<ApplydModel>, Option<Mutant>, &'static str), String> {
    let preset = shape.preset.preset();
    let mutant = match &shape.mutant {
        Some(name) => Some(name.parse::<Mutant>()?),
        None => None,
    };
    let worlds = preset.worlds();
    let chosen: Vec<Preset> = match &shape.world {
        None => worlds,
        Some(name) => {
            let names: Vec<&str> = worlds.iter().map(|w| w.name()).collect();
            vec![*worlds.iter().find(|w| w.name() == name).ok_or_else(|| {
                format!(
                    "--world {name}: the preset's worlds are {}",
                    names.join(", ")
                )
            })?]
        }
    };
    let mut models = Vec::new();
    for world in chosen {
        models.push(ApplydModel::new(configure(shape, world)?, mutant));
    }
    Ok((models, mutant, preset.name()))
}

fn configure(shape: &Shape, preset: Preset) -> Result<Config, String> {
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
    Ok(cfg)
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
            println!(
                "{:<40} {:<34} {:<8} simulator",
                "mutant", "upstream bug", "world"
            );
            for m in Mutant::ALL {
                let (world, sim) = m.caught_by();
                println!(
                    "{:<40} {:<34} {:<8} {}",
                    m.name(),
                    m.upstream_fix(),
                    world,
                    if sim { "also" } else { "model only" }
                );
            }
            ExitCode::SUCCESS
        }
        Cmd::Explore { shape, port } => {
            let (mut models, _, _) = match build(&shape) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("applyd-model: {e}");
                    return ExitCode::from(2);
                }
            };
            // One world at a time: the preset's first.
            let model = models.remove(0);
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
            let (models, mutant, preset) = match build(&shape) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("applyd-model: {e}");
                    return ExitCode::from(2);
                }
            };
            let (mut generated, mut unique, mut depth, mut elapsed) = (0u64, 0u64, 0u32, 0f64);
            let several = models.len() > 1;
            let mut result = "ok";
            for model in &models {
                if dfs {
                    run_dfs(model, threads);
                }
                let r = match check_world(model, mutant, export_counterexample.as_deref(), threads)
                {
                    Ok(r) => r,
                    Err(code) => return code,
                };
                generated += r.generated;
                unique += r.unique;
                depth = depth.max(r.depth);
                elapsed += r.elapsed_s;
                if several {
                    println!(
                        "world: {} states={} unique={} depth={} elapsed={:.1}s rate={:.0}/s",
                        model.cfg.preset,
                        r.generated,
                        r.unique,
                        r.depth,
                        r.elapsed_s,
                        r.generated as f64 / r.elapsed_s.max(1e-9)
                    );
                }
                if r.found.is_some() {
                    result = "violation";
                    break;
                }
            }
            println!(
                "model: preset={preset} states={generated} unique={unique} depth={depth} elapsed={elapsed:.1}s rate={:.0}/s result={result}",
                generated as f64 / elapsed.max(1e-9)
            );
            if result == "ok" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Explore one world and print what it found: its shape, a counterexample (exported as a
/// schedule when asked), the no-wedge pass and the coverage.
fn check_world(
    model: &ApplydModel,
    mutant: Option<Mutant>,
    export: Option<&std::path::Path>,
    threads: usize,
) -> Result<graph::Explored, ExitCode> {
    let c = &model.cfg;
    let shape = match c.rollout {
        Some(p) => format!(
            "a {} rollout of {} operations ({}, on_failure {}, max_drivers {})",
            p.cutover.as_str(),
            c.applies.len(),
            c.applies[0].engine.as_str(),
            p.on_failure.as_str(),
            p.max_drivers
        ),
        None => format!(
            "{} applies on 1 target ({})",
            c.applies.len(),
            c.applies
                .iter()
                .map(|a| a.engine.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    println!(
        "model: world {}: {} workers, {shape}, {} claim path, crash budget {}, engine faults {}, requests {}, stale after {} ticks, presumed loss {} ticks, retry budget {}, mutant {}",
        c.preset,
        c.workers,
        c.claim_path.as_str(),
        c.faults,
        c.engine_faults,
        c.requests,
        c.stale_ticks,
        c.presumed_ticks,
        c.retry_budget,
        mutant.map_or("none", |m| m.name()),
    );
    let r = graph::explore(model, true, u64::MAX, threads);
    match &r.found {
        Some(found) => {
            print!("{}", report::print(model, found));
            if let Some(file) = export {
                let json = report::schedule(model, mutant, found);
                let text = serde_json::to_string_pretty(&json).expect("json");
                if let Err(e) = std::fs::write(file, text + "\n") {
                    eprintln!("applyd-model: cannot write {}: {e}", file.display());
                    return Err(ExitCode::from(2));
                }
                println!("schedule written to {}", file.display());
            }
        }
        None => println!(
            "all properties hold: world invariants, step invariants, reclaimability, no wedge"
        ),
    }
    println!(
        "no-wedge pass: {:.1}s over {} edges",
        r.wedge_s, r.generated
    );
    println!("{}", r.coverage);
    Ok(r)
}

/// stateright's own DFS checker over the same world (safety properties only).
fn run_dfs(model: &ApplydModel, threads: usize) {
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
