//! applyd's deterministic simulator: the real worker core and memory store on a discrete-event
//! loop with a virtual clock, against fake PlanetScale and Spirit, with faults drawn from a seed.
//!
//! A run is a pure function of (seed, preset, mutant, code): all randomness comes from one
//! `ChaCha8Rng`, ordered collections are `BTreeMap`/`Vec`, time is the event queue's, and the
//! simulated path has no threads (`run --jobs` only spreads whole seeds over threads).

pub mod preset;
pub mod schedule;
pub mod sim;
pub mod trace;

use std::path::Path;
use std::time::Instant;

use applyd::machine::Mutant;
use serde::{Deserialize, Serialize};

pub use preset::{Fault, Preset, TimedFault, World};
pub use sim::{Failure, FailureKind, Outcome, Sim};

/// Runs one seed.
pub fn run_seed(seed: u64, preset: Preset, mutant: Option<Mutant>, print: bool) -> Outcome {
    Sim::from_seed(seed, preset, mutant, print).run()
}

/// Runs one seed twice and compares the trace hashes (the determinism self-check).
pub fn self_check(seed: u64, preset: Preset, mutant: Option<Mutant>) -> Result<Outcome, String> {
    let a = run_seed(seed, preset, mutant, false);
    let b = run_seed(seed, preset, mutant, false);
    if a.trace_hash == b.trace_hash && a.events == b.events {
        Ok(a)
    } else {
        Err(format!(
            "seed {seed} is not deterministic: trace hashes {:016x} and {:016x}",
            a.trace_hash, b.trace_hash
        ))
    }
}

/// The figures of a batch of seeds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub seeds: u64,
    /// Failing seeds in seed order, with the reason.
    pub failed: Vec<(u64, String)>,
    pub events: u64,
    pub simulated_ms: u64,
    pub elapsed_s: f64,
    /// Seeds in which more applies rested in a wait for a person at once than there are
    /// drivers: the waits must have given their drivers back.
    pub waits_outnumbered_drivers: u64,
    pub watches: u64,
}

impl Summary {
    pub fn line(&self) -> String {
        let elapsed = self.elapsed_s.max(1e-9);
        let simulated = self.simulated_ms as f64 / 1000.0;
        format!(
            "sim: seeds={} failed={} events={} simulated={:.0}s waits>drivers_seeds={} watches={} elapsed={:.2}s seeds_per_min={:.0} speedup={:.0}x",
            self.seeds,
            self.failed.len(),
            self.events,
            simulated,
            self.waits_outnumbered_drivers,
            self.watches,
            self.elapsed_s,
            self.seeds as f64 * 60.0 / elapsed,
            simulated / elapsed
        )
    }

    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed_s.max(1e-9)
    }
}

/// Runs seeds `start..start+n`, spread over `jobs` threads (each seed stays single-threaded).
pub fn run_seeds(
    start: u64,
    n: u64,
    preset: Preset,
    mutant: Option<Mutant>,
    jobs: usize,
    check_determinism: bool,
) -> Summary {
    let began = Instant::now();
    let jobs = jobs.max(1) as u64;
    let results: Vec<(u64, Result<Outcome, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut seed = start + j;
                    while seed < start + n {
                        let r = if check_determinism {
                            self_check(seed, preset, mutant)
                        } else {
                            Ok(run_seed(seed, preset, mutant, false))
                        };
                        out.push((seed, r));
                        seed += jobs;
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a seed thread panicked"))
            .collect()
    });
    let mut summary = Summary {
        seeds: n,
        ..Summary::default()
    };
    let mut results = results;
    results.sort_by_key(|(seed, _)| *seed);
    for (seed, r) in results {
        match r {
            Ok(o) => {
                summary.events += o.events;
                summary.simulated_ms += o.simulated_ms;
                summary.watches += u64::from(o.watches);
                if o.peak_waits > u32::from(preset.workers) {
                    summary.waits_outnumbered_drivers += 1;
                }
                if let Some(f) = o.failure {
                    summary.failed.push((seed, f.to_string()));
                }
            }
            Err(e) => summary.failed.push((seed, e)),
        }
    }
    summary.elapsed_s = began.elapsed().as_secs_f64();
    summary
}

/// The first failing seed in `start..start+n`, with its failure.
pub fn first_failure(
    start: u64,
    n: u64,
    preset: Preset,
    mutant: Option<Mutant>,
) -> Option<(u64, Failure)> {
    (start..start + n).find_map(|seed| {
        run_seed(seed, preset, mutant, false)
            .failure
            .map(|f| (seed, f))
    })
}

/// A seed kept because it once failed: re-run by the tests, its outcome must stay `expected`
/// (`pass`, or the label of the failure: an invariant's name or `wedged`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regression {
    pub seed: u64,
    pub preset: String,
    #[serde(default)]
    pub mutant: Option<String>,
    pub expected: String,
    #[serde(default)]
    pub note: String,
}

impl Regression {
    pub fn load_dir(dir: &Path) -> Result<Vec<(String, Regression)>, String> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|x| x == "json") {
                let text =
                    std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                let r: Regression =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
                out.push((p.display().to_string(), r));
            }
        }
        Ok(out)
    }

    /// Re-runs the seed; `Err` explains a changed outcome.
    pub fn check(&self) -> Result<(), String> {
        let preset = Preset::by_name(&self.preset)?;
        let mutant = self.mutant.as_deref().map(str::parse).transpose()?;
        let o = run_seed(self.seed, preset, mutant, false);
        let got = o
            .failure
            .as_ref()
            .map_or("pass".to_string(), Failure::label);
        if got == self.expected {
            Ok(())
        } else {
            Err(format!(
                "seed {} ({}, mutant {}): expected {}, got {got}{}",
                self.seed,
                self.preset,
                self.mutant.as_deref().unwrap_or("none"),
                self.expected,
                o.failure.map(|f| format!(" ({f})")).unwrap_or_default()
            ))
        }
    }
}
