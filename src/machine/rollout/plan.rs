//! A rollout as submitted: its deployments in order, its policies, and whether it runs table by
//! table; and the operations it becomes. A plan that cannot be honoured is refused here, naming
//! the field, before anything is written.

use super::{CutoverPolicy, OnFailure, RolloutPolicy};
use crate::machine::{ApplyOptions, EngineKind};

/// The rollout part of a submission.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// In rollout order.
    pub deployments: Vec<String>,
    #[serde(default)]
    pub cutover_policy: CutoverPolicy,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default = "RolloutPlan::default_max_drivers")]
    pub max_drivers_per_apply: u32,
    /// One operation per table of the change, in DDL order, within each deployment.
    #[serde(default)]
    pub table_steps: bool,
}

/// The longest deployment name (the store's column width).
pub const MAX_DEPLOYMENT: usize = 64;
/// The most operations one rollout may have.
pub const MAX_OPERATIONS: usize = 256;

/// One operation a plan becomes: its deployment, its step, and which statements it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOperation {
    pub deployment: String,
    /// The deployment's position in the plan.
    pub deployment_index: u32,
    pub step: u32,
    /// Indexes into the change's statements.
    pub statements: Vec<usize>,
}

impl PlannedOperation {
    /// The operation's identifier, unique to it: branch names and engine runs derive from it,
    /// so only letters, digits and dashes (`apply-7-d2`, `apply-7-d2-s1` for a table step).
    pub fn identifier(&self, apply: &str, table_steps: bool) -> String {
        if table_steps {
            format!("{apply}-d{}-s{}", self.deployment_index + 1, self.step + 1)
        } else {
            format!("{apply}-d{}", self.deployment_index + 1)
        }
    }
}

/// Why a plan was refused: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanRefusal {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> PlanRefusal {
    PlanRefusal {
        field,
        message: message.into(),
    }
}

impl RolloutPlan {
    fn default_max_drivers() -> u32 {
        1
    }

    /// Whether `engine` can honour the cutover policy. Spirit cuts over by itself unless it
    /// waits on its sentinel, which it does only with `defer_cutover`: without it nothing could
    /// hold a Spirit operation at the gate, so only `rolling` (one operation at a time) orders
    /// its cutovers.
    pub fn check_engine(
        &self,
        engine: EngineKind,
        options: &ApplyOptions,
    ) -> Result<(), PlanRefusal> {
        if engine == EngineKind::Spirit
            && self.cutover_policy != CutoverPolicy::Rolling
            && !options.defer_cutover
        {
            return Err(refuse(
                "cutover_policy",
                format!(
                    "a Spirit rollout cuts over by itself unless defer_cutover is set, so {} \
                     cannot order its cutovers: use rolling, or defer_cutover = true",
                    self.cutover_policy.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// The policy the rules read (the release latch starts unset).
    pub fn policy(&self) -> RolloutPolicy {
        RolloutPolicy {
            cutover: self.cutover_policy,
            on_failure: self.on_failure,
            max_drivers: self.max_drivers_per_apply,
            released: false,
            held: false,
        }
    }

    /// The operations of the plan in rollout order, given the table each statement of the
    /// change touches (`None` when a statement names no single table).
    pub fn operations(
        &self,
        tables: &[Option<String>],
    ) -> Result<Vec<PlannedOperation>, PlanRefusal> {
        if self.deployments.is_empty() {
            return Err(refuse("deployments", "the plan names no deployment"));
        }
        for (i, d) in self.deployments.iter().enumerate() {
            if d.trim().is_empty() || d.trim() != d {
                return Err(refuse(
                    "deployments",
                    format!("deployment #{} has an empty or padded name {d:?}", i + 1),
                ));
            }
            if d.len() > MAX_DEPLOYMENT || d.chars().any(char::is_control) {
                return Err(refuse(
                    "deployments",
                    format!("deployment {d:?} is longer than {MAX_DEPLOYMENT} bytes or has control characters"),
                ));
            }
            if self.deployments[..i].contains(d) {
                return Err(refuse(
                    "deployments",
                    format!("deployment {d:?} is named twice"),
                ));
            }
        }
        if self.max_drivers_per_apply == 0 {
            return Err(refuse(
                "max_drivers_per_apply",
                "must be at least 1 (it caps how many operations copy at once)",
            ));
        }
        if tables.is_empty() {
            return Err(refuse("ddl", "the change has no statements"));
        }
        let steps: Vec<Vec<usize>> = if self.table_steps {
            let mut order: Vec<&str> = Vec::new();
            let mut steps: Vec<Vec<usize>> = Vec::new();
            for (i, t) in tables.iter().enumerate() {
                let Some(t) = t.as_deref() else {
                    return Err(refuse(
                        "table_steps",
                        format!(
                            "statement #{} names no single table, so it has no step",
                            i + 1
                        ),
                    ));
                };
                match order.iter().position(|o| *o == t) {
                    Some(k) => steps[k].push(i),
                    None => {
                        order.push(t);
                        steps.push(vec![i]);
                    }
                }
            }
            steps
        } else {
            vec![(0..tables.len()).collect()]
        };
        let total = self.deployments.len() * steps.len();
        if total > MAX_OPERATIONS {
            return Err(refuse(
                "deployments",
                format!("{total} operations; a rollout may have at most {MAX_OPERATIONS}"),
            ));
        }
        let mut out = Vec::with_capacity(total);
        for (d, name) in self.deployments.iter().enumerate() {
            for (k, statements) in steps.iter().enumerate() {
                out.push(PlannedOperation {
                    deployment: name.clone(),
                    deployment_index: d as u32,
                    step: k as u32,
                    statements: statements.clone(),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(deployments: &[&str], table_steps: bool) -> RolloutPlan {
        RolloutPlan {
            deployments: deployments.iter().map(|d| d.to_string()).collect(),
            cutover_policy: CutoverPolicy::Rolling,
            on_failure: OnFailure::Halt,
            max_drivers_per_apply: 1,
            table_steps,
        }
    }

    fn tables(names: &[&str]) -> Vec<Option<String>> {
        names.iter().map(|t| Some(t.to_string())).collect()
    }

    #[test]
    fn a_plan_becomes_one_operation_per_deployment_and_table_step() {
        let ops = plan(&["us-east-1", "eu-west-1"], true)
            .operations(&tables(&["users", "orders", "users"]))
            .unwrap();
        let shape: Vec<(&str, u32, Vec<usize>)> = ops
            .iter()
            .map(|o| (o.deployment.as_str(), o.step, o.statements.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("us-east-1", 0, vec![0, 2]),
                ("us-east-1", 1, vec![1]),
                ("eu-west-1", 0, vec![0, 2]),
                ("eu-west-1", 1, vec![1]),
            ]
        );
        let whole = plan(&["a"], false)
            .operations(&tables(&["t", "u"]))
            .unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].statements, vec![0, 1]);
    }

    #[test]
    fn a_plan_that_cannot_be_honoured_names_its_field() {
        let t = tables(&["users"]);
        let field = |p: RolloutPlan, t: &[Option<String>]| p.operations(t).unwrap_err().field;
        assert_eq!(field(plan(&[], false), &t), "deployments");
        assert_eq!(field(plan(&["a", "a"], false), &t), "deployments");
        assert_eq!(field(plan(&[" a"], false), &t), "deployments");
        assert_eq!(field(plan(&["a"], false), &[]), "ddl");
        assert_eq!(field(plan(&["a"], true), &[None]), "table_steps");
        let mut p = plan(&["a"], false);
        p.max_drivers_per_apply = 0;
        assert_eq!(field(p, &t), "max_drivers_per_apply");
    }

    #[test]
    fn an_unknown_policy_is_refused_naming_the_field() {
        let e = serde_json::from_str::<RolloutPlan>(
            r#"{"deployments": ["a"], "cutover_policy": "sideways"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sideways") && e.contains("rolling"), "{e}");
        let e =
            serde_json::from_str::<RolloutPlan>(r#"{"deployments": ["a"], "on_failure": "retry"}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("retry") && e.contains("halt"), "{e}");
    }

    #[test]
    fn a_spirit_rollout_orders_cutovers_only_when_it_can_hold_them() {
        let mut p = plan(&["a", "b"], false);
        let hold = ApplyOptions {
            defer_cutover: true,
            ..ApplyOptions::default()
        };
        for cutover in [CutoverPolicy::Barrier, CutoverPolicy::Parallel] {
            p.cutover_policy = cutover;
            let refused = p.check_engine(EngineKind::Spirit, &ApplyOptions::default());
            assert_eq!(refused.map_err(|r| r.field), Err("cutover_policy"));
            assert!(p.check_engine(EngineKind::Spirit, &hold).is_ok());
            assert!(p
                .check_engine(EngineKind::PlanetScale, &ApplyOptions::default())
                .is_ok());
        }
        p.cutover_policy = CutoverPolicy::Rolling;
        assert!(p
            .check_engine(EngineKind::Spirit, &ApplyOptions::default())
            .is_ok());
    }
}
