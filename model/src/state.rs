//! The model's state: store rows, abstract engines and workers, in fixed arrays of small values.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{OnceLock, RwLock};

use applyd::machine::rollout::RolloutPolicy;
use applyd::machine::{
    ApplyState, ControlOp, EngineCall, EngineKind, EngineState, PendingControls,
};
use applyd::worker::{Drive, ResumeState, RunnerStatus};

pub const MAX_WORKERS: usize = 4;
pub const MAX_APPLIES: usize = 3;

/// Pending control requests as a bit set (`PendingControls` is seven bools).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Controls(u8);

impl Controls {
    const NEWER: u8 = 1 << 7;

    fn bit(op: ControlOp) -> u8 {
        match op {
            ControlOp::Start => 1,
            ControlOp::Stop => 2,
            ControlOp::Cancel => 4,
            ControlOp::Cutover => 8,
            ControlOp::Revert => 16,
            ControlOp::SkipRevert => 32,
            // A release is complete when accepted (`rollout::requests::accept`): never pending.
            ControlOp::Release | ControlOp::Volume => 0,
        }
    }

    pub fn has(self, op: ControlOp) -> bool {
        self.0 & Self::bit(op) != 0
    }

    pub fn set(&mut self, op: ControlOp, pending: bool) {
        if pending {
            self.0 |= Self::bit(op);
        } else {
            self.0 &= !Self::bit(op);
        }
    }

    pub fn start(self) -> bool {
        self.has(ControlOp::Start)
    }

    pub fn set_start_newer_than_lease(&mut self, v: bool) {
        if v {
            self.0 |= Self::NEWER;
        } else {
            self.0 &= !Self::NEWER;
        }
    }

    pub fn get(self) -> PendingControls {
        PendingControls {
            start: self.has(ControlOp::Start),
            start_newer_than_lease: self.0 & Self::NEWER != 0,
            stop: self.has(ControlOp::Stop),
            cancel: self.has(ControlOp::Cancel),
            cutover: self.has(ControlOp::Cutover),
            revert: self.has(ControlOp::Revert),
            skip_revert: self.has(ControlOp::SkipRevert),
        }
    }

    /// Whether a start was (re)issued after the row's last claim.
    pub fn start_newer_than_lease(self) -> bool {
        self.0 & Self::NEWER != 0
    }
}

/// `ResumeState` in one byte: two flags and the deploy request id (ids are small counters in
/// the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Resume(u8);

impl Resume {
    pub fn pack(r: ResumeState) -> Resume {
        let id = match r.deploy_request_id {
            None => 0,
            Some(id) => {
                assert!(id < 63, "deploy request ids in the model are small");
                id as u8 + 1
            }
        };
        Resume(r.branch as u8 | (r.deploy_request_intent as u8) << 1 | id << 2)
    }

    pub fn get(self) -> ResumeState {
        ResumeState {
            branch: self.0 & 1 != 0,
            deploy_request_intent: self.0 & 2 != 0,
            deploy_request_id: match self.0 >> 2 {
                0 => None,
                id => Some(id as u64 - 1),
            },
        }
    }
}

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
    pub resume: Resume,
    /// Pending requests; `start_newer_than_lease` is kept as MemoryStore orders it: set when a
    /// start is (re)issued, cleared by a claim.
    pub controls: Controls,
    /// The stored DDL was altered after submit: it no longer matches its reviewed fingerprint.
    pub drifted: bool,
    /// Parked by its owner (lease released), before its wake time.
    pub resting: bool,
    /// A rollout's operation: the requests it acknowledged, in their current issue (it did its
    /// part; another operation still acts on them).
    pub acked: Controls,
    /// A rollout's operation failed closed (an inconsistency): it dominates every policy.
    pub failed_closed: bool,
}

impl Row {
    pub const ABSENT: Row = Row {
        present: false,
        state: ApplyState::Pending,
        epoch: 0,
        leased: false,
        hb_age: None,
        attempt: 0,
        resume: Resume(0),
        controls: Controls(0),
        drifted: false,
        resting: false,
        acked: Controls(0),
        failed_closed: false,
    };
}

/// The apply row of a rollout, whose operations are the model's rows: its state (only ever
/// written with the derivation), the latches a person sets (the rest of its policy is the
/// configuration's), and its pending requests (a rollout's requests are the apply's; each
/// operation sees them through `rollout::requests::pending_for`). In a rollout's rows,
/// `Row::controls` keeps only whether a start is newer than that operation's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Parent {
    pub state: ApplyState,
    pub latches: Latches,
    pub controls: Controls,
}

/// A rollout policy's latches: `held` by a stop, `released` from a `pause` hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Latches {
    pub held: bool,
    pub released: bool,
}

impl Latches {
    pub fn of(p: &RolloutPolicy) -> Latches {
        Latches {
            held: p.held,
            released: p.released,
        }
    }

    /// `policy` (the configuration's) with these latches.
    pub fn on(self, policy: RolloutPolicy) -> RolloutPolicy {
        RolloutPolicy {
            held: self.held,
            released: self.released,
            ..policy
        }
    }
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

/// The row a paused worker read just before it froze (the apply's id, engine and options are
/// the configuration's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frozen {
    pub state: ApplyState,
    pub epoch: u8,
    pub attempt: u8,
    pub resume: Resume,
    pub controls: Controls,
    pub drifted: bool,
    /// A rollout's cutover gate as read (always open for an apply of one operation).
    pub cutover_open: bool,
}

/// A `Drive` interned by the model (see [`Drives`]), with its apply and epoch zeroed: those
/// live in the worker, where epoch relabelling reaches them without a look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriveId(u32);

/// A worker as the canonical order sees it: its fields, with its drive's content key in place of
/// the drive's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum WorkerKey {
    Unused,
    Crashed,
    Idle,
    Driving(u8, u8, u8, u64, Option<Frozen>),
}

impl WorkerKey {
    fn of(w: &Worker, key: &impl Fn(DriveId) -> u64) -> WorkerKey {
        match *w {
            Worker::Unused => WorkerKey::Unused,
            Worker::Crashed => WorkerKey::Crashed,
            Worker::Idle => WorkerKey::Idle,
            Worker::Driving {
                apply,
                epoch,
                hb_age,
                drive,
                frozen,
            } => WorkerKey::Driving(apply, epoch, hb_age, key(drive), frozen),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Worker {
    /// A slot beyond the configured number of workers.
    Unused,
    Crashed,
    Idle,
    Driving {
        /// The apply (from 0) and the lease epoch the driver holds.
        apply: u8,
        epoch: u8,
        /// Ticks since this driver's last successful heartbeat, saturating at presumed-loss.
        hb_age: u8,
        drive: DriveId,
        /// Paused right after a read: acts on this snapshot when it resumes.
        frozen: Option<Frozen>,
    },
}

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNKS: usize = 1 << 14;

/// The distinct `Drive` values met so far. A state holds a 4-byte id instead of the
/// ~120-byte core (ids, an observation, a cursor), which keeps states small and cheap to hash;
/// there are few distinct drives. Reads are lock-free (append-only chunks); a look-up takes a
/// read lock and interning a new drive the write lock. Ids depend on the order drives are met,
/// which threads make arbitrary: nothing the search reports depends on them, since workers are
/// ordered by each drive's content key (`key`), not by its id.
pub struct Drives {
    /// Sharded by the drive's hash, so that threads looking drives up rarely meet.
    index: Box<[RwLock<Shard>]>,
    next: std::sync::atomic::AtomicU32,
    chunks: Box<[OnceLock<Chunk>]>,
}

const SHARDS: usize = 16;

type Shard = HashMap<Drive, u32, BuildHasherDefault<Fx>>;

type Chunk = Box<[OnceLock<(Drive, u64)>]>;

impl Default for Drives {
    fn default() -> Self {
        Drives {
            index: (0..SHARDS).map(|_| RwLock::default()).collect(),
            next: std::sync::atomic::AtomicU32::new(0),
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl std::fmt::Debug for Drives {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Drives({})", self.len())
    }
}

impl Drives {
    /// The id of `d` (whose apply and epoch the caller has zeroed).
    pub fn intern(&self, d: Drive) -> DriveId {
        let key = fingerprint(&d);
        let shard = &self.index[key as usize % SHARDS];
        if let Some(&id) = shard.read().unwrap().get(&d) {
            return DriveId(id);
        }
        let mut index = shard.write().unwrap();
        if let Some(&id) = index.get(&d) {
            return DriveId(id);
        }
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
        assert!(id < CHUNK * CHUNKS, "too many distinct drives");
        let chunk = self.chunks[id >> CHUNK_BITS]
            .get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
        let _ = chunk[id & (CHUNK - 1)].set((d, key));
        index.insert(d, id as u32);
        DriveId(id as u32)
    }

    fn entry(&self, id: DriveId) -> &(Drive, u64) {
        let i = id.0 as usize;
        self.chunks[i >> CHUNK_BITS]
            .get()
            .and_then(|c| c[i & (CHUNK - 1)].get())
            .expect("an interned drive")
    }

    pub fn get(&self, id: DriveId) -> Drive {
        self.entry(id).0
    }

    /// The drive's content key: the same for the same drive in every run, whatever its id.
    pub fn key(&self, id: DriveId) -> u64 {
        self.entry(id).1
    }

    pub fn len(&self) -> usize {
        self.next.load(std::sync::atomic::Ordering::Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An invariant broken by a step (not visible in a single state), with the inputs needed to
/// re-run the shared invariant function that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flaw {
    LegalStep(EngineKind, ApplyState, ApplyState),
    StaleWrite {
        row: u8,
        writer: u8,
    },
    StopDominance(PendingControls, EngineKind, EngineCall),
    CutoverGate(EngineCall, Option<EngineState>),
    Justified(ControlOp, ApplyState),
    /// A DDL-carrying call made on a read whose DDL had drifted.
    RanDriftedChange(EngineCall),
    /// A rollout step (`invariants::rollout_step`): the policy and operations before and after,
    /// and the parent's state after.
    Rollout {
        before: Latches,
        members_before: [Op; MAX_APPLIES],
        after: Latches,
        members_after: [Op; MAX_APPLIES],
        parent: ApplyState,
    },
}

/// An operation's state and whether it failed closed (a `rollout::Member` without its
/// position, which is its index in the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Op {
    pub state: ApplyState,
    pub failed_closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct State {
    pub rows: [Row; MAX_APPLIES],
    pub eng: [Eng; MAX_APPLIES],
    pub workers: [Worker; MAX_WORKERS],
    /// The rollout's apply row (unused by worlds of single-operation applies).
    pub parent: Parent,
    pub faults_left: u8,
    pub engine_faults_left: u8,
    pub requests_left: u8,
    /// Alterations of a stored change the model may still make.
    pub drifts_left: u8,
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
    /// Someone alters apply `a`'s stored DDL behind the operator's back.
    Drift(u8),
    /// Parked apply `a`'s wake time comes.
    Wake(u8),
    /// The user asks the rollout for `op` (its requests are the whole apply's).
    RolloutRequest(ControlOp),
}

/// A fast, deterministic 64-bit hasher (fx-style mixing with a murmur finaliser) for state
/// fingerprints and the drive index. A derived `Hash` feeds it one small field at a time
/// (flags, enum tags, `u8`s): those are packed eight to a word before mixing, so a state costs
/// a few multiplications instead of one per field.
#[derive(Default)]
pub struct Fx {
    h: u64,
    buf: u64,
    n: u32,
}

impl Fx {
    /// One word into the state: a folded 64x64->128 multiplication, so every input bit
    /// reaches every output bit (a plain multiply only carries upwards, and packed words then
    /// collide in their top bytes).
    #[inline(always)]
    fn add(&mut self, x: u64) {
        let m = ((self.h ^ x ^ 0x243f_6a88_85a3_08d3) as u128) * 0x51_7c_c1_b7_27_22_0a_95u128;
        self.h = (m as u64) ^ ((m >> 64) as u64);
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.buf |= (b as u64) << (8 * self.n);
        self.n += 1;
        if self.n == 8 {
            let w = self.buf;
            self.add(w);
            self.buf = 0;
            self.n = 0;
        }
    }

    /// Small values (tags, lengths, ids) take one byte; others an escape byte and all eight.
    /// Always inlined (with the rare wide case out of line): a call per enum tag would keep
    /// the hasher in memory instead of in registers.
    #[inline(always)]
    fn int(&mut self, i: u64) {
        if i < 0xff {
            self.byte(i as u8);
        } else {
            self.wide(i);
        }
    }

    #[cold]
    #[inline(never)]
    fn wide(&mut self, i: u64) {
        self.byte(0xff);
        for b in i.to_le_bytes() {
            self.byte(b);
        }
    }
}

impl Hasher for Fx {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.byte(*b);
        }
    }
    #[inline(always)]
    fn write_u8(&mut self, i: u8) {
        self.byte(i)
    }
    #[inline(always)]
    fn write_u16(&mut self, i: u16) {
        self.int(i as u64)
    }
    #[inline(always)]
    fn write_u32(&mut self, i: u32) {
        self.int(i as u64)
    }
    #[inline(always)]
    fn write_u64(&mut self, i: u64) {
        self.int(i)
    }
    #[inline(always)]
    fn write_usize(&mut self, i: usize) {
        self.int(i as u64)
    }
    fn finish(&self) -> u64 {
        let mut f = Fx { ..*self };
        f.add(self.buf ^ (self.n as u64) << 59);
        let mut k = f.h;
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
    /// `rep.workers[i] == self.workers[perm[i]]`. Workers are ordered by content, each drive
    /// by `key` (stateright's checkers pass the id itself: within one run an id is one drive).
    pub fn canonical_by(&self, key: impl Fn(DriveId) -> u64) -> (State, [u8; MAX_WORKERS]) {
        // Sorted by content (not a hash of the whole): equal keys are equal workers, so swapping
        // them is the identity and the representative does not depend on the input order.
        let mut keyed: [(WorkerKey, u8, u8); MAX_WORKERS] =
            [(WorkerKey::of(&Worker::Unused, &key), 0, 0); MAX_WORKERS];
        for (i, w) in self.workers.iter().enumerate() {
            keyed[i] = (WorkerKey::of(w, &key), self.hosted_by(i), i as u8);
        }
        keyed.sort_unstable();
        let mut perm = [0u8; MAX_WORKERS];
        let mut inv = [0u8; MAX_WORKERS];
        let mut out = *self;
        for (new, (_, _, old)) in keyed.iter().enumerate() {
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

    pub fn canonical(&self) -> (State, [u8; MAX_WORKERS]) {
        self.canonical_by(|d| d.0 as u64)
    }

    pub fn representative(s: &State) -> State {
        s.canonical().0
    }
}
