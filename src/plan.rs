//! A submission plan: the TOML file `applyd submit --plan` reads. It names everything a
//! submission does and becomes the same `NewApply` the API takes as JSON, checked by the same
//! rules (`check`: `store::validate_new_apply` and, for a rollout, `RolloutPlan::operations`);
//! a plan that cannot be honoured is refused with a message naming its field, before anything
//! is written.
//!
//! ```toml
//! database = "shop"
//! environment = "production"
//! engine = "spirit"              # or "planetscale"
//! ddl = ["ALTER TABLE users ADD COLUMN nickname VARCHAR(64)"]
//! # ddl_file = "change.sql"     # statements split by the SQL tokenizer, after `ddl`
//! allow_destructive = false
//! defer_cutover = false
//! defer_deploy = false
//! skip_revert = false
//!
//! # A rollout: the change runs once per deployment, in this order. The keys below need
//! # `deployments`; without it the change runs once on the target.
//! deployments = ["us-east-1", "us-west-2", "eu-west-1"]
//! cutover_policy = "rolling"     # or "barrier", "parallel"
//! on_failure = "halt"            # or "continue", "pause" (held until `applyd release`)
//! max_drivers_per_apply = 1      # how many operations copy at once
//! table_steps = false            # true: one operation per table, in DDL order
//! ```

use std::path::{Path, PathBuf};

use crate::ddl::CheckedChange;
use crate::machine::rollout::{CutoverPolicy, OnFailure, RolloutPlan};
use crate::machine::{ApplyOptions, EngineKind};
use crate::store::{NewApply, StoreError, Target};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    database: String,
    environment: String,
    engine: EngineKind,
    #[serde(default)]
    ddl: Vec<String>,
    /// Relative to the plan file's directory.
    ddl_file: Option<PathBuf>,
    #[serde(default)]
    allow_destructive: bool,
    #[serde(default)]
    defer_cutover: bool,
    #[serde(default)]
    defer_deploy: bool,
    #[serde(default)]
    skip_revert: bool,
    // The rollout keys. Read as plain values so that a refusal can name the key and list what
    // it accepts, and so that a policy given without `deployments` is seen and refused.
    deployments: Option<Vec<String>>,
    cutover_policy: Option<String>,
    on_failure: Option<String>,
    max_drivers_per_apply: Option<i64>,
    table_steps: Option<bool>,
}

/// Why a plan file was refused; each names the file and, where there is one, the field.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: ddl_file {file}: {message}")]
    DdlFile {
        path: String,
        file: String,
        message: String,
    },
    #[error("{path}: ddl: the plan has no statements (give ddl = [\"ALTER TABLE ...\"] or ddl_file = \"change.sql\")")]
    NoDdl { path: String },
    #[error("{path}: {field}: {message}")]
    Field {
        path: String,
        field: &'static str,
        message: String,
    },
}

/// Read and parse the plan at `path` (its checks against the rules come after, with the API's).
pub fn read(path: &Path) -> Result<NewApply, PlanError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown, path.parent().unwrap_or(Path::new(".")))
}

/// Parse a plan's text; `shown` names it in messages, `dir` anchors a relative `ddl_file`.
pub fn parse(text: &str, shown: &str, dir: &Path) -> Result<NewApply, PlanError> {
    let plan: PlanFile = toml::from_str(text).map_err(|e| PlanError::Syntax {
        path: shown.to_string(),
        // toml's own wording names the field and the line; its message ends with a newline.
        message: e.to_string().trim_end().to_string(),
    })?;
    let rollout = rollout_of(&plan, shown)?;
    let mut ddl = plan.ddl;
    if let Some(file) = &plan.ddl_file {
        let full = dir.join(file);
        let fail = |message: String| PlanError::DdlFile {
            path: shown.to_string(),
            file: file.display().to_string(),
            message,
        };
        let script = std::fs::read_to_string(&full).map_err(|e| fail(e.to_string()))?;
        ddl.extend(crate::ddl::split_script(&script).map_err(|e| fail(e.to_string()))?);
    }
    if ddl.is_empty() {
        return Err(PlanError::NoDdl {
            path: shown.to_string(),
        });
    }
    Ok(NewApply {
        target: Target {
            database: plan.database,
            environment: plan.environment,
        },
        engine: plan.engine,
        ddl,
        options: ApplyOptions {
            defer_cutover: plan.defer_cutover,
            defer_deploy: plan.defer_deploy,
            skip_revert: plan.skip_revert,
        },
        allow_destructive: plan.allow_destructive,
        rollout,
    })
}

/// The plan's rollout, if it names deployments. Only the keys' shapes are checked here; what
/// the deployments and steps must satisfy is `RolloutPlan::operations`, run by [`check`].
fn rollout_of(plan: &PlanFile, shown: &str) -> Result<Option<RolloutPlan>, PlanError> {
    let refuse = |field: &'static str, message: String| PlanError::Field {
        path: shown.to_string(),
        field,
        message,
    };
    let Some(deployments) = plan.deployments.clone() else {
        let policy_keys = [
            ("cutover_policy", plan.cutover_policy.is_some()),
            ("on_failure", plan.on_failure.is_some()),
            (
                "max_drivers_per_apply",
                plan.max_drivers_per_apply.is_some(),
            ),
            ("table_steps", plan.table_steps.is_some()),
        ];
        if let Some((field, _)) = policy_keys.iter().find(|(_, given)| *given) {
            return Err(refuse(
                field,
                "only applies to a rollout: name its deployments too (deployments = [\"us-east-1\", ...])".into(),
            ));
        }
        return Ok(None);
    };
    let cutover_policy = match &plan.cutover_policy {
        None => CutoverPolicy::default(),
        Some(raw) => one_of(raw, &CutoverPolicy::ALL, |p| p.as_str()).ok_or_else(|| {
            refuse(
                "cutover_policy",
                not_one_of(raw, &CutoverPolicy::ALL, |p| p.as_str()),
            )
        })?,
    };
    let on_failure = match &plan.on_failure {
        None => OnFailure::default(),
        Some(raw) => one_of(raw, &OnFailure::ALL, |p| p.as_str()).ok_or_else(|| {
            refuse(
                "on_failure",
                not_one_of(raw, &OnFailure::ALL, |p| p.as_str()),
            )
        })?,
    };
    let max_drivers_per_apply = match plan.max_drivers_per_apply {
        None => 1,
        Some(n) => u32::try_from(n).map_err(|_| {
            refuse(
                "max_drivers_per_apply",
                format!("{n} is not a number of drivers (1 to {})", u32::MAX),
            )
        })?,
    };
    Ok(Some(RolloutPlan {
        deployments,
        cutover_policy,
        on_failure,
        max_drivers_per_apply,
        table_steps: plan.table_steps.unwrap_or(false),
    }))
}

fn one_of<T: Copy>(raw: &str, all: &[T], name: fn(T) -> &'static str) -> Option<T> {
    all.iter().copied().find(|v| name(*v) == raw)
}

fn not_one_of<T: Copy>(raw: &str, all: &[T], name: fn(T) -> &'static str) -> String {
    let allowed: Vec<&str> = all.iter().map(|v| name(*v)).collect();
    format!("{raw:?} is not one of {}", allowed.join(", "))
}

/// The checks a submission passes before anything is written, as the stores make them: the
/// target and the change (`store::validate_new_apply`) and, for a rollout, that its plan can be
/// honoured (`RolloutPlan::operations`, over the tables the statements touch). The CLI runs it
/// before opening the database, so a refusal reads the same whichever store is behind.
pub fn check(new: &NewApply) -> Result<CheckedChange, StoreError> {
    match &new.rollout {
        Some(plan) => crate::store::validate_rollout(new, plan).map(|(change, _)| change),
        None => crate::store::validate_new_apply(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_here(text: &str) -> Result<NewApply, String> {
        parse(text, "plan.toml", Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_whole_plan_becomes_the_submission() {
        let new = parse_here(
            "database = \"shop\"\nenvironment = \"production\"\nengine = \"planetscale\"\n\
             ddl = [\"ALTER TABLE users ADD COLUMN c INT\"]\ndefer_cutover = true\n",
        )
        .unwrap();
        assert_eq!(new.target.to_string(), "shop/production");
        assert_eq!(new.engine, EngineKind::PlanetScale);
        assert_eq!(new.ddl, vec!["ALTER TABLE users ADD COLUMN c INT"]);
        assert!(new.options.defer_cutover && !new.options.skip_revert && !new.allow_destructive);
    }

    #[test]
    fn refusals_name_the_field() {
        let base = "database = \"shop\"\nenvironment = \"p\"\nengine = \"spirit\"\n";
        let unknown = parse_here(&format!("{base}ddl = [\"x\"]\nregions = [\"a\"]\n"));
        assert!(
            unknown
                .as_ref()
                .unwrap_err()
                .contains("unknown field `regions`"),
            "{unknown:?}"
        );
        let engine = parse_here(
            "database = \"shop\"\nenvironment = \"p\"\nengine = \"vitess\"\nddl = [\"x\"]\n",
        );
        assert!(
            engine.as_ref().unwrap_err().contains("engine"),
            "{engine:?}"
        );
        let missing = parse_here("environment = \"p\"\nengine = \"spirit\"\nddl = [\"x\"]\n");
        assert!(
            missing
                .as_ref()
                .unwrap_err()
                .contains("missing field `database`"),
            "{missing:?}"
        );
        assert_eq!(
            parse_here(base).unwrap_err(),
            "plan.toml: ddl: the plan has no statements (give ddl = [\"ALTER TABLE ...\"] or ddl_file = \"change.sql\")"
        );
        let file = parse_here(&format!("{base}ddl_file = \"no-such-file.sql\"\n")).unwrap_err();
        assert!(
            file.starts_with("plan.toml: ddl_file no-such-file.sql: "),
            "{file}"
        );
    }

    const ROLLOUT_BASE: &str = "database = \"shop\"\nenvironment = \"production\"\n\
        engine = \"spirit\"\nddl = [\"ALTER TABLE users ADD COLUMN c INT\", \
        \"ALTER TABLE orders ADD COLUMN d INT\"]\n";

    /// A plan through parse and the submit checks, as `applyd submit --plan` runs it.
    fn submit_here(extra: &str) -> Result<NewApply, String> {
        let new = parse_here(&format!("{ROLLOUT_BASE}{extra}"))?;
        check(&new).map_err(|e| e.to_string())?;
        Ok(new)
    }

    #[test]
    fn a_plan_with_deployments_becomes_a_rollout() {
        let new = submit_here(
            "deployments = [\"us-east-1\", \"us-west-2\", \"eu-west-1\"]\n\
             cutover_policy = \"barrier\"\non_failure = \"pause\"\n\
             max_drivers_per_apply = 2\ntable_steps = true\ndefer_cutover = true\n",
        )
        .unwrap();
        assert_eq!(
            new.rollout,
            Some(RolloutPlan {
                deployments: vec!["us-east-1".into(), "us-west-2".into(), "eu-west-1".into()],
                cutover_policy: CutoverPolicy::Barrier,
                on_failure: OnFailure::Pause,
                max_drivers_per_apply: 2,
                table_steps: true,
            })
        );
        let defaults = submit_here("deployments = [\"a\"]\n").unwrap().rollout;
        assert_eq!(
            defaults,
            Some(RolloutPlan {
                deployments: vec!["a".into()],
                cutover_policy: CutoverPolicy::Rolling,
                on_failure: OnFailure::Halt,
                max_drivers_per_apply: 1,
                table_steps: false,
            })
        );
        assert_eq!(submit_here("").unwrap().rollout, None);
    }

    #[test]
    fn a_spirit_barrier_without_its_sentinel_is_refused_naming_the_policy() {
        let refused = submit_here("deployments = [\"a\", \"b\"]\ncutover_policy = \"barrier\"\n");
        let err = refused.expect_err("a Spirit barrier needs defer_cutover");
        assert!(
            err.contains("cutover_policy") && err.contains("defer_cutover"),
            "{err}"
        );
    }

    #[test]
    fn a_policy_without_deployments_is_refused_naming_the_key() {
        for (key, value) in [
            ("cutover_policy", "\"rolling\""),
            ("on_failure", "\"halt\""),
            ("max_drivers_per_apply", "1"),
            ("table_steps", "false"),
        ] {
            let e = submit_here(&format!("{key} = {value}\n")).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "plan.toml: {key}: only applies to a rollout: name its deployments too \
                     (deployments = [\"us-east-1\", ...])"
                )
            );
        }
    }

    #[test]
    fn an_unknown_policy_is_refused_with_the_values_allowed() {
        let e = submit_here("deployments = [\"a\"]\ncutover_policy = \"sideways\"\n").unwrap_err();
        assert_eq!(
            e,
            "plan.toml: cutover_policy: \"sideways\" is not one of rolling, barrier, parallel"
        );
        let e = submit_here("deployments = [\"a\"]\non_failure = \"retry\"\n").unwrap_err();
        assert_eq!(
            e,
            "plan.toml: on_failure: \"retry\" is not one of halt, continue, pause"
        );
        let e = submit_here("deployments = [\"a\"]\nmax_drivers_per_apply = -1\n").unwrap_err();
        assert!(
            e.starts_with("plan.toml: max_drivers_per_apply: -1 is not a number of drivers"),
            "{e}"
        );
        let e = submit_here("deployments = [\"a\"]\ntable_steps = \"yes\"\n").unwrap_err();
        assert!(e.contains("table_steps"), "{e}");
        let e = submit_here("deployments = \"a\"\n").unwrap_err();
        assert!(e.contains("deployments"), "{e}");
    }

    #[test]
    fn a_rollout_that_cannot_be_honoured_is_refused_at_submit_naming_the_field() {
        let refusal = |extra: &str| submit_here(extra).unwrap_err();
        assert_eq!(
            refusal("deployments = [\"a\", \"a\"]\n"),
            "invalid deployments: deployment \"a\" is named twice"
        );
        assert_eq!(
            refusal("deployments = []\n"),
            "invalid deployments: the plan names no deployment"
        );
        assert!(
            refusal("deployments = [\" a\"]\n").starts_with("invalid deployments: "),
            "a padded name"
        );
        assert_eq!(
            refusal("deployments = [\"a\"]\nmax_drivers_per_apply = 0\n"),
            "invalid max_drivers_per_apply: must be at least 1 (it caps how many operations copy at once)"
        );
        let many: Vec<String> = (0..200).map(|i| format!("\"d{i}\"")).collect();
        assert!(refusal(&format!(
            "deployments = [{}]\ntable_steps = true\n",
            many.join(", ")
        ))
        .starts_with("invalid deployments: 400 operations"));
    }
}
