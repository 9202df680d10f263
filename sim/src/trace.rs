//! The trace of a run: every event is hashed into a running FNV-1a hash (the replay handle's
//! fingerprint), the last few are kept for failure reports, and `--trace` prints all of them.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use applyd::machine::{ApplyState, ClaimedVia, ControlOp};
use applyd::testkit::Stepped;

use crate::preset::Fault;

/// What happened at one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Submitted,
    /// The submission was refused (target busy or store down); retried later.
    SubmitDeferred,
    Claimed(ClaimedVia),
    Stepped(Stepped),
    HeartbeatFailed,
    /// A heartbeat found the lease gone: the driver abandons the drive.
    HeartbeatLeaseLost,
    /// The drive ended (finished, lease lost at load, or row gone).
    Dropped,
    Fault(Fault),
    Restarted,
    Resumed,
    StoreUp,
    Request {
        op: ControlOp,
        accepted: bool,
        /// Issued by the heal phase acting as the human.
        human: bool,
    },
    Expired(u32),
    FaultsStop,
    /// A watched wait went back to the driver: a request arrived, or the runner left its gate.
    WatchHandedBack,
    /// A watched wait ended: its lease was lost or presumed lost, and its runner with it.
    WatchEnded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceEvent {
    pub at_ms: u64,
    pub worker: Option<u8>,
    /// Store id of the apply.
    pub apply: Option<u64>,
    pub action: Action,
    /// The apply's state after the event.
    pub state: Option<ApplyState>,
    pub epoch: u64,
}

impl std::fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>10.3}s", self.at_ms as f64 / 1000.0)?;
        match self.worker {
            Some(w) => write!(f, " w{w:<2}")?,
            None => write!(f, " -- ")?,
        }
        match self.apply {
            Some(a) => write!(f, " apply={a:<3}")?,
            None => write!(f, " {:9}", "")?,
        }
        let action = match self.action {
            Action::Stepped(s) => format!("{s:?}"),
            Action::Claimed(via) => format!("claimed via {via}"),
            Action::Request {
                op,
                accepted,
                human,
            } => format!(
                "{}request {op} {}",
                if human { "human " } else { "" },
                if accepted { "accepted" } else { "refused" }
            ),
            other => format!("{other:?}"),
        };
        write!(f, " {action}")?;
        if let Some(s) = self.state {
            write!(f, " state={s} epoch={}", self.epoch)?;
        }
        Ok(())
    }
}

/// FNV-1a, 64 bit: stable across runs and builds of the same code (unlike `DefaultHasher`'s
/// seeds, which are random per process).
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub struct Trace {
    hasher: Fnv,
    recent: VecDeque<TraceEvent>,
    pub print: bool,
    pub recorded: u64,
}

const RECENT: usize = 40;

impl Trace {
    pub fn new(print: bool) -> Trace {
        Trace {
            hasher: Fnv::default(),
            recent: VecDeque::with_capacity(RECENT),
            print,
            recorded: 0,
        }
    }

    pub fn record(&mut self, e: TraceEvent) {
        e.hash(&mut self.hasher);
        self.recorded += 1;
        if self.print {
            println!("{e}");
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(e);
    }

    pub fn hash(&self) -> u64 {
        self.hasher.finish()
    }

    pub fn recent(&self) -> Vec<TraceEvent> {
        self.recent.iter().copied().collect()
    }
}
