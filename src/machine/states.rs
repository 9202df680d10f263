//! Every state, operation and engine name exactly as it is stored in the database.
//!
//! Strings read from the database go through `FromStr`; an unknown string is an
//! [`UnknownName`] error that names the kind and the value, never a panic or a silent default.

use std::fmt;
use std::str::FromStr;

/// A string read from the database, an API body or a config file that names no known value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of: {expected})")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
    pub expected: String,
}

macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)?
        }
        $( aliases { $( $alias:literal => $target:ident ),* } )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant ),+ ];

            /// Older spellings still read from the database, with the value each stands for.
            pub const ALIASES: &'static [(&'static str, $name)] =
                &[ $( $( ($alias, $name::$target) ),* )? ];

            /// The exact string stored in the database.
            pub const fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text ),+ }
            }

            /// Dense index in `ALL`, for bitsets and arrays.
            pub const fn index(self) -> usize {
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    $( $( $alias => Ok($name::$target), )* )?
                    _ => Err(UnknownName {
                        kind: $kind,
                        value: s.to_string(),
                        expected: [$( $text ),+].join(", "),
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

named_enum! {
    /// The state of an apply (and, with the same vocabulary, of its operation row).
    ApplyState, "apply state" {
        Pending => "pending",
        Running => "running",
        RunningDegraded => "running_degraded",
        Paused => "paused",
        Resuming => "resuming",
        WaitingForDeploy => "waiting_for_deploy",
        WaitingForCutover => "waiting_for_cutover",
        Recovering => "recovering",
        CuttingOver => "cutting_over",
        RevertWindow => "revert_window",
        SkippingRevert => "skipping_revert",
        Reverting => "reverting",
        Completed => "completed",
        Failed => "failed",
        FailedRetryable => "failed_retryable",
        Stopped => "stopped",
        Cancelled => "cancelled",
        Reverted => "reverted",
        PreparingBranch => "preparing_branch",
        ApplyingBranchChanges => "applying_branch_changes",
        ValidatingBranch => "validating_branch",
        CreatingDeployRequest => "creating_deploy_request",
        ValidatingDeployRequest => "validating_deploy_request",
    }
    aliases { "recovering_cutover" => Recovering }
}

/// Operation rows share the apply vocabulary.
pub type OperationState = ApplyState;

named_enum! {
    /// The state of a per-table task row.
    TaskState, "task state" {
        Pending => "pending",
        Running => "running",
        Checksumming => "checksumming",
        WaitingForDeploy => "waiting_for_deploy",
        WaitingForCutover => "waiting_for_cutover",
        Recovering => "recovering",
        CuttingOver => "cutting_over",
        RevertWindow => "revert_window",
        Reverting => "reverting",
        Completed => "completed",
        Failed => "failed",
        FailedRetryable => "failed_retryable",
        Stopped => "stopped",
        Reverted => "reverted",
        Cancelled => "cancelled",
    }
}

named_enum! {
    /// A durable user intent on an apply.
    ControlOp, "control operation" {
        Start => "start",
        Stop => "stop",
        Cancel => "cancel",
        Cutover => "cutover",
        Revert => "revert",
        SkipRevert => "skip_revert",
        Release => "release",
        Volume => "volume",
    }
}

named_enum! {
    /// Lifecycle of one control request row.
    ControlStatus, "control request status" {
        Pending => "pending",
        Completed => "completed",
        Failed => "failed",
    }
}

named_enum! {
    /// The engine that executes an apply.
    EngineKind, "engine" {
        PlanetScale => "planetscale",
        Spirit => "spirit",
    }
}

named_enum! {
    /// What an engine reports about the work of one apply, normalised across engines.
    EngineState, "engine state" {
        Pending => "pending",
        Running => "running",
        WaitingForDeploy => "waiting_for_deploy",
        WaitingForCutover => "waiting_for_cutover",
        CuttingOver => "cutting_over",
        RevertWindow => "revert_window",
        Reverting => "reverting",
        Completed => "completed",
        Failed => "failed",
        Stopped => "stopped",
        Cancelled => "cancelled",
        Reverted => "reverted",
    }
}

impl ApplyState {
    /// The states an apply fails into: a move into one is written with its reason.
    pub const fn is_failure(self) -> bool {
        matches!(self, ApplyState::Failed | ApplyState::FailedRetryable)
    }

    /// The states a move into is written with its reason: the failed ones, and `paused`, where
    /// an engine holds an apply for a person (who must read why).
    pub const fn is_written_with_reason(self) -> bool {
        self.is_failure() || matches!(self, ApplyState::Paused)
    }
}

impl TaskState {
    /// Task terminal states: `stopped` and `failed_retryable` are resumable, hence not terminal.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Reverted | TaskState::Cancelled
        )
    }

    /// The failed task states: the ones that carry the reason of their apply's failure.
    pub const fn is_failure(self) -> bool {
        matches!(self, TaskState::Failed | TaskState::FailedRetryable)
    }

    /// The failed task states as an SQL list (`'failed', 'failed_retryable'`).
    pub fn failure_sql_list() -> String {
        TaskState::ALL
            .iter()
            .filter(|s| s.is_failure())
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ControlStatus {
    pub const fn is_finished(self) -> bool {
        !matches!(self, ControlStatus::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(all: &[T])
    where
        T: Copy + fmt::Debug + PartialEq + FromStr<Err = UnknownName> + fmt::Display,
    {
        for v in all {
            assert_eq!(v.to_string().parse::<T>().unwrap(), *v);
        }
        let err = "no_such_thing".parse::<T>().unwrap_err();
        assert_eq!(err.value, "no_such_thing");
        assert!(err.to_string().contains("no_such_thing"));
    }

    #[test]
    fn the_failed_task_states_are_one_list() {
        assert_eq!(
            TaskState::failure_sql_list(),
            "'failed', 'failed_retryable'"
        );
        for s in TaskState::ALL {
            assert_eq!(
                s.is_failure(),
                matches!(s, TaskState::Failed | TaskState::FailedRetryable)
            );
        }
    }

    #[test]
    fn every_name_round_trips_and_unknown_names_are_errors() {
        round_trip(ApplyState::ALL);
        round_trip(TaskState::ALL);
        round_trip(ControlOp::ALL);
        round_trip(ControlStatus::ALL);
        round_trip(EngineKind::ALL);
        round_trip(EngineState::ALL);
    }

    #[test]
    fn there_are_twenty_three_apply_states_and_the_legacy_alias_reads_as_recovering() {
        assert_eq!(ApplyState::ALL.len(), 23);
        assert_eq!(
            "recovering_cutover".parse::<ApplyState>(),
            Ok(ApplyState::Recovering)
        );
        assert_eq!(ApplyState::Recovering.as_str(), "recovering");
        for (i, s) in ApplyState::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }

    #[test]
    fn serde_uses_the_database_strings() {
        let json = serde_json::to_string(&ApplyState::WaitingForCutover).unwrap();
        assert_eq!(json, "\"waiting_for_cutover\"");
        let bad = serde_json::from_str::<ApplyState>("\"bogus\"").unwrap_err();
        assert!(bad.to_string().contains("bogus"));
    }
}
