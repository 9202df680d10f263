//! The engine interface the drivers execute calls and probes against. Every call carries the
//! lease epoch, so an engine that can (the fakes, and where the API allows a real one) refuses a
//! call from a displaced owner with `EngineFault::StaleEpoch`.

use async_trait::async_trait;

use crate::machine::apply::ApplyRecord;
use crate::machine::observe::Observation;
use crate::machine::{EngineCall, Probe};

#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Engine: Send + Sync {
    /// A read-only query about the apply's work.
    async fn probe(&self, apply: &ApplyRecord, epoch: u64, probe: Probe) -> Observation;
    /// A call with an external effect; idempotent or guarded as documented on `EngineCall`.
    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Observation;
    /// This process no longer holds the apply's lease at `epoch` (lost, or presumed lost): end
    /// whatever it runs locally for it under that epoch or an older one, recording nothing, so
    /// nothing of it outlives the lease; a newer epoch's work (this process may have reclaimed
    /// the apply since) is left alone. The next owner finds the engine's persisted state as a
    /// crash leaves it. Engines with nothing local (PlanetScale) have nothing to do.
    async fn abandon(&self, _apply: &ApplyRecord, _epoch: u64) {}
}

pub mod fake;
pub mod fake_server;
pub mod planetscale;
pub mod planetscale_states;
pub mod real;
pub mod remote_fake;
pub mod spirit;
