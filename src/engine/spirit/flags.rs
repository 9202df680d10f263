//! Whether the installed Spirit takes every flag the adapter passes, read from its
//! `spirit migrate --help`. Spirit's flags changed between releases (`pkg/migration/
//! migration.go`): `--conf` exists from v0.10.1, `--checkpoint-max-age` from v0.13.0, and main
//! dropped `--target-chunk-time` after v0.16.0; an unknown flag makes Spirit exit 80 (v0.16+)
//! or 1 — every apply would fail, so `check-config` says so first.

use std::collections::BTreeSet;

use super::process::migrate_args;
use super::SpiritConfig;

/// The `--flags` a help text names.
fn flags_in(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| f.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-')))
        .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(|f| format!("--{f}"))
        .collect()
}

/// Every flag a run may pass under this configuration (a deferred cutover included).
pub fn passed(cfg: &SpiritConfig) -> Vec<String> {
    migrate_args(
        cfg,
        &cfg.default_endpoint(),
        std::path::Path::new("conf"),
        "db",
        "stmt",
        true,
    )
    .into_iter()
    .filter_map(|a| a.into_string().ok())
    .filter(|a| a.starts_with("--"))
    .collect()
}

/// What `migrate --help` implies for this configuration: a summary, or the flags missing.
pub fn check_help(help: &str, cfg: &SpiritConfig) -> Result<String, String> {
    let known = flags_in(help);
    let missing: Vec<String> = passed(cfg)
        .into_iter()
        .filter(|f| !known.contains(f))
        .collect();
    if !missing.is_empty() {
        let hint = if missing.iter().any(|f| f == "--target-chunk-time") {
            " (this Spirit has no --target-chunk-time: remove engines.spirit.target_chunk_time)"
        } else if missing.iter().any(|f| f == "--conf") {
            " (--conf needs Spirit v0.10.1 or later)"
        } else {
            ""
        };
        return Err(format!(
            "spirit migrate does not take {}{hint}; every run would fail",
            missing.join(", ")
        ));
    }
    let mut said = vec![format!(
        "takes every flag applyd passes ({})",
        passed(cfg).len()
    )];
    if known.contains("--checkpoint-max-age") {
        said.push(
            "resumes only from checkpoints younger than --checkpoint-max-age (v0.13+)".into(),
        );
    }
    if !known.contains("--target-chunk-time") {
        said.push("no --target-chunk-time (a release after v0.16.0)".into());
    }
    Ok(said.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cfg(chunk_time: Option<&str>) -> SpiritConfig {
        SpiritConfig {
            binary: "spirit".into(),
            host: "h".into(),
            port: 3306,
            hosts: Default::default(),
            username: "u".into(),
            password: Secret::new("p"),
            threads: 4,
            target_chunk_time: chunk_time.map(str::to_string),
            stop_timeout: std::time::Duration::from_secs(1),
            env: Vec::new(),
        }
    }

    const MAIN_HELP: &str = "Usage: spirit migrate --statement=STRING [flags]\n\nFlags:\n  -h, --help  Show context-sensitive help.\n      --host=\"127.0.0.1:3306\"  Hostname\n      --username=\"spirit\"\n      --password=PASSWORD\n      --database=\"test\"\n      --conf=CONF\n      --threads=4\n      --statement=STRING\n      --defer-cutover\n      --checkpoint-max-age=168h\n";

    #[test]
    fn a_help_text_with_every_flag_passes_and_says_what_it_implies() {
        let said = check_help(MAIN_HELP, &cfg(None)).unwrap();
        assert!(said.contains("--checkpoint-max-age"), "{said}");
        assert!(said.contains("no --target-chunk-time"), "{said}");
    }

    #[test]
    fn a_flag_this_spirit_lacks_is_named() {
        let e = check_help(MAIN_HELP, &cfg(Some("500ms"))).unwrap_err();
        assert!(e.contains("--target-chunk-time"), "{e}");
        let old = MAIN_HELP.replace("--conf=CONF", "");
        let e = check_help(&old, &cfg(None)).unwrap_err();
        assert!(e.contains("--conf") && e.contains("v0.10.1"), "{e}");
    }
}
