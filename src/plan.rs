//! A submission plan: the TOML file `applyd submit --plan` reads. It names everything a
//! submission does and becomes the same `NewApply` the API takes as JSON, checked by the same
//! rules (`store::validate_new_apply`); a plan that cannot be honoured is refused with a message
//! naming its field, before anything is written.
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
//! ```

use std::path::{Path, PathBuf};

use crate::machine::{ApplyOptions, EngineKind};
use crate::store::{NewApply, Target};

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
        rollout: None,
    })
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
        let unknown = parse_here(&format!(
            "{base}ddl = [\"x\"]\ncutover_policy = \"rolling\"\n"
        ));
        assert!(
            unknown
                .as_ref()
                .unwrap_err()
                .contains("unknown field `cutover_policy`"),
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
}
