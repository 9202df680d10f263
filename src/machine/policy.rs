//! Policies read off the table: when an apply has settled, which options change the rows that
//! fire, and which probe observes a state.

use super::claim::{shipped_class, ClaimClass};
use super::states::{ApplyState, ApplyState::*, EngineKind};
use super::table::{PS_WITH_DEPLOY_REQUEST, SPIRIT_LIVE};
use super::vocabulary::Probe;
use super::waits::is_human_wait;

/// Whether an apply has settled: terminal, or resting in an explicit human wait.
pub fn is_settled(state: ApplyState, options: &ApplyOptions) -> bool {
    shipped_class(state) == ClaimClass::Terminal || is_human_wait(state, options)
}

/// The user's options on an apply that change which rows fire.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct ApplyOptions {
    #[serde(default)]
    pub defer_deploy: bool,
    #[serde(default)]
    pub defer_cutover: bool,
    #[serde(default)]
    pub skip_revert: bool,
}

/// The read-only query that observes an apply in a state, if the state is observed at all.
pub fn probe_for(engine: EngineKind, state: ApplyState) -> Option<Probe> {
    match (engine, state) {
        (EngineKind::PlanetScale, PreparingBranch) => Some(Probe::GetBranch),
        (EngineKind::PlanetScale, ApplyingBranchChanges) => Some(Probe::DiffBranch),
        (EngineKind::PlanetScale, ValidatingBranch) => Some(Probe::ValidateBranch),
        (EngineKind::PlanetScale, CreatingDeployRequest) => Some(Probe::FindDeployRequest),
        (EngineKind::PlanetScale, s) if PS_WITH_DEPLOY_REQUEST.contains(&s) => {
            Some(Probe::GetDeployRequest)
        }
        (EngineKind::Spirit, s) if SPIRIT_LIVE.contains(&s) || s == FailedRetryable => {
            Some(Probe::RunnerStatus)
        }
        _ => None,
    }
}
