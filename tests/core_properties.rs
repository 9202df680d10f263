//! Property tests of the worker core: random interleavings of worker steps, crashes, time and
//! user requests only ever produce transitions that are rows of the table, terminal states
//! absorb, lease epochs never decrease, and no apply gets a second deploy request.

mod common;

use std::collections::BTreeMap;

use applyd::machine::invariants::{check_world, legal_step, ApplyFacts};
use applyd::machine::{ApplyOptions, ControlOp, EngineKind};
use common::World;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Action {
    Tick(usize),
    Crash(usize),
    Advance(u64),
    Request(usize, ControlOp),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (0..3usize).prop_map(Action::Tick),
        1 => (0..3usize).prop_map(Action::Crash),
        3 => (1..30u64).prop_map(|s| Action::Advance(s * 1_000)),
        1 => (0..3usize, proptest::sample::select(vec![
            ControlOp::Stop, ControlOp::Start, ControlOp::Cancel, ControlOp::Cutover, ControlOp::Revert, ControlOp::SkipRevert,
        ])).prop_map(|(a, op)| Action::Request(a, op)),
    ]
}

fn facts(w: &World) -> Vec<ApplyFacts> {
    w.store
        .rows()
        .iter()
        .map(|r| {
            let record = w.store.row(r.id).map(|row| applyd::store::ApplyRecord {
                row: applyd::worker::ApplySnapshot {
                    id: row.id,
                    operation: row.operations[0].id,
                    engine: row.engine,
                    state: row.state,
                    epoch: row.lease_epoch,
                    attempt: row.attempt,
                    options: row.options,
                    resume: row.resume,
                },
                spec: row.spec.clone(),
            });
            let record = record.unwrap();
            ApplyFacts {
                id: r.id as u32,
                target: if r.spec.target.database == "shop" {
                    0
                } else {
                    1
                },
                engine: r.engine,
                state: r.state,
                holds_target: r.state.is_active(),
                attempt: r.attempt,
                controls: w.store.pending_controls(r.id),
                deploy_requests_created: w.engines.planetscale.deploy_requests_of(r.id) as u32,
                engine_truth: w.engines.truth(&record),
                runner_alive: w.engines.spirit.runner_alive(r.id),
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_schedules_keep_every_invariant(
        actions in proptest::collection::vec(action(), 1..250),
        defer_cutover in any::<bool>(),
        skip_revert in any::<bool>(),
    ) {
        let mut w = World::new(3);
        let ps = w.submit("shop", EngineKind::PlanetScale, ApplyOptions { skip_revert, ..Default::default() });
        let sp = w.submit("users", EngineKind::Spirit, ApplyOptions { defer_cutover, ..Default::default() });
        let ids = [ps, sp, ps];
        for a in &actions {
            match a {
                Action::Tick(i) => { w.tick_worker(*i); }
                Action::Crash(i) => w.crash(*i),
                Action::Advance(ms) => w.clock.advance(*ms),
                Action::Request(i, op) => { let _ = w.store.request(ids[*i], *op); }
            }
            let mut runners: BTreeMap<u32, u32> = BTreeMap::new();
            runners.insert(1, w.engines.spirit.runners_on("users/prod") as u32);
            if let Err(v) = check_world(&facts(&w), &runners, w.rules.params.retry_budget) {
                prop_assert!(false, "{v}\n{}", w.trace.join("\n"));
            }
        }
        let mut last_epoch: BTreeMap<u64, u64> = BTreeMap::new();
        for e in w.store.audit() {
            let engine = w.store.row(e.apply).unwrap().engine;
            if let Err(v) = legal_step(engine, e.from, e.to) {
                prop_assert!(false, "{v} (cause {})", e.cause);
            }
            let prev = last_epoch.insert(e.apply, e.epoch).unwrap_or(0);
            prop_assert!(e.epoch >= prev, "epoch went from {prev} to {} on apply {}", e.epoch, e.apply);
        }
        prop_assert_eq!(w.store.stale_writes_landed(), 0);
        for id in [ps, sp] {
            prop_assert!(w.engines.planetscale.deploy_requests_of(id) <= 1);
        }
    }
}
