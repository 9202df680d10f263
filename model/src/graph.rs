//! Breadth-first exploration over the `Model` (init_states / actions / next_state) with worker
//! symmetry, keeping the reachable graph: safety properties are checked on every unique state
//! (the first violation found is a shortest one), and "no wedge" is checked afterwards as
//! AG EF settled(a) for every apply `a` by backward reachability over the stored edges —
//! stateright's `eventually` cannot see violations on cycles, and every path here is cyclic.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use applyd::machine::invariants::Violation;
use stateright::Model;

use crate::state::{fingerprint, Action, State, MAX_WORKERS};
use crate::world::{ApplydModel, NO_WEDGE, RECLAIMABLE, STEP, WORLD};

/// Keys are fingerprints already: hash them as themselves.
#[derive(Default)]
struct Ident(u64);
impl Hasher for Ident {
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
    fn finish(&self) -> u64 {
        self.0
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
}

fn property_of(model: &ApplydModel, s: &State) -> Option<(&'static str, Violation)> {
    if let Some(v) = model.step_violation(s) {
        return Some((STEP, v));
    }
    if let Some(v) = model.world_violation(s) {
        return Some((WORLD, v));
    }
    model.unreclaimable(s).map(|v| (RECLAIMABLE, v))
}

/// Explore everything reachable (up to `max_states` unique states).
pub fn explore(model: &ApplydModel, check_wedge: bool, max_states: u64) -> Explored {
    let start = Instant::now();
    let mut seen: HashMap<u64, u32, BuildHasherDefault<Ident>> = HashMap::default();
    let mut parent: Vec<u32> = Vec::new();
    let mut via: Vec<Action> = Vec::new();
    let mut settled: Vec<u8> = Vec::new();
    let mut offsets: Vec<u64> = vec![0];
    let mut edges: Vec<u32> = Vec::new();
    let mut depth_of_level_end: Vec<u32> = Vec::new();
    let mut queue: VecDeque<State> = VecDeque::new();
    let mut generated = 0u64;
    let mut actions = Vec::new();
    let applies = model.cfg.applies.len();
    let settled_bits = |s: &State| -> u8 {
        let mut m = 0u8;
        for a in 0..applies {
            if model.settled(s, a) {
                m |= 1 << a;
            }
        }
        m
    };

    for init in model.init_states() {
        let rep = State::representative(&init);
        let fp = fingerprint(&rep);
        if seen.insert(fp, parent.len() as u32).is_none() {
            parent.push(u32::MAX);
            via.push(Action::Tick);
            settled.push(settled_bits(&rep));
            queue.push_back(rep);
        }
    }
    let mut level_end = parent.len() as u32;
    let mut depth = 0u32;
    let mut next_id = 0u32;
    let mut truncated = false;
    let mut found: Option<(u32, &'static str, Violation)> = None;
    while let Some(s) = queue.pop_front() {
        let id = next_id;
        next_id += 1;
        if id == level_end {
            depth += 1;
            depth_of_level_end.push(level_end);
            level_end = parent.len() as u32;
        }
        if let Some((name, v)) = property_of(model, &s) {
            found = Some((id, name, v));
            break;
        }
        actions.clear();
        model.actions(&s, &mut actions);
        for a in actions.drain(..) {
            let Some(next) = model.next_state(&s, a) else {
                continue;
            };
            generated += 1;
            let rep = State::representative(&next);
            let fp = fingerprint(&rep);
            let nid = match seen.get(&fp) {
                Some(n) => *n,
                None => {
                    let n = parent.len() as u32;
                    seen.insert(fp, n);
                    parent.push(id);
                    via.push(a);
                    settled.push(settled_bits(&rep));
                    queue.push_back(rep);
                    n
                }
            };
            if check_wedge {
                edges.push(nid);
            }
        }
        offsets.push(edges.len() as u64);
        if parent.len() as u64 > max_states {
            truncated = true;
            break;
        }
    }
    let unique = parent.len() as u64;
    let mut result = Explored {
        generated,
        unique,
        depth,
        elapsed_s: 0.0,
        found: None,
        truncated,
        wedge_s: 0.0,
    };
    if let Some((id, name, v)) = found {
        result.found = Some(Found {
            property: name,
            violation: v,
            path: replay(model, &parent, &via, id),
        });
    } else if check_wedge && !truncated {
        drop(queue);
        drop(seen);
        let t = Instant::now();
        let w = wedge(&offsets, &edges, &settled, applies);
        result.wedge_s = t.elapsed().as_secs_f64();
        if let Some((id, a)) = w {
            let path = replay(model, &parent, &via, id);
            let last = &path.last().unwrap().0;
            result.found = Some(Found {
                property: NO_WEDGE,
                violation: Violation {
                    invariant: NO_WEDGE,
                    detail: format!(
                        "apply {} is {} and no continuation reaches a terminal or human-wait state",
                        a + 1,
                        last.rows[a].state
                    ),
                },
                path,
            });
        }
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    result
}

/// The first (shallowest) state from which some apply can never settle again.
fn wedge(offsets: &[u64], edges: &[u32], settled: &[u8], applies: usize) -> Option<(u32, usize)> {
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
    let mut best: Option<(u32, usize)> = None;
    let mut can = vec![false; n];
    let mut stack = Vec::new();
    for a in 0..applies {
        can.iter_mut().for_each(|c| *c = false);
        stack.clear();
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
        // Only expanded states have their edges; an unexpanded one would look like a wedge.
        let expanded = offsets.len() - 1;
        if let Some(i) = can[..expanded].iter().position(|c| !c) {
            if best.is_none_or(|(b, _)| (i as u32) < b) {
                best = Some((i as u32, a));
            }
        }
    }
    best
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
    let mut raw = model.init_states().remove(0);
    let mut out = vec![(raw, None)];
    for a in chain {
        // The permutation is the one of the relabelled state, as during exploration.
        let relabelled = model.relabelled(&raw);
        let (_, perm) = relabelled.canonical();
        let a = map_worker(a, &perm);
        raw = raw_model
            .step(&raw, a)
            .expect("a recorded action applies to the replayed state");
        out.push((raw, Some(a)));
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
