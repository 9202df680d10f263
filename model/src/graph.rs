//! Breadth-first exploration over the `Model` (init_states / actions / next_state) with worker
//! symmetry, keeping the reachable graph: safety properties are checked on every unique state
//! (the first violation found is a shortest one), and "no wedge" is checked afterwards as
//! AG EF settled(a) for every apply `a` by backward reachability over the stored edges —
//! stateright's `eventually` cannot see violations on cycles, and every path here is cyclic.

use std::collections::VecDeque;
use std::time::Instant;

use applyd::machine::invariants::Violation;
use applyd::machine::{ClaimArm, ClaimedVia};
use applyd::worker::Command;
use stateright::Model;

use crate::state::{fingerprint, Action, Outcome, State, MAX_WORKERS};
use crate::world::{ApplydModel, NO_WEDGE, RECLAIMABLE, STEP, WORLD};

/// Fingerprint -> state id: open addressing, linear probing, one 16-byte slot per entry so a
/// look-up is one cache miss. Fingerprints are well mixed already, so their low bits index.
struct Seen {
    slots: Vec<(u64, u32)>,
    len: usize,
}

impl Seen {
    const EMPTY: u64 = 0;

    fn new() -> Seen {
        Seen {
            slots: vec![(Self::EMPTY, 0); 1 << 16],
            len: 0,
        }
    }

    fn key(fp: u64) -> u64 {
        // 0 marks an empty slot.
        fp.max(1)
    }

    fn home(&self, key: u64) -> usize {
        key as usize & (self.slots.len() - 1)
    }

    /// Load the home slot of `fp`: issued for all successors of a state before any probe, the
    /// cache misses overlap instead of queueing one after another.
    fn touch(&self, fp: u64) -> u64 {
        self.slots[self.home(Self::key(fp))].0
    }

    /// The id stored for `fp`, or `id` after storing it.
    fn get_or_insert(&mut self, fp: u64, id: u32) -> (u32, bool) {
        let key = Self::key(fp);
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let (k, v) = self.slots[i];
            if k == key {
                return (v, false);
            }
            if k == Self::EMPTY {
                self.slots[i] = (key, id);
                self.len += 1;
                if self.len * 4 > self.slots.len() * 3 {
                    self.grow();
                }
                return (id, true);
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let bigger = vec![(Self::EMPTY, 0); self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, bigger);
        let mask = self.slots.len() - 1;
        for (k, v) in old {
            if k != Self::EMPTY {
                let mut i = k as usize & mask;
                while self.slots[i].0 != Self::EMPTY {
                    i = (i + 1) & mask;
                }
                self.slots[i] = (k, v);
            }
        }
    }
}

pub struct Found {
    pub property: &'static str,
    pub violation: Violation,
    /// Raw (non-canonical) states and the actions between them, from the initial state.
    pub path: Vec<(State, Option<Action>)>,
}

pub struct Explored {
    pub generated: u64,
    pub unique: u64,
    pub depth: u32,
    pub elapsed_s: f64,
    pub found: Option<Found>,
    /// The state budget ran out before the space was exhausted.
    pub truncated: bool,
    /// Seconds spent in the no-wedge pass (included in `elapsed_s`).
    pub wedge_s: f64,
    pub coverage: Coverage,
}

/// How many unique states were first reached by each kind of step the presets must explore: a
/// model whose claim path or engine faults quietly stopped firing shows zeros here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    pub claims_via_operation_arms: u64,
    pub claims_via_apply_arms: u64,
    pub lost_replies: u64,
    pub transient_failures: u64,
    /// Stored changes altered behind the operator's back, and drives that failed one closed.
    pub drifts: u64,
    pub failed_closed: u64,
    /// Waits parked by their owner (driver given back), wake times come, and parked waits
    /// taken back by a request (A9).
    pub parks: u64,
    pub wakes: u64,
    pub taken_by_request: u64,
}

/// The kinds of step a successor was reached by, as bits (computed beside the successor, added
/// to the coverage only if the successor is new).
const VIA_OPERATION_ARMS: u16 = 1;
const VIA_APPLY_ARMS: u16 = 2;
const LOST_REPLY: u16 = 4;
const TRANSIENT: u16 = 8;
const DRIFT: u16 = 16;
const FAILED_CLOSED: u16 = 32;
const PARK: u16 = 64;
const WAKE: u16 = 128;
const TAKEN_BY_REQUEST: u16 = 256;

impl Coverage {
    fn kinds(model: &ApplydModel, from: &State, action: Action, to: &State) -> u16 {
        let mut k = 0;
        match action {
            Action::Claim(_, a) => {
                let a = a as usize;
                match model.claim_of(from, a, &from.rows[a]) {
                    Some((via @ ClaimedVia::Operation { .. }, _)) => {
                        k |= VIA_OPERATION_ARMS;
                        if via.apply_arm() == ClaimArm::A9ParkedRequest {
                            k |= TAKEN_BY_REQUEST;
                        }
                    }
                    Some((via @ ClaimedVia::Apply(_), _)) => {
                        k |= VIA_APPLY_ARMS;
                        if via.apply_arm() == ClaimArm::A9ParkedRequest {
                            k |= TAKEN_BY_REQUEST;
                        }
                    }
                    None => {}
                }
            }
            Action::Step(w, o) | Action::Resume(w, o) => {
                match o {
                    Outcome::LostReply => k |= LOST_REPLY,
                    Outcome::Transient => k |= TRANSIENT,
                    _ => {}
                }
                // A park gives the driver back and leaves the row resting.
                if from
                    .rows
                    .iter()
                    .zip(to.rows.iter())
                    .any(|(before, after)| !before.resting && after.resting)
                {
                    k |= PARK;
                }
                // Only a drifted change fails closed: the command is worth preparing again
                // only after a drift.
                if from.drifts_left < model.cfg.drifts {
                    let resumed = matches!(action, Action::Resume(..));
                    let cmd = model.prepare(from, w as usize, resumed).and_then(|p| p.cmd);
                    if matches!(cmd, Some(Command::FailClosed(_))) {
                        k |= FAILED_CLOSED;
                    }
                }
            }
            Action::Drift(_) => k |= DRIFT,
            Action::Wake(_) => k |= WAKE,
            _ => {}
        }
        k
    }

    fn add(&mut self, k: u16) {
        let one = |bit: u16| u64::from(k & bit != 0);
        self.claims_via_operation_arms += one(VIA_OPERATION_ARMS);
        self.claims_via_apply_arms += one(VIA_APPLY_ARMS);
        self.lost_replies += one(LOST_REPLY);
        self.transient_failures += one(TRANSIENT);
        self.drifts += one(DRIFT);
        self.failed_closed += one(FAILED_CLOSED);
        self.parks += one(PARK);
        self.wakes += one(WAKE);
        self.taken_by_request += one(TAKEN_BY_REQUEST);
    }
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "coverage: claims via operation arms={} via apply arms={} lost replies={} transient failures={} drifts={} failed closed={} parks={} wakes={} taken by request={}",
            self.claims_via_operation_arms,
            self.claims_via_apply_arms,
            self.lost_replies,
            self.transient_failures,
            self.drifts,
            self.failed_closed,
            self.parks,
            self.wakes,
            self.taken_by_request
        )
    }
}

fn property_of(model: &ApplydModel, s: &State) -> Option<(&'static str, Violation)> {
    if let Some(v) = model.step_violation(s) {
        return Some((STEP, v));
    }
    if let Some(v) = model.world_or_orphan_violation(s) {
        return Some((WORLD, v));
    }
    model.unreclaimable(s).map(|v| (RECLAIMABLE, v))
}

/// A state's broken property, if it has one.
type Verdict = Option<(&'static str, Violation)>;

/// What a run of states expands to: for each state, a broken property or the range of its
/// successors in `succ` (fingerprint, action, coverage kinds) and `reps` (the representative
/// states, same index). The merge reads `succ` for every successor and `reps` only for new
/// ones: most successors were seen before, and the compact array stays in cache.
#[derive(Default)]
struct Expanded {
    states: Vec<(Verdict, usize, usize)>,
    succ: Vec<(u64, Action, u16)>,
    reps: Vec<State>,
}

fn expand(model: &ApplydModel, states: &[State]) -> Expanded {
    let mut out = Expanded {
        states: Vec::with_capacity(states.len()),
        succ: Vec::with_capacity(states.len() * 8),
        reps: Vec::with_capacity(states.len() * 8),
    };
    let mut actions = Vec::new();
    for s in states {
        let start = out.succ.len();
        if let Some(v) = property_of(model, s) {
            out.states.push((Some(v), start, start));
            continue;
        }
        actions.clear();
        model.actions(s, &mut actions);
        for a in actions.drain(..) {
            let Some(next) = model.next_state(s, a) else {
                continue;
            };
            let kinds = Coverage::kinds(model, s, a, &next);
            let rep = model.representative(&next);
            let fp = fingerprint(&rep);
            out.succ.push((fp, a, kinds));
            out.reps.push(rep);
        }
        out.states.push((None, start, out.succ.len()));
    }
    out
}

/// States expanded per chunk: a thread takes the next chunk when it is done with one, so a
/// thread that finishes merging joins the expansion at once.
const CHUNK: usize = 256;

/// States expanded together: large enough to keep the threads busy, small enough to keep the
/// successors of one batch in cache.
const BATCH: usize = 4096;

/// Expand `batch` in chunks on `helpers` spawned threads and on this one once `merge` returns:
/// the merge of the previous batch (which only the calling thread can do, the seen table being
/// one) overlaps the expansion of this one. The runs come back in the batch's order.
fn expand_while<T>(
    model: &ApplydModel,
    batch: &[State],
    helpers: usize,
    merge: impl FnOnce() -> T,
) -> (Vec<Expanded>, T) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let chunks: Vec<&[State]> = batch.chunks(CHUNK).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(part) = chunks.get(i) else {
                return done;
            };
            done.push((i, expand(model, part)));
        }
    };
    let (mut runs, merged) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..helpers.min(chunks.len()))
            .map(|_| scope.spawn(work))
            .collect();
        let merged = merge();
        let mut runs = work();
        for h in handles {
            runs.extend(h.join().expect("an expansion thread"));
        }
        (runs, merged)
    });
    runs.sort_unstable_by_key(|(i, _)| *i);
    (runs.into_iter().map(|(_, r)| r).collect(), merged)
}

/// The search's bookkeeping, filled in queue order by the merge.
struct Search {
    seen: Seen,
    parent: Vec<u32>,
    via: Vec<Action>,
    settled: Vec<u8>,
    offsets: Vec<u64>,
    edges: Vec<u32>,
    queue: VecDeque<State>,
    generated: u64,
    coverage: Coverage,
    level_end: u32,
    depth: u32,
    next_id: u32,
    check_wedge: bool,
    max_states: u64,
}

/// Why a merge stopped the search.
enum Stop {
    Found(u32, &'static str, Violation),
    Truncated,
}

impl Search {
    /// Take the expanded states in order: number them, record new successors and the edges.
    fn merge(&mut self, model: &ApplydModel, runs: Vec<Expanded>) -> Option<Stop> {
        let units = model.units();
        for run in runs {
            for (violation, start, end) in run.states {
                let id = self.next_id;
                self.next_id += 1;
                if id == self.level_end {
                    self.depth += 1;
                    self.level_end = self.parent.len() as u32;
                }
                if let Some((name, v)) = violation {
                    return Some(Stop::Found(id, name, v));
                }
                let mine = &run.succ[start..end];
                self.generated += mine.len() as u64;
                let mut touched = 0u64;
                // In a tight loop, so the loads are in flight together.
                for (fp, _, _) in mine {
                    touched ^= self.seen.touch(*fp);
                }
                std::hint::black_box(touched);
                for (i, &(fp, a, kinds)) in mine.iter().enumerate() {
                    let (nid, new) = self.seen.get_or_insert(fp, self.parent.len() as u32);
                    if new {
                        let rep = &run.reps[start + i];
                        self.coverage.add(kinds);
                        self.parent.push(id);
                        self.via.push(a);
                        self.settled.push(settled_bits(model, units, rep));
                        self.queue.push_back(*rep);
                    }
                    if self.check_wedge {
                        self.edges.push(nid);
                    }
                }
                self.offsets.push(self.edges.len() as u64);
                if self.parent.len() as u64 > self.max_states {
                    return Some(Stop::Truncated);
                }
            }
        }
        None
    }

    fn next_batch(&mut self) -> Vec<State> {
        let n = self.queue.len().min(BATCH);
        self.queue.drain(..n).collect()
    }
}

/// Which units (applies, and a rollout's apply) are settled in `s`, as bits.
fn settled_bits(model: &ApplydModel, units: usize, s: &State) -> u8 {
    let mut m = 0u8;
    for a in 0..units {
        if model.settled(s, a) {
            m |= 1 << a;
        }
    }
    m
}

/// Explore everything reachable (up to `max_states` unique states), expanding states on
/// `threads` threads. The result does not depend on the number of threads: states are expanded
/// in batches and merged in queue order, and representatives order workers by content. While
/// one batch is merged the next is already expanding: it is made of states queued before the
/// merge began, so it is the same batch a sequential search would take next.
pub fn explore(
    model: &ApplydModel,
    check_wedge: bool,
    max_states: u64,
    threads: usize,
) -> Explored {
    let start = Instant::now();
    let units = model.units();
    let mut search = Search {
        seen: Seen::new(),
        parent: Vec::new(),
        via: Vec::new(),
        settled: Vec::new(),
        offsets: vec![0],
        edges: Vec::new(),
        queue: VecDeque::new(),
        generated: 0,
        coverage: Coverage::default(),
        level_end: 0,
        depth: 0,
        next_id: 0,
        check_wedge,
        max_states,
    };
    for init in model.init_states() {
        let rep = model.representative(&init);
        let fp = fingerprint(&rep);
        if search.seen.get_or_insert(fp, search.parent.len() as u32).1 {
            search.parent.push(u32::MAX);
            search.via.push(Action::Tick);
            search.settled.push(settled_bits(model, units, &rep));
            search.queue.push_back(rep);
        }
    }
    search.level_end = search.parent.len() as u32;
    let helpers = threads.max(1) - 1;
    let mut stop = None;
    let mut ready: Vec<Expanded> = Vec::new();
    loop {
        let batch = search.next_batch();
        if batch.is_empty() && ready.is_empty() {
            break;
        }
        let (expanded, merged) =
            expand_while(model, &batch, helpers, || search.merge(model, ready));
        if merged.is_some() {
            stop = merged;
            break;
        }
        ready = expanded;
    }
    let mut result = Explored {
        generated: search.generated,
        unique: search.parent.len() as u64,
        depth: search.depth,
        elapsed_s: 0.0,
        found: None,
        truncated: matches!(stop, Some(Stop::Truncated)),
        wedge_s: 0.0,
        coverage: search.coverage,
    };
    let Search {
        parent,
        via,
        settled,
        offsets,
        edges,
        queue,
        seen,
        ..
    } = search;
    if let Some(Stop::Found(id, name, v)) = stop {
        result.found = Some(Found {
            property: name,
            violation: v,
            path: replay(model, &parent, &via, id),
        });
    } else if check_wedge && !result.truncated {
        drop(queue);
        drop(seen);
        let t = Instant::now();
        let w = wedge(&offsets, &edges, &settled, units, threads);
        result.wedge_s = t.elapsed().as_secs_f64();
        if let Some((id, a)) = w {
            let path = replay(model, &parent, &via, id);
            let last = &path.last().unwrap().0;
            result.found = Some(Found {
                property: NO_WEDGE,
                violation: Violation {
                    invariant: NO_WEDGE,
                    detail: format!(
                        "{} and no continuation reaches a terminal or human-wait state",
                        model.unit_text(last, a)
                    ),
                },
                path,
            });
        }
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    result
}

/// The first (shallowest) state from which some apply can never settle again. Each apply's
/// backward pass is independent of the others', so they run side by side on `threads` threads.
fn wedge(
    offsets: &[u64],
    edges: &[u32],
    settled: &[u8],
    applies: usize,
    threads: usize,
) -> Option<(u32, usize)> {
    let n = settled.len();
    // Reverse edges in CSR form.
    let mut indeg = vec![0u32; n + 1];
    for &t in edges {
        indeg[t as usize + 1] += 1;
    }
    for i in 0..n {
        indeg[i + 1] += indeg[i];
    }
    let mut fill = indeg.clone();
    let mut rev = vec![0u32; edges.len()];
    for src in 0..(offsets.len() - 1) {
        for e in offsets[src]..offsets[src + 1] {
            let t = edges[e as usize] as usize;
            rev[fill[t] as usize] = src as u32;
            fill[t] += 1;
        }
    }
    drop(fill);
    // Only expanded states have their edges; an unexpanded one would look like a wedge.
    let expanded = offsets.len() - 1;
    let first_wedged = |a: usize| -> Option<u32> {
        let mut can = vec![false; n];
        let mut stack = Vec::new();
        for (i, m) in settled.iter().enumerate() {
            if m & (1 << a) != 0 {
                can[i] = true;
                stack.push(i as u32);
            }
        }
        while let Some(t) = stack.pop() {
            let t = t as usize;
            for e in indeg[t]..indeg[t + 1] {
                let s = rev[e as usize] as usize;
                if !can[s] {
                    can[s] = true;
                    stack.push(s as u32);
                }
            }
        }
        can[..expanded].iter().position(|c| !c).map(|i| i as u32)
    };
    let units: Vec<usize> = (0..applies).collect();
    let firsts: Vec<Option<u32>> = std::thread::scope(|scope| {
        units
            .chunks(applies.div_ceil(threads.max(1)).max(1))
            .map(|part| {
                scope.spawn(move || part.iter().map(|&a| first_wedged(a)).collect::<Vec<_>>())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|h| h.join().expect("a no-wedge thread"))
            .collect::<Vec<_>>()
    });
    // The shallowest wedge; between applies wedged at the same state, the first apply.
    firsts
        .into_iter()
        .enumerate()
        .filter_map(|(a, i)| i.map(|i| (i, a)))
        .min()
}

/// Rebuild the raw path to `id`: the recorded actions are relative to canonical states, so
/// each one is mapped through the permutation that canonicalised the raw state it applies to.
/// Epochs are kept as they really are (not relabelled), for the reader and the replay.
fn replay(
    model: &ApplydModel,
    parent: &[u32],
    via: &[Action],
    id: u32,
) -> Vec<(State, Option<Action>)> {
    let mut chain = Vec::new();
    let mut cur = id;
    while parent[cur as usize] != u32::MAX {
        chain.push(via[cur as usize]);
        cur = parent[cur as usize];
    }
    chain.reverse();
    let mut raw_model = model.clone();
    raw_model.raw_epochs = true;
    raw_model.retire = false;
    let mut raw = model.init_states().remove(0);
    let mut out = vec![(raw, None)];
    for a in chain {
        // The permutation is the one of the relabelled state, as during exploration.
        let relabelled = model.relabelled(&raw);
        let (_, perm) = model.canonical(&relabelled);
        let a = map_worker(a, &perm);
        raw = raw_model
            .step(&raw, a)
            .expect("a recorded action applies to the replayed state");
        out.push((raw, Some(a)));
        // Spell out the steps in which displaced drivers notice, which the search takes
        // together with the step that displaced them.
        let mut retired = raw;
        model.retire_displaced(&mut retired);
        for w in 0..MAX_WORKERS {
            if retired.workers[w] == raw.workers[w] {
                continue;
            }
            for notice in [
                Action::Resume(w as u8, Outcome::Ok),
                Action::Step(w as u8, Outcome::Ok),
            ] {
                if let Some(n) = raw_model.step(&raw, notice) {
                    raw = n;
                    out.push((raw, Some(notice)));
                }
            }
            assert_eq!(
                raw.workers[w], retired.workers[w],
                "a displaced driver notices"
            );
        }
        assert_eq!(
            raw, retired,
            "noticing changes nothing but the displaced drivers"
        );
    }
    out
}

fn map_worker(a: Action, perm: &[u8; MAX_WORKERS]) -> Action {
    let m = |w: u8| perm[w as usize];
    match a {
        Action::Claim(w, x) => Action::Claim(m(w), x),
        Action::Step(w, o) => Action::Step(m(w), o),
        Action::Crash(w) => Action::Crash(m(w)),
        Action::Restart(w) => Action::Restart(m(w)),
        Action::Pause(w) => Action::Pause(m(w)),
        Action::Resume(w, o) => Action::Resume(m(w), o),
        other => other,
    }
}
