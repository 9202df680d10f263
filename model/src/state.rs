//! The model's state: store rows, abstract engines and workers, in fixed arrays of small values.

use std::hash::{Hash, Hasher};

use applyd::machine::{
    ApplyState, ControlOp, EngineCall, EngineKind, EngineState, PendingControls,
};
use applyd::worker::{ApplySnapshot, Drive, ResumeState, RunnerStatus};

pub const MAX_WORKERS: usize = 4;
pub const MAX_APPLIES: usize = 3;

/// An apply row as the store holds it (MemoryRow without strings and wall-clock times).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    /// Submitted (the model's user submits an apply once its target is free).
    pub present: bool,
    pub state: ApplyState,
    pub epoch: u8,
    pub leased: bool,
    /// Ticks since the last heartbeat, saturating at stale-after; `None` when never heartbeated
    /// or released.
    pub hb_age: Option<u8>,
    pub attempt: u8,
    pub resume: ResumeState,
    /// Pending requests; `start_newer_than_lease` is kept as MemoryStore orders it: set when a
    /// start is (re)issued, cleared by a claim.
    pub controls: PendingControls,
}

impl Row {
    pub const ABSENT: Row = Row {
        present: false,
        state: ApplyState::Pending,
        epoch: 0,
        leased: false,
        hb_age: None,
        attempt: 0,
        resume: ResumeState {
            branch: false,
            deploy_request_intent: false,
            deploy_request_id: None,
        },
        controls: PendingControls {
            start: false,
            start_newer_than_lease: false,
            stop: false,
            cancel: false,
            cutover: false,
            revert: false,
            skip_revert: false,
        },
    };
}

/// A Spirit runner: it lives in the worker process that started it and dies with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Runner {
    pub epoch: u8,
    pub host: u8,
    /// Copied everything and waits for the sentinel table to be dropped.
    pub waiting: bool,
}

/// The abstract engine's truth about one apply, plus the ghost facts the invariants count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Eng {
    // PlanetScale.
    pub branch: bool,
    pub changes_applied: bool,
    /// Deploy requests ever created for the apply's branch (ghost).
    pub drs: u8,
    /// The first deploy request's state (what a look-up by branch finds).
    pub dr: Option<EngineState>,
    // Spirit.
    pub runner: Option<Runner>,
    pub outcome: Option<RunnerStatus>,
    /// The reviewed schema is live in the target.
    pub applied: bool,
    pub sentinel: bool,
    /// Highest lease epoch the engine has seen for the apply (Spirit refuses older ones).
    pub seen_epoch: u8,
}

impl Eng {
    pub const NONE: Eng = Eng {
        branch: false,
        changes_applied: false,
        drs: 0,
        dr: None,
        runner: None,
        outcome: None,
        applied: false,
        sentinel: false,
        seen_epoch: 0,
    };
}

/// A row snapshot a paused worker read just before it froze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frozen {
    pub row: ApplySnapshot,
    pub controls: PendingControls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Worker {
    /// A slot beyond the configured number of workers.
    Unused,
    Crashed,
    Idle,
    Driving {
        drive: Drive,
        /// Ticks since this driver's last successful heartbeat, saturating at presumed-loss.
        hb_age: u8,
        /// Paused right after a read: acts on this snapshot when it resumes.
        frozen: Option<Frozen>,
    },
}

/// An invariant broken by a step (not visible in a single state), with the inputs needed to
/// re-run the shared invariant function that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flaw {
    LegalStep(EngineKind, ApplyState, ApplyState),
    StaleWrite { row: u8, writer: u8 },
    StopDominance(PendingControls, EngineKind, EngineCall),
    CutoverGate(EngineCall, Option<EngineState>),
    Justified(ControlOp, ApplyState),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct State {
    pub rows: [Row; MAX_APPLIES],
    pub eng: [Eng; MAX_APPLIES],
    pub workers: [Worker; MAX_WORKERS],
    pub faults_left: u8,
    pub engine_faults_left: u8,
    pub requests_left: u8,
    pub flaw: Option<(u8, Flaw)>,
}

/// How the nondeterministic engine answers the command a step issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The command as the engine's truth dictates (also every store command).
    Ok,
    /// The call took effect but the reply was lost: the worker sees a transient fault.
    LostReply,
    /// The call failed before taking effect, retryably (a transient fault).
    Transient,
    /// The engine refused for good.
    Permanent,
    /// A call the engine cannot apply in its current state is ignored and the deploy request
    /// is reported as it is (instead of refused): the model does not rely on either answer.
    Ignored,
    /// The engine's work moved one step on its own before this probe.
    Advance,
    /// The Spirit runner or the deploy request failed before this probe (retryable / not).
    FailRetryable,
    FailPermanent,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::LostReply => "lost_reply",
            Outcome::Transient => "transient",
            Outcome::Permanent => "permanent",
            Outcome::Ignored => "ignored",
            Outcome::Advance => "advance",
            Outcome::FailRetryable => "fail_retryable",
            Outcome::FailPermanent => "fail_permanent",
        }
    }

    /// Whether the outcome spends the engine-fault budget.
    pub fn is_fault(self) -> bool {
        // Work failing is the engine's own behaviour, bounded by the retry budget and by
        // `failed` being terminal; only injected faults spend the budget.
        matches!(
            self,
            Outcome::LostReply | Outcome::Transient | Outcome::Permanent
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The user submits apply `a` (its target has no active apply).
    Submit(u8),
    /// Idle worker `w` claims apply `a` through the first matching arm.
    Claim(u8, u8),
    /// Worker `w` heartbeats, reads its row and executes the core's next command.
    Step(u8, Outcome),
    Crash(u8),
    Restart(u8),
    /// Worker `w` reads its row and freezes (GC pause, partition) before acting on it.
    Pause(u8),
    /// The paused worker acts on what it read, without heartbeating first.
    Resume(u8, Outcome),
    /// One tick of the clock: every heartbeat ages.
    Tick,
    Request(u8, ControlOp),
    /// Retry expiry moves expired `failed_retryable` applies to `failed`.
    Expire,
}

/// A fast, deterministic 64-bit hasher (fx-style mixing with a murmur finaliser) for worker
/// ordering and state fingerprints.
#[derive(Default)]
pub struct Fx(u64);

impl Fx {
    #[inline]
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

pub fn fingerprint<T: Hash>(t: &T) -> u64 {
    let mut h = Fx::default();
    t.hash(&mut h);
    h.finish()
}

fn worker_key(w: &Worker, hosts: u8) -> u64 {
    fingerprint(&(w, hosts))
}

impl State {
    /// Bitmask of the applies whose runner lives on worker `w`.
    pub fn hosted_by(&self, w: usize) -> u8 {
        let mut m = 0;
        for (a, e) in self.eng.iter().enumerate() {
            if e.runner.is_some_and(|r| r.host as usize == w) {
                m |= 1 << a;
            }
        }
        m
    }

    /// The representative of the state's worker-symmetry class, and the permutation used:
    /// `rep.workers[i] == self.workers[perm[i]]`.
    pub fn canonical(&self) -> (State, [u8; MAX_WORKERS]) {
        let mut keyed: [(u64, u8); MAX_WORKERS] = [(0, 0); MAX_WORKERS];
        for (i, w) in self.workers.iter().enumerate() {
            keyed[i] = (worker_key(w, self.hosted_by(i)), i as u8);
        }
        keyed.sort_unstable();
        let mut perm = [0u8; MAX_WORKERS];
        let mut inv = [0u8; MAX_WORKERS];
        let mut out = *self;
        for (new, (_, old)) in keyed.iter().enumerate() {
            perm[new] = *old;
            inv[*old as usize] = new as u8;
            out.workers[new] = self.workers[*old as usize];
        }
        for e in out.eng.iter_mut() {
            if let Some(r) = e.runner.as_mut() {
                r.host = inv[r.host as usize];
            }
        }
        (out, perm)
    }

    pub fn representative(s: &State) -> State {
        s.canonical().0
    }
}
