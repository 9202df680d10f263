//! The memory store's clocks: the simulator and tests move one by hand, the demo reads a
//! monotonic one. Production stores read the database clock instead.

use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds of the store's clock. Production reads the database clock; here it is injected.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// A clock the caller moves by hand (simulator, tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(start_ms))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Monotonic milliseconds since the store was created (demo).
#[derive(Debug)]
pub struct MonotonicClock(std::time::Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}
