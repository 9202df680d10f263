//! PlanetScale deploy-request states as the API spells them, and their mapping to the engine
//! states of the rules (reference §3.3). Shared by the real client and the fake.

use crate::machine::{EngineState, UnknownName};

macro_rules! dr_states {
    ($( $v:ident => $s:literal ),+ $(,)?) => {
        /// A deploy request's `deployment_state`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum DeployState { $( $v ),+ }
        impl DeployState {
            pub const ALL: &'static [DeployState] = &[ $( DeployState::$v ),+ ];
            pub const fn as_str(self) -> &'static str { match self { $( DeployState::$v => $s ),+ } }
        }
        impl std::str::FromStr for DeployState {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $( $s => Ok(DeployState::$v), )+
                    _ => Err(UnknownName {
                        kind: "deploy request state",
                        value: s.to_string(),
                        expected: [$( $s ),+].join(", "),
                    }),
                }
            }
        }
    };
}

dr_states! {
    Pending => "pending",
    Ready => "ready",
    NoChanges => "no_changes",
    Queued => "queued",
    Submitting => "submitting",
    InProgress => "in_progress",
    InProgressVschema => "in_progress_vschema",
    PendingCutover => "pending_cutover",
    InProgressCutover => "in_progress_cutover",
    CompletePendingRevert => "complete_pending_revert",
    InProgressRevert => "in_progress_revert",
    InProgressRevertVschema => "in_progress_revert_vschema",
    Complete => "complete",
    CompleteRevert => "complete_revert",
    Error => "error",
    CompleteError => "complete_error",
    Failed => "failed",
    CompleteRevertError => "complete_revert_error",
    InProgressCancel => "in_progress_cancel",
    CompleteCancel => "complete_cancel",
    Cancelled => "cancelled",
}

impl DeployState {
    /// The engine state the rules see for this deploy-request state; `None` for
    /// `in_progress_cancel`, which is transitional: it resolves to `complete_cancel` on its
    /// own, and until then the deploy may still be running, so it is no answer yet.
    pub const fn engine_state(self) -> Option<EngineState> {
        use DeployState as D;
        Some(match self {
            D::Pending => EngineState::Pending,
            D::Ready => EngineState::WaitingForDeploy,
            D::Queued | D::Submitting | D::InProgress | D::InProgressVschema => {
                EngineState::Running
            }
            D::PendingCutover => EngineState::WaitingForCutover,
            D::InProgressCutover => EngineState::CuttingOver,
            D::CompletePendingRevert => EngineState::RevertWindow,
            D::InProgressRevert | D::InProgressRevertVschema => EngineState::Reverting,
            D::Complete | D::NoChanges => EngineState::Completed,
            D::CompleteRevert => EngineState::Reverted,
            D::Error | D::CompleteError | D::Failed | D::CompleteRevertError => EngineState::Failed,
            D::CompleteCancel | D::Cancelled => EngineState::Cancelled,
            D::InProgressCancel => return None,
        })
    }

    /// What a failed state means for the user, beyond its name.
    pub const fn failure_meaning(self) -> Option<&'static str> {
        use DeployState as D;
        match self {
            D::CompleteRevertError => Some(
                "the revert failed, so the change is probably still live on the production \
                 branch; check the schema there before anything else",
            ),
            D::CompleteError => Some(
                "the deployment completed with an error; check the schema on the production \
                 branch before retrying",
            ),
            D::Error | D::Failed => {
                Some("the deployment failed; the deploy request's page says why")
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_deploy_state_round_trips_and_maps() {
        for d in DeployState::ALL {
            assert_eq!(d.as_str().parse::<DeployState>().unwrap(), *d);
            // Only the transitional cancel is no answer.
            assert_eq!(
                d.engine_state().is_none(),
                *d == DeployState::InProgressCancel,
                "{d:?}"
            );
            assert_eq!(
                d.failure_meaning().is_some(),
                d.engine_state() == Some(EngineState::Failed),
                "{d:?}"
            );
        }
        let err = "exploded".parse::<DeployState>().unwrap_err();
        assert!(err.to_string().contains("exploded"));
    }
}
