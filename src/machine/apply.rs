//! The stored apply as every layer speaks of it: its id, where it runs, its immutable spec, the
//! row its owner reads and writes, the engine resume state persisted with it, and how a fenced
//! write ended. Types only; the stores read and write them, the worker core decides on them.

use std::sync::Arc;

use super::claim::PendingControls;
use super::states::{ApplyState, EngineKind};
use super::table::ApplyOptions;

pub type ApplyId = u64;

/// An operation row's id: the unit engines key a change by (one per deployment and table step
/// of an apply).
pub type OperationId = u64;

/// Where an apply runs: at most one active apply per target.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Target {
    pub database: String,
    pub environment: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.database, self.environment)
    }
}

/// The immutable part of an apply that engines need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplySpec {
    /// External identifier, e.g. `apply-42`; the deterministic branch name derives from it.
    pub identifier: String,
    pub target: Target,
    /// The deployment of a rollout's operation (`""` for an apply without deployments).
    #[serde(default)]
    pub deployment: String,
    pub ddl: Vec<String>,
    /// The fingerprint of the change as checked at submit (`None` for applies stored before
    /// fingerprints existed).
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl ApplySpec {
    /// Where the change runs, as engines key it: the target, and the deployment if any.
    pub fn place(&self) -> String {
        if self.deployment.is_empty() {
            self.target.to_string()
        } else {
            format!("{}@{}", self.target, self.deployment)
        }
    }
}

/// An apply as read by its owner: the mutable row plus its spec (also what the loopback fake
/// engines receive).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyRecord {
    pub row: ApplySnapshot,
    pub spec: Arc<ApplySpec>,
}

/// The engine resume state persisted on the operation row, written in the same fenced write as
/// the state it accompanies. Branch names are derived from the apply, so flags suffice.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct ResumeState {
    /// The deterministic branch is ours (recorded before it is created).
    #[serde(default)]
    pub branch: bool,
    /// A deploy request may exist for the branch (recorded before it is created).
    #[serde(default)]
    pub deploy_request_intent: bool,
    /// The deploy request found or created for the branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_request_id: Option<u64>,
}

/// The apply row as the owner last read or wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ApplySnapshot {
    pub id: ApplyId,
    /// The operation row this snapshot drives (engines key their per-change state by it).
    #[serde(default)]
    pub operation: OperationId,
    pub engine: EngineKind,
    pub state: ApplyState,
    pub epoch: u64,
    pub attempt: u32,
    pub options: ApplyOptions,
    pub resume: ResumeState,
}

/// The result of a fenced write or a request completion, as the store reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteOutcome {
    Ok,
    /// 0 rows, and a re-read shows another epoch: the lease is gone.
    LeaseLost,
    /// The row no longer exists.
    RowGone,
    /// Re-activating the apply would give its target two active applies.
    TargetBusy,
    /// The store did not answer; nothing is known to have been written.
    Unavailable,
}

/// What the owner reads before each decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveInputs {
    pub record: ApplyRecord,
    pub controls: PendingControls,
    pub revert_window_expired: bool,
    /// The rollout's cutover gate is open for this operation (`rollout::cutover_gate`);
    /// always for the one operation of an apply without deployments.
    pub cutover_open: bool,
}
