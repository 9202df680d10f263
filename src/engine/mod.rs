//! The engine interface the drivers execute calls and probes against. Every call carries the
//! lease epoch, so an engine that can (the fakes, and where the API allows a real one) refuses a
//! call from a displaced owner with `EngineFault::StaleEpoch`.

use async_trait::async_trait;

use crate::machine::apply::ApplyRecord;
use crate::machine::observe::{EngineFault, Observation};
use crate::machine::{EngineCall, Probe};
use crate::store::progress::TaskProgress;

/// An engine's answer: the normalised observation the worker core reads, and for a fault or
/// a failure the engine's own words (secrets redacted), which a failed state is written with —
/// on the apply, its operation, its task rows and the audit entry — so no apply ends failed
/// without saying why. An engine that can tell how far its work has got adds `progress`, which
/// the operator keeps on the task rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub obs: Observation,
    pub why: Option<String>,
    pub progress: Option<TaskProgress>,
}

impl Reply {
    /// A fault, with what the engine said.
    pub fn fault(fault: EngineFault, why: impl Into<String>) -> Reply {
        Reply::explained(Observation::Fault(fault), why)
    }

    /// Any observation with the engine's account of it (e.g. a runner that failed).
    pub fn explained(obs: Observation, why: impl Into<String>) -> Reply {
        Reply {
            obs,
            why: Some(why.into()),
            progress: None,
        }
    }

    /// The same answer, with how far the work has got.
    pub fn with_progress(self, progress: TaskProgress) -> Reply {
        Reply {
            progress: Some(progress),
            ..self
        }
    }
}

impl From<Observation> for Reply {
    fn from(obs: Observation) -> Reply {
        Reply {
            obs,
            why: None,
            progress: None,
        }
    }
}

#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Engine: Send + Sync {
    /// A read-only query about the apply's work.
    async fn probe(&self, apply: &ApplyRecord, epoch: u64, probe: Probe) -> Reply;
    /// A call with an external effect; idempotent or guarded as documented on `EngineCall`.
    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Reply;
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
