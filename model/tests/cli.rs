//! The model through its binary: the shipped rules pass the `ci` preset, every historical bug
//! is caught with a readable counterexample and an exported schedule, usage errors exit 2.

use std::process::{Command, Output};

use applyd::machine::Mutant;

fn model(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_applyd-model"))
        .args(args)
        .output()
        .expect("run applyd-model")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A field `name=N` of a line, as a number.
fn count(line: &str, name: &str) -> u64 {
    let field = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} in {line}"));
    field.parse().unwrap_or_else(|_| panic!("{name} in {line}"))
}

/// The line of world `name` in a ci run (`world: NAME states=… unique=… depth=…`).
fn world_line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("world: {name} ")))
        .unwrap_or_else(|| panic!("no line of world {name}: {out}"))
}

/// The output of one world of a multi-world run: from its `model: world NAME:` line to the
/// next world's.
fn world_part<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("model: world {name}:"))
        .unwrap_or_else(|| panic!("no world {name}: {out}"));
    let rest = &out[start..];
    let end = rest[1..]
        .find("model: world ")
        .map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

#[test]
fn the_shipped_rules_pass_the_ci_preset() {
    let o = model(&["check", "--preset", "ci"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("model: preset=ci states="), "{last}");
    assert!(last.ends_with("result=ok"), "{last}");
    for field in ["unique=", "depth=", "elapsed=", "rate="] {
        assert!(last.contains(field), "{last}");
    }
    // Pinned, as stateright's own examples pin theirs: a model that quietly explores less (a
    // lost action, a coarser state) fails here, and one that explores more says so. The ci
    // preset is the single-operation world and the three rollout worlds.
    let pins: [(&str, (u64, u64, u64)); 4] = [
        ("ci", (120_552_135, 21_682_557, 66)),
        ("rolling", (2_597_698, 742_612, 44)),
        ("barrier", (30_659_537, 7_909_985, 73)),
        ("pause", (55_665_223, 14_303_332, 72)),
    ];
    for (world, pin) in pins {
        let line = world_line(&out, world);
        assert_eq!(
            (
                count(line, "states="),
                count(line, "unique="),
                count(line, "depth=")
            ),
            pin,
            "the {world} world's state space changed: {line}"
        );
    }
    let single = world_part(&out, "ci");
    assert!(
        single.contains("operation claim path") && single.contains("engine faults 1"),
        "{single}"
    );
    // The preset takes the production claim path and injects both kinds of engine fault: each
    // kind of step must have discovered states of its own.
    assert_covered(
        single,
        &[
            "via operation arms=",
            "via apply arms=",
            "lost replies=",
            "transient failures=",
            "parks=",
            "wakes=",
            "taken by request=",
        ],
    );
    // Every rollout world claims its operations through the operation arms, with engine
    // faults; the PlanetScale worlds park operations at a closed cutover gate and wake them.
    for world in ["rolling", "barrier", "pause"] {
        let part = world_part(&out, world);
        assert!(
            part.contains("rollout of 2 operations") && part.contains("crash budget 1"),
            "{part}"
        );
        assert_covered(
            part,
            &[
                "via operation arms=",
                "lost replies=",
                "transient failures=",
            ],
        );
        assert!(part.contains("via apply arms=0 "), "{part}");
    }
    for world in ["barrier", "pause"] {
        assert_covered(
            world_part(&out, world),
            &["parks=", "wakes=", "taken by request="],
        );
    }
}

/// Each kind of step named discovered states of its own, by the model's `coverage:` line.
fn assert_covered(out: &str, kinds: &[&str]) {
    let coverage = out
        .lines()
        .find(|l| l.starts_with("coverage:"))
        .unwrap_or_else(|| panic!("no coverage line: {out}"));
    for kind in kinds {
        let n: u64 = coverage
            .split(kind)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{kind} in {coverage}"));
        assert!(n > 0, "no state reached {kind}0: {coverage}");
    }
}

/// The pin preset lets a stored change drift at any point of an apply's life: the shipped rules
/// never hand a drifted change to an engine, and drives do fail such applies closed.
#[test]
fn the_pin_preset_never_runs_a_drifted_change() {
    let o = model(&["check", "--preset", "pin"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("model: preset=pin states=18748371 unique=4864964 depth=63 "),
        "the pin preset's state space changed: {last}"
    );
    assert_covered(&out, &["drifts=", "failed closed="]);
}

/// One driver, a PlanetScale apply whose cutover waits for a person who never comes, and a Spirit
/// apply on another target: the Spirit apply always completes (no wedge), because the wait parks
/// and gives the driver back; and the parked apply keeps being woken and parked again.
#[test]
fn the_waits_preset_never_starves_work_of_its_one_driver() {
    let o = model(&["check", "--preset", "waits"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("model: preset=waits states=40779 unique=16610 depth=43 "),
        "the waits preset's state space changed: {last}"
    );
    assert_covered(&out, &["parks=", "wakes="]);
}

/// The preset that shows a historical bug (`Mutant::caught_by`): the drifted-change bug needs
/// stored changes that drift, which only the pin preset makes; a driver held by a wait needs a
/// wait no person ends, which only the waits preset has; each rollout bug needs the rollout
/// world whose policy it breaks.
fn preset_for(m: Mutant) -> &'static str {
    m.caught_by().0
}

/// The apply arms alone are the second configuration: they hold every property too, and no claim
/// goes through an operation arm. (Pinned at two workers to keep the suite short.)
#[test]
fn the_apply_claim_path_passes_too() {
    let o = model(&[
        "check",
        "--preset",
        "ci",
        "--world",
        "ci",
        "--workers",
        "2",
        "--claim-path",
        "apply",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("apply claim path"), "{out}");
    assert!(out.contains("claims via operation arms=0 "), "{out}");
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("model: preset=ci states=47252531 unique=10884389 depth=63 "),
        "the apply-path state space changed: {last}"
    );
}

#[test]
fn every_mutant_is_caught_with_a_counterexample_and_a_schedule() {
    let dir = std::env::temp_dir().join(format!("applyd-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Two at a time: the machine has two cores.
    let chunks: Vec<Vec<Mutant>> = Mutant::ALL.chunks(2).map(|c| c.to_vec()).collect();
    for chunk in chunks {
        let handles: Vec<_> = chunk
            .into_iter()
            .map(|m| {
                let file = dir.join(format!("{}.json", m.name()));
                std::thread::spawn(move || {
                    let o = model(&[
                        "check",
                        "--preset",
                        preset_for(m),
                        "--mutant",
                        m.name(),
                        "--export-counterexample",
                        file.to_str().unwrap(),
                    ]);
                    (m, o, file)
                })
            })
            .collect();
        for h in handles {
            let (m, o, file) = h.join().unwrap();
            let out = stdout(&o);
            assert_eq!(o.status.code(), Some(1), "{m} was not caught:\n{out}");
            assert!(out.contains("counterexample ("), "{m}:\n{out}");
            assert!(out.contains("   1. "), "{m} has no numbered steps:\n{out}");
            assert!(out.lines().last().unwrap().ends_with("result=violation"));
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            assert_eq!(json["format"], "applyd-schedule/1");
            assert_eq!(json["mutant"], m.name());
            let steps = json["steps"].as_array().unwrap();
            assert!(!steps.is_empty());
            assert!(steps.iter().all(|s| s["action"].is_string()));
            assert!(json["violation"].as_str().unwrap().contains(':'));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_seed_bug_has_a_short_counterexample() {
    let o = model(&["check", "--mutant", "setup-phase-unclaimable"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.contains("violation: reclaimability"), "{out}");
    assert!(
        out.contains("preparing_branch") || out.contains("branch"),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_2_and_mutants_are_listed() {
    assert_eq!(
        model(&["check", "--mutant", "no-such-bug"]).status.code(),
        Some(2)
    );
    assert_eq!(model(&["check", "--preset", "huge"]).status.code(), Some(2));
    assert_eq!(model(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        model(&["check", "--world", "nowhere"]).status.code(),
        Some(2)
    );
    let o = model(&["mutants"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    // Each bug on one line: its name, the upstream bug it stands for, the world that catches
    // it, and whether the simulator does too.
    for m in Mutant::ALL {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(m.name()))
            .unwrap_or_else(|| panic!("{m} missing from:\n{out}"));
        let (world, sim) = m.caught_by();
        assert!(line.contains(m.upstream_fix()), "{line}");
        assert!(line.contains(&format!(" {world} ")), "{line}");
        assert_eq!(line.ends_with("model only"), !sim, "{line}");
    }
}
