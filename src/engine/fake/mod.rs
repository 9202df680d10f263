//! Fake PlanetScale and fake Spirit: pure state machines advanced by a clock that the caller
//! passes in (virtual time in the simulator, wall time in the demo and the fake HTTP server).
//! They behave like the real services where it matters for crash safety — deploy-request
//! creation is NOT idempotent, a Spirit runner dies with the process that hosts it while its
//! checkpoint survives in the target — and they record every effect so invariants can count
//! deploy requests per apply and runners per target.
//!
//! `planetscale` and `spirit` hold one fake each; here are what they share (timings, the
//! effect log) and the one engine interface over both (probes, calls, injected faults and the
//! progress a Spirit runner reports).

mod planetscale;
mod spirit;

pub use planetscale::{branch_name, FakeBranch, FakeDeployRequest, FakePlanetScale};
pub use spirit::{FakeRunner, FakeSpirit, FakeTarget};

use std::collections::BTreeMap;

use super::planetscale_states::DeployState;
use crate::machine::apply::ApplyRecord;
use crate::machine::apply::{ApplyId, OperationId};
use crate::machine::observe::{BranchStatus, EngineFault, Observation, RunnerStatus};
use crate::machine::table::RunnerGone;
use crate::machine::{EngineCall, EngineKind, EngineState, Probe};

/// Durations of the fakes' phases, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeTimings {
    pub branch_ready_ms: u64,
    pub validate_ms: u64,
    pub deploy_ms: u64,
    pub cutover_ms: u64,
    pub revert_ms: u64,
    /// PlanetScale closes the revert window on its own after this long.
    pub server_revert_window_ms: u64,
    pub spirit_rows: u64,
    pub spirit_rows_per_s: u64,
    pub spirit_checkpoint_every_ms: u64,
}

impl Default for FakeTimings {
    fn default() -> Self {
        FakeTimings {
            branch_ready_ms: 2_000,
            validate_ms: 3_000,
            deploy_ms: 20_000,
            cutover_ms: 3_000,
            revert_ms: 10_000,
            server_revert_window_ms: 60 * 60 * 1000,
            spirit_rows: 100_000,
            spirit_rows_per_s: 2_000,
            spirit_checkpoint_every_ms: 5_000,
        }
    }
}

impl FakeTimings {
    /// Phases of seconds: crash tests and trials.
    pub fn fast() -> FakeTimings {
        FakeTimings {
            branch_ready_ms: 300,
            validate_ms: 300,
            deploy_ms: 1_500,
            cutover_ms: 300,
            revert_ms: 1_000,
            server_revert_window_ms: 60_000,
            spirit_rows: 6_000,
            spirit_rows_per_s: 2_000,
            spirit_checkpoint_every_ms: 1_000,
        }
    }
}

/// One recorded effect on a fake, for invariants and traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectRecord {
    pub at_ms: u64,
    pub operation: OperationId,
    pub epoch: u64,
    pub call: EngineCall,
    pub accepted: bool,
}

/// A fault the simulator injects into the next engine call or probe; consumed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InjectedFault {
    /// A 5xx or a timeout before the request reached the engine: nothing happened.
    Unreachable,
    /// The engine applied the call but the reply was lost (waits for the next call).
    ReplyLost,
}

/// Both fakes behind one engine interface.
#[derive(Debug, Clone, Default)]
pub struct FakeEngines {
    pub planetscale: FakePlanetScale,
    pub spirit: FakeSpirit,
    /// Armed by the simulator; the driver sees `EngineFault::Transient` either way.
    pub inject: Option<InjectedFault>,
}

impl FakeEngines {
    pub fn new(timings: FakeTimings) -> FakeEngines {
        FakeEngines {
            planetscale: FakePlanetScale::new(timings),
            spirit: FakeSpirit::new(timings),
            inject: None,
        }
    }

    pub fn probe(&mut self, now: u64, apply: &ApplyRecord, probe: Probe) -> Observation {
        // A lost reply waits for a call: losing a read-only answer changes nothing.
        if self.inject == Some(InjectedFault::Unreachable) {
            self.inject = None;
            return Observation::Fault(EngineFault::Transient);
        }
        match apply.row.engine {
            EngineKind::PlanetScale => self.planetscale.probe(now, apply, probe),
            EngineKind::Spirit => self.spirit.probe(now, apply, probe),
        }
    }

    pub fn call(
        &mut self,
        now: u64,
        host: u32,
        apply: &ApplyRecord,
        epoch: u64,
        call: EngineCall,
    ) -> Observation {
        let injected = self.inject.take();
        if injected == Some(InjectedFault::Unreachable) {
            return Observation::Fault(EngineFault::Transient);
        }
        let obs = match apply.row.engine {
            EngineKind::PlanetScale => self.planetscale.call(now, apply, epoch, call),
            EngineKind::Spirit => self.spirit.call(now, host, apply, epoch, call),
        };
        match injected {
            Some(InjectedFault::ReplyLost) => Observation::Fault(EngineFault::Transient),
            _ => obs,
        }
    }

    /// What the engine reports of an apply's work (Spirit's copy), for the operator's task rows.
    pub fn progress(
        &self,
        now: u64,
        apply: &ApplyRecord,
    ) -> Option<crate::store::progress::TaskProgress> {
        match apply.row.engine {
            EngineKind::Spirit => {
                self.spirit
                    .progress(now, apply.row.operation, &apply.spec.place())
            }
            EngineKind::PlanetScale => None,
        }
    }

    /// A probe and the progress it sees, as the engine interface replies.
    pub fn probe_reply(&mut self, now: u64, apply: &ApplyRecord, probe: Probe) -> super::Reply {
        let obs = self.probe(now, apply, probe);
        with_progress(obs.into(), self.progress(now, apply))
    }

    /// A call and the progress after it, as the engine interface replies.
    pub fn call_reply(
        &mut self,
        now: u64,
        host: u32,
        apply: &ApplyRecord,
        epoch: u64,
        call: EngineCall,
    ) -> super::Reply {
        let obs = self.call(now, host, apply, epoch, call);
        with_progress(obs.into(), self.progress(now, apply))
    }

    pub fn advance(&mut self, now: u64) {
        self.planetscale.advance(now);
        self.spirit.advance(now);
    }

    pub fn crash_host(&mut self, now: u64, host: u32) {
        self.spirit.crash_host(now, host);
    }

    pub fn truth(&self, apply: &ApplyRecord) -> Option<EngineState> {
        self.truth_of(apply.row.engine, apply.row.operation, &apply.spec)
    }

    /// The engine's truth about one operation of `engine`, whose spec is `spec`.
    pub fn truth_of(
        &self,
        engine: EngineKind,
        operation: OperationId,
        spec: &crate::machine::apply::ApplySpec,
    ) -> Option<EngineState> {
        match engine {
            EngineKind::PlanetScale => self.planetscale.truth(operation),
            EngineKind::Spirit => self.spirit.truth(operation, &spec.place()),
        }
    }
}

fn with_progress(
    reply: super::Reply,
    progress: Option<crate::store::progress::TaskProgress>,
) -> super::Reply {
    match progress {
        Some(p) => reply.with_progress(p),
        None => reply,
    }
}

/// The fakes shared by the async drivers of one process (demo, tests), on a clock.
pub struct SharedFakeEngines {
    pub engines: std::sync::Arc<std::sync::Mutex<FakeEngines>>,
    pub clock: std::sync::Arc<dyn crate::store::memory::Clock>,
    pub host: u32,
}

#[async_trait::async_trait]
impl super::Engine for SharedFakeEngines {
    async fn probe(&self, apply: &ApplyRecord, _epoch: u64, probe: Probe) -> super::Reply {
        let now = self.clock.now_ms();
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .probe_reply(now, apply, probe)
    }
    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> super::Reply {
        let now = self.clock.now_ms();
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .call_reply(now, self.host, apply, epoch, call)
    }
    async fn abandon(&self, apply: &ApplyRecord, epoch: u64) {
        let now = self.clock.now_ms();
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spirit
            .abandon(now, self.host, apply.row.operation, epoch);
    }
}
