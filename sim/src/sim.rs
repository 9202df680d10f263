//! The discrete-event loop. Workers claim through `testkit::claim` and run applyd's real `Drive`
//! one command at a time through `testkit::step` against the real `MemoryStore` and the fake
//! engines; the clock jumps from event to event. Every command takes a drawn latency, so a crash
//! (or any fault) can land between any two commands of a drive.
//!
//! Here: the world, the event loop and drives; in `people` the simulated users and the heal
//! phase, in `faults` the fault injection, in `checks` the invariants checked after every event, in
//! `replay` the step-by-step drive from a model schedule.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use applyd::engine::fake::{FakeEngines, InjectedFault};
use applyd::machine::claim::{shipped_class, ClaimClass};
use applyd::machine::invariants::{
    check_world, cutover_after_gate, justified_completion, lease_loss_bound, legal_step,
    no_starvation, resubmission_adopts, reviewed_change_only, stale_write, stop_dominance,
    ApplyFacts, Violation, STALE_EPOCH_WRITE,
};
use applyd::machine::rollout::{Member, RolloutPolicy};
use applyd::machine::table::is_settled;
use applyd::machine::waits::human_release;
use applyd::machine::{
    ApplyState, ControlOp, ControlStatus, EngineCall, EngineKind, EngineState, Mutant, Rules,
};
use applyd::store::memory::{ManualClock, MemoryStore};
use applyd::store::{NewApply, StoreError, Target};
use applyd::testkit::{Beat, Driver, Stepped, WatchedWait};
use applyd::worker::{ApplyId, WaitFor, WriteOutcome};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::preset::{Fault, Preset, World};
use crate::trace::{Action, Trace, TraceEvent};

mod checks;
mod faults;
mod people;
mod replay;
mod watches;

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    Violation(Violation),
    /// The heal phase ended with an apply that is not terminal.
    Wedged(String),
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub at_ms: u64,
    pub kind: FailureKind,
    pub recent: Vec<TraceEvent>,
}

impl Failure {
    /// A short label: the broken invariant's name, or `wedged`.
    pub fn label(&self) -> String {
        match &self.kind {
            FailureKind::Violation(v) => v.invariant.to_string(),
            FailureKind::Wedged(_) => "wedged".to_string(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.at_ms as f64 / 1000.0;
        match &self.kind {
            FailureKind::Violation(v) => write!(f, "violation at {at:.3}s: {v}"),
            FailureKind::Wedged(what) => write!(f, "wedged at {at:.3}s: {what}"),
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub failure: Option<Failure>,
    pub events: u64,
    pub simulated_ms: u64,
    pub trace_hash: u64,
    /// The most applies resting in a wait for a person at once.
    pub peak_waits: u32,
    /// Watched waits started (drives that gave their driver back to a watch).
    pub watches: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Step(u8, u32),
    Heartbeat(u8, u32),
    Fault(u32),
    Restart(u8, u32),
    Resume(u8, u32),
    StoreUp,
    /// The process's watcher: heartbeat, watchdog and look at its watched waits.
    Watch(u8, u32),
    Submit(u8),
    Expire,
    Human,
    EndFaults,
}

struct Worker {
    /// The drive it owns and its heartbeat record, kept as the core's tests keep them.
    driver: Driver,
    incarnation: u32,
    /// Bumped by every claim, drop, crash, pause and resume: events of an older generation are
    /// void (a dead process's timers do not fire).
    gen: u32,
    up: bool,
    paused: bool,
    hb_stall_until: u64,
    armed: Option<InjectedFault>,
    /// Waits this process watches without its driver (`Finish::Watched`), by apply.
    watches: BTreeMap<ApplyId, WatchedWait>,
    /// The watcher timer's generation: bumped by crash, pause and resume.
    watch_gen: u32,
    watch_timer: bool,
    /// Since when the driver has been free without a break (idle, or held only by a wait that
    /// gives its driver back), for the starvation check.
    free_since: Option<u64>,
}

/// How the heal phase treats applies resting in a human wait.
const HUMAN_EVERY_MS: u64 = 20_000;
const EXPIRE_EVERY_MS: u64 = 60_000;
/// How long claimable work may wait while a driver is free: a few idle polls (2–5 s), and a
/// drive's way to confirm a wait and give its driver back (a probe, a few polls of 4–6 s,
/// back-offs of up to 10 s after an engine error).
const STARVATION_BOUND_MS: u64 = 60_000;

pub struct Sim {
    world: World,
    preset: Preset,
    rules: Rules,
    clock: Arc<ManualClock>,
    now: u64,
    store: MemoryStore,
    engines: FakeEngines,
    rng: ChaCha8Rng,
    workers: Vec<Worker>,
    ids: Vec<Option<ApplyId>>,
    targets: Vec<Target>,
    last_state: Vec<ApplyState>,
    /// A rollout's policy and operations at the last check, per plan.
    last_rollout: Vec<Option<(RolloutPolicy, Vec<Member>)>>,
    /// Every place a runner may run: each target, and each target's rollout deployments.
    place_keys: Vec<String>,
    /// An injected engine-side fault touched this apply's work (excuses a refused cutover).
    engine_faulted: Vec<bool>,
    /// This apply's stored DDL was altered after submit.
    drifted: Vec<bool>,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    faults_on: bool,
    store_down_until: u64,
    deadline: u64,
    events: u64,
    trace: Trace,
    failure: Option<Failure>,
    facts: Vec<ApplyFacts>,
    /// Since when each apply has been claimable without a break.
    claimable_since: BTreeMap<ApplyId, u64>,
    peak_waits: u32,
    watches_started: u32,
}

/// Extra heal time for rollouts, whose operations may run one after another: a deploy of up to
/// ten minutes, and a person's answer, per operation beyond the first.
fn rollout_allowance(world: &World) -> u64 {
    const PER_OPERATION_MS: u64 = 15 * 60_000;
    world
        .applies
        .iter()
        .filter_map(|a| a.rollout)
        .map(|r| {
            let steps = if r.table_steps { 2 } else { 1 };
            (u64::from(r.deployments) * steps - 1) * PER_OPERATION_MS
        })
        .sum()
}

fn ddl(i: usize, bad: bool, two_tables: bool) -> Vec<String> {
    if bad {
        // Accepted at submit; the fake Spirit refuses it as MySQL would (duplicate column).
        vec![format!("ALTER TABLE users{i} ADD COLUMN id INT")]
    } else if two_tables {
        vec![
            format!("ALTER TABLE users ADD COLUMN c{i} INT"),
            format!("ALTER TABLE orders ADD COLUMN c{i} INT"),
        ]
    } else {
        vec![format!("ALTER TABLE users ADD COLUMN c{i} INT")]
    }
}

impl Sim {
    /// A simulator for one seed: the world and every later choice come from one ChaCha8Rng.
    pub fn from_seed(seed: u64, preset: Preset, mutant: Option<Mutant>, print: bool) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let world = World::draw(&mut rng, preset);
        Sim::new(world, rng, mutant, print)
    }

    /// A simulator over a given world (its fault list may come from anywhere, e.g. proptest).
    pub fn new(world: World, rng: ChaCha8Rng, mutant: Option<Mutant>, print: bool) -> Sim {
        let preset = world.preset;
        let rules = Rules::with_mutant(preset.params, mutant);
        let clock = Arc::new(ManualClock::new(0));
        let store = MemoryStore::new(rules, clock.clone());
        // PlanetScale's API cannot refuse an older epoch, so its fake does not fence (the
        // default); Spirit runs in applyd's own process and is told the epoch, so it fences.
        let mut engines = FakeEngines::new(world.timings);
        engines.planetscale.fence_epochs = false;
        engines.spirit.fence_epochs = true;
        let targets: Vec<Target> = (0..preset.targets)
            .map(|t| Target {
                database: format!("db{t}"),
                environment: "prod".into(),
            })
            .collect();
        let target_keys: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let mut place_keys = target_keys.clone();
        for t in &targets {
            for k in 1..=crate::preset::MAX_DEPLOYMENTS {
                place_keys.push(format!("{t}@d{k}"));
            }
        }
        let n = world.applies.len();
        Sim {
            preset,
            rules,
            clock,
            now: 0,
            store,
            engines,
            rng,
            workers: (0..preset.workers)
                .map(|w| Worker {
                    driver: Driver::freeing_watched_waits(w as u32),
                    incarnation: 0,
                    gen: 0,
                    up: true,
                    paused: false,
                    hb_stall_until: 0,
                    armed: None,
                    watches: BTreeMap::new(),
                    watch_gen: 0,
                    watch_timer: false,
                    free_since: None,
                })
                .collect(),
            ids: vec![None; n],
            targets,
            last_state: vec![ApplyState::Pending; n],
            last_rollout: vec![None; n],
            place_keys,
            engine_faulted: vec![false; n],
            drifted: vec![false; n],
            queue: BinaryHeap::new(),
            seq: 0,
            faults_on: true,
            store_down_until: 0,
            deadline: preset.fault_ms + preset.heal_ms + rollout_allowance(&world),
            events: 0,
            trace: Trace::new(print),
            failure: None,
            facts: Vec::with_capacity(n),
            claimable_since: BTreeMap::new(),
            peak_waits: 0,
            watches_started: 0,
            world,
        }
    }

    /// Drivers keep watched waits and poll them, as the model's workers do: the model's
    /// schedules replay step for step.
    pub fn holding_watched_waits(mut self) -> Sim {
        for w in &mut self.workers {
            w.driver = Driver::new(w.driver.host);
        }
        self
    }

    fn at(&mut self, at_ms: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at_ms, self.seq, ev)));
    }

    fn jitter(&mut self, lo: u64, hi: u64) -> u64 {
        self.now + self.rng.random_range(lo..hi)
    }

    fn record(&mut self, worker: Option<u8>, plan: Option<usize>, action: Action) {
        let id = plan.and_then(|i| self.ids[i]);
        self.record_id(worker, id, action);
    }

    fn record_id(&mut self, worker: Option<u8>, id: Option<ApplyId>, action: Action) {
        let (state, epoch) =
            match id.and_then(|id| self.store.with_row(id, |r| (r.state, r.lease_epoch))) {
                Some((state, epoch)) => (Some(state), epoch),
                None => (None, 0),
            };
        self.trace.record(TraceEvent {
            at_ms: self.now,
            worker,
            apply: id,
            action,
            state,
            epoch,
        });
    }

    fn fail(&mut self, kind: FailureKind) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                at_ms: self.now,
                kind,
                recent: self.trace.recent(),
            });
        }
    }

    fn violated(&mut self, r: Result<(), Violation>) {
        if let Err(v) = r {
            self.fail(FailureKind::Violation(v));
        }
    }

    /// The operation rows of an apply: the engines key each change by them.
    fn operations_of(&self, id: ApplyId) -> Vec<u64> {
        self.store
            .with_row(id, |r| r.operations.iter().map(|o| o.id).collect())
            .unwrap_or_default()
    }

    fn plan_of(&self, id: ApplyId) -> Option<usize> {
        self.ids.iter().position(|x| *x == Some(id))
    }

    fn owner(&self, w: u8) -> String {
        format!("w{w}.{}", self.workers[w as usize].incarnation)
    }

    /// Schedule the start of a run: first claims, submissions, faults, the sweeper, phase end.
    fn start(&mut self) {
        for w in 0..self.preset.workers {
            let at = self.jitter(0, 3_000);
            self.at(at, Ev::Step(w, 0));
        }
        for i in 0..self.world.applies.len() {
            let at = self.world.applies[i].submit_at_ms;
            self.at(at, Ev::Submit(i as u8));
        }
        for k in 0..self.world.faults.len() {
            let at = self.world.faults[k].at_ms;
            self.at(at, Ev::Fault(k as u32));
        }
        self.at(EXPIRE_EVERY_MS, Ev::Expire);
        self.at(self.preset.fault_ms, Ev::EndFaults);
    }

    /// Run the seed: the fault phase, then the heal phase, checking invariants after every event.
    pub fn run(mut self) -> Outcome {
        self.start();
        self.event_loop();
        self.finish()
    }

    fn event_loop(&mut self) {
        while let Some(Reverse((at, _, ev))) = self.queue.pop() {
            if at > self.deadline {
                self.now = self.deadline;
                self.clock.set(self.now);
                let what = self.unsettled();
                self.fail(FailureKind::Wedged(what));
                return;
            }
            self.now = at;
            self.clock.set(at);
            // Before the event changes anything: how long work has waited for a free driver.
            self.check_starvation();
            if self.failure.is_some() {
                return;
            }
            if self.handle(ev) {
                self.events += 1;
            }
            if self.failure.is_some() {
                return;
            }
            if self.all_terminal() {
                return;
            }
        }
    }

    fn finish(mut self) -> Outcome {
        if self.failure.is_none() {
            self.check_audit();
        }
        Outcome {
            failure: self.failure,
            events: self.events,
            simulated_ms: self.now,
            trace_hash: self.trace.hash(),
            peak_waits: self.peak_waits,
            watches: self.watches_started,
        }
    }

    fn all_terminal(&self) -> bool {
        self.ids.iter().all(Option::is_some)
            && self
                .last_state
                .iter()
                .all(|s| shipped_class(*s) == ClaimClass::Terminal)
    }

    /// Handles one event; false when it was void (a dead generation's timer).
    fn handle(&mut self, ev: Ev) -> bool {
        match ev {
            Ev::Step(w, gen) => {
                let wk = &self.workers[w as usize];
                if wk.gen != gen || !wk.up || wk.paused {
                    return false;
                }
                if wk.driver.lease().is_some() {
                    self.drive_step(w);
                } else {
                    self.claim(w);
                }
            }
            Ev::Heartbeat(w, gen) => {
                let wk = &self.workers[w as usize];
                if wk.gen != gen || !wk.up || wk.paused || wk.driver.lease().is_none() {
                    return false;
                }
                self.heartbeat(w);
                // A drive dropped by this heartbeat bumped the generation: its timer ends here.
                if self.workers[w as usize].gen == gen {
                    let at = self.now + self.preset.heartbeat_ms;
                    self.at(at, Ev::Heartbeat(w, gen));
                }
            }
            Ev::Fault(k) => {
                if !self.faults_on {
                    return false;
                }
                let f = self.world.faults[k as usize].fault;
                self.inject(f);
            }
            Ev::Restart(w, gen) => {
                if self.workers[w as usize].gen != gen || self.workers[w as usize].up {
                    return false;
                }
                self.restart(w);
            }
            Ev::Resume(w, gen) => {
                if self.workers[w as usize].gen != gen || !self.workers[w as usize].paused {
                    return false;
                }
                self.resume(w);
            }
            Ev::StoreUp => {
                if self.now < self.store_down_until {
                    return false;
                }
                self.store.set_available(true);
                self.record(None, None, Action::StoreUp);
            }
            Ev::Watch(w, gen) => {
                let wk = &self.workers[w as usize];
                if wk.watch_gen != gen || !wk.up || wk.paused {
                    return false;
                }
                self.watch_tick(w);
            }
            Ev::Submit(i) => self.submit(i as usize),
            Ev::Expire => {
                if let Ok(n) = self.store.expire_retryable() {
                    if n > 0 {
                        self.record(None, None, Action::Expired(n));
                        self.check();
                    }
                }
                let at = self.now + EXPIRE_EVERY_MS;
                self.at(at, Ev::Expire);
            }
            Ev::Human => {
                self.act_as_human();
                let at = self.now + HUMAN_EVERY_MS;
                self.at(at, Ev::Human);
            }
            Ev::EndFaults => self.heal(),
        }
        true
    }

    fn claim(&mut self, w: u8) {
        // As the operator's poll: watched waits first, then new work.
        if self.hand_back_watched(w) {
            return;
        }
        let owner = self.owner(w);
        let wk = &mut self.workers[w as usize];
        match wk.driver.claim(
            &self.store,
            self.preset.claim_path,
            &owner,
            &self.rules,
            self.now,
        ) {
            Ok(Some(c)) => {
                let id = c.lease.apply;
                wk.gen += 1;
                let gen = wk.gen;
                let at = self.jitter(1, 15);
                self.at(at, Ev::Step(w, gen));
                let at = self.now + self.preset.heartbeat_ms;
                self.at(at, Ev::Heartbeat(w, gen));
                self.record_id(Some(w), Some(id), Action::Claimed(c.arm));
                self.check();
            }
            Ok(None) => {
                // Nothing is claimable now: every row that matched an arm was refused, and a
                // refusal fails the request that made it match (a start on a busy target).
                self.claimable_since.clear();
                let gen = self.workers[w as usize].gen;
                let at = self.jitter(2_000, 5_000);
                self.at(at, Ev::Step(w, gen));
            }
            Err(_) => {
                let gen = self.workers[w as usize].gen;
                let at = self.jitter(2_000, 10_000);
                self.at(at, Ev::Step(w, gen));
            }
        }
    }

    fn drop_drive(&mut self, w: u8) {
        let wk = &mut self.workers[w as usize];
        wk.driver.abandon();
        wk.gen += 1;
        let gen = wk.gen;
        let at = self.jitter(100, 2_000);
        self.at(at, Ev::Step(w, gen));
    }

    fn drive_step(&mut self, w: u8) {
        let now = self.now;
        let armed = self.workers[w as usize].armed.take();
        // A per-command fault holds for this command only; a scheduled one waits for a call.
        let cf = self.world.command_faults;
        let per_command = if armed.is_some() {
            None
        } else if self.rng.random_range(0..1000) < cf.reply_lost_permille {
            Some(InjectedFault::ReplyLost)
        } else if self.rng.random_range(0..1000) < cf.unreachable_permille {
            Some(InjectedFault::Unreachable)
        } else {
            None
        };
        self.engines.inject = armed.or(per_command);
        let epoch = self.workers[w as usize]
            .driver
            .lease()
            .map_or(0, |l| l.epoch);
        let done = self.workers[w as usize]
            .driver
            .step(&self.store, &mut self.engines, now, &self.rules)
            .expect("checked by the caller");
        // A scheduled fault not consumed (the command was not an engine call) stays armed.
        let left = self.engines.inject.take();
        if armed.is_some() {
            self.workers[w as usize].armed = left;
        }
        let (id, stepped) = (done.apply, done.stepped);
        self.record_id(Some(w), Some(id), Action::Stepped(stepped));
        self.check_command(id, epoch, stepped, done.heartbeat_age_ms);
        if let Some(wait) = done.watched {
            self.watch(w, wait);
        }
        let delay = match stepped {
            Stepped::Waited(WaitFor::Poll) => self.rng.random_range(4_000..6_000),
            Stepped::Waited(WaitFor::Backoff) => self.rng.random_range(2_000..10_000),
            Stepped::LoadFailed(_) => self.rng.random_range(1_000..5_000),
            Stepped::Called { .. } => self.rng.random_range(30..600),
            Stepped::Probed { .. } => self.rng.random_range(20..300),
            _ => self.rng.random_range(1..15),
        };
        if done.ended {
            self.record_id(Some(w), Some(id), Action::Dropped);
            self.drop_drive(w);
        } else {
            let gen = self.workers[w as usize].gen;
            self.at(now + delay, Ev::Step(w, gen));
        }
        if !matches!(stepped, Stepped::Waited(_)) {
            self.check();
        }
    }

    fn heartbeat(&mut self, w: u8) {
        let now = self.now;
        let wk = &mut self.workers[w as usize];
        let Some(id) = wk.driver.lease().map(|l| l.apply) else {
            return;
        };
        if now < wk.hb_stall_until {
            self.record_id(Some(w), Some(id), Action::HeartbeatFailed);
            return;
        }
        match wk.driver.heartbeat(&self.store, now) {
            Some(Beat::Renewed) | None => {}
            Some(Beat::LeaseGone) => {
                // The operator cancels a drive whose heartbeat finds the lease gone.
                self.record_id(Some(w), Some(id), Action::HeartbeatLeaseLost);
                self.drop_drive(w);
            }
            Some(Beat::Failed) => self.record_id(Some(w), Some(id), Action::HeartbeatFailed),
        }
    }

    fn restart(&mut self, w: u8) {
        let wk = &mut self.workers[w as usize];
        wk.up = true;
        wk.paused = false;
        wk.incarnation += 1;
        wk.gen += 1;
        wk.armed = None;
        wk.hb_stall_until = 0;
        wk.free_since = None;
        let gen = wk.gen;
        let at = self.jitter(0, 2_000);
        self.at(at, Ev::Step(w, gen));
        self.record(Some(w), None, Action::Restarted);
    }

    fn resume(&mut self, w: u8) {
        let wk = &mut self.workers[w as usize];
        wk.paused = false;
        wk.gen += 1;
        let gen = wk.gen;
        let owns = wk.driver.lease().is_some();
        // The drive and its heartbeat task wake in either order.
        let at = self.jitter(0, 100);
        self.at(at, Ev::Step(w, gen));
        if owns {
            let at = self.jitter(0, 100);
            self.at(at, Ev::Heartbeat(w, gen));
        }
        let id = self.workers[w as usize].driver.lease().map(|l| l.apply);
        self.record_id(Some(w), id, Action::Resumed);
        self.arm_watcher(w, true);
    }
}
