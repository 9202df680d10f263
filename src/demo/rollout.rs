//! The demo's rollout: its fakes and deployments, the engines that route its operations to
//! those fakes, and its progress lines.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{demo_timings, Log};
use crate::engine::fake::{FakeEngines, FakeTimings, SharedFakeEngines};
use crate::engine::{Engine, Reply};
use crate::machine::apply::ApplyRecord;
use crate::machine::{ApplyState, EngineCall, Probe};
use crate::store::status::ApplyStatus;

/// The rollout's fakes: a copy of a few seconds per deployment, so that three deployments one
/// after the other (and a kill) fit in the time the other applies take.
pub fn rollout_timings() -> FakeTimings {
    FakeTimings {
        spirit_rows: 12_000,
        spirit_rows_per_s: 6_000,
        spirit_checkpoint_every_ms: 500,
        ..demo_timings()
    }
}

/// The rollout's deployments, in rollout order.
pub const ROLLOUT_DEPLOYMENTS: [&str; 3] = ["us-east-1", "us-west-2", "eu-west-1"];

/// Rows an operation of the rollout has checkpointed when the demo kills its process: half-way.
pub(super) const ROLLOUT_KILL_AT_ROWS: u64 = 6_000;

/// The rollout as the demo saw it end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutOutcome {
    pub parent: ApplyState,
    /// Deployments in the order their operations were seen completed.
    pub completed: Vec<String>,
    /// The process driving one of its operations was killed.
    pub killed: bool,
}

/// The demo's engines: the rollout's operations (those with a deployment) on fakes of their own
/// timings, everything else on the shared demo fakes.
pub(super) struct DemoEngines {
    pub(super) main: SharedFakeEngines,
    pub(super) rollout: SharedFakeEngines,
}

impl DemoEngines {
    fn of(&self, apply: &ApplyRecord) -> &SharedFakeEngines {
        if apply.spec.deployment.is_empty() {
            &self.main
        } else {
            &self.rollout
        }
    }
}

#[async_trait::async_trait]
impl Engine for DemoEngines {
    async fn probe(&self, apply: &ApplyRecord, epoch: u64, probe: Probe) -> Reply {
        self.of(apply).probe(apply, epoch, probe).await
    }
    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Reply {
        self.of(apply).call(apply, epoch, call).await
    }
    async fn abandon(&self, apply: &ApplyRecord, epoch: u64) {
        self.of(apply).abandon(apply, epoch).await
    }
}

/// The rows each fake Spirit target has checkpointed, by place.
pub(super) fn spirit_checkpoints(fakes: &Mutex<FakeEngines>) -> BTreeMap<String, u64> {
    fakes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .spirit
        .targets
        .iter()
        .map(|(k, t)| (k.clone(), t.checkpoint_rows))
        .collect()
}

/// One log entry of the rollout as a progress line, naming the operation by its number and
/// deployment; `checkpoints` are the Spirit checkpoints just before it, by place.
pub(super) fn rollout_event(
    e: &Log,
    r: &ApplyStatus,
    checkpoints: &BTreeMap<String, u64>,
) -> String {
    let who = e.owner.as_deref().unwrap_or("the store");
    let Some((i, o)) = e
        .operation
        .and_then(|op| r.operations.iter().enumerate().find(|(_, o)| o.id == op))
    else {
        // The parent's own moves: derived from its operations, never driven.
        return format!(
            "  apply-{} rollout: {} → {} ({})",
            e.apply, e.from, e.to, e.cause
        );
    };
    let name = format!("apply-{} #{} {}", e.apply, i + 1, o.deployment);
    if e.cause.starts_with("claim") && e.from == ApplyState::Pending {
        format!("▶ {name} started by {who} ({}), epoch {}", e.cause, e.epoch)
    } else if e.cause.starts_with("claim") {
        let place = format!("{}@{}", r.target, o.deployment);
        let rows = checkpoints.get(&place).copied().unwrap_or(0);
        format!(
            "↻ {name} lease stale → reclaimed by {who} ({}), epoch {}, resumes in {} from the spirit checkpoint in {place} ({rows} rows)",
            e.cause, e.epoch, e.from
        )
    } else if e.to == ApplyState::Completed {
        format!("✔ {name} completed (epoch {}, {who})", e.epoch)
    } else {
        format!("  {name}: {} → {} (epoch {}, {who})", e.from, e.to, e.epoch)
    }
}
