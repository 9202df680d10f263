//! Configuration: a TOML file, then environment overrides. Secrets may come from the file, the
//! environment or a file path, and never appear in logs, errors or `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::machine::Params;
use crate::store::ClaimPath;

pub mod webhooks;
pub use webhooks::{WebhookEndpoint, WebhooksSection};

/// A secret string: printed as `***` everywhere.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Where a secret comes from in the file: inline, or the path of a file holding it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub value: Option<Secret>,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorSection {
    pub drivers: usize,
    pub poll_interval_ms: u64,
    pub backoff_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub stale_after_ms: u64,
    pub presumed_loss_ms: u64,
    pub retry_budget: u32,
    pub retry_freshness_ms: u64,
    pub shutdown_deadline_ms: u64,
    pub revert_window_ms: u64,
    /// How long a parked wait rests before the engine is looked at again (a request wakes it
    /// at once).
    pub park_poll_ms: u64,
    /// Lease owner prefix; defaults to `<hostname>/<pid>`.
    pub owner: Option<String>,
    /// Which claim the drivers make: `operation` (the operation-level arms, then the apply-level
    /// arms they lack) or `apply` (the apply-level arms only).
    pub claim_path: ClaimPath,
}

impl Default for OperatorSection {
    fn default() -> Self {
        OperatorSection {
            drivers: 4,
            poll_interval_ms: 2_000,
            backoff_ms: 5_000,
            heartbeat_interval_ms: 10_000,
            stale_after_ms: Params::DEFAULT.stale_after_ms,
            presumed_loss_ms: Params::DEFAULT.presumed_loss_ms,
            retry_budget: Params::DEFAULT.retry_budget,
            retry_freshness_ms: Params::DEFAULT.retry_freshness_ms,
            shutdown_deadline_ms: 20_000,
            revert_window_ms: Params::DEFAULT.revert_window_ms,
            park_poll_ms: Params::DEFAULT.park_poll_ms,
            owner: None,
            claim_path: ClaimPath::default(),
        }
    }
}

impl OperatorSection {
    pub fn params(&self) -> Params {
        Params {
            stale_after_ms: self.stale_after_ms,
            presumed_loss_ms: self.presumed_loss_ms,
            retry_budget: self.retry_budget,
            retry_freshness_ms: self.retry_freshness_ms,
            revert_window_ms: self.revert_window_ms,
            park_poll_ms: self.park_poll_ms,
        }
    }
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub listen: String,
    pub token: SecretSource,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: "127.0.0.1:8080".into(),
            token: SecretSource::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Which engines `serve` drives.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EnginesSection {
    /// `fake` runs the in-process fakes (trials and tests); `remote-fake` talks to a fake
    /// engine server (`applyd fake-engines`: the real PlanetScale client against its copy of the
    /// API, and its fake Spirit); `real` uses the PlanetScale and Spirit sections.
    pub kind: EngineMode,
    pub remote_fake_url: Option<String>,
    /// This process's host id for the remote fake (runners die with it).
    pub remote_fake_host: Option<u32>,
    /// `[engines.planetscale]`: the PlanetScale API (used when `kind = "real"`).
    pub planetscale: Option<PlanetScaleSection>,
    /// `[engines.spirit]`: the Spirit binary and the MySQL targets (used when `kind = "real"`).
    pub spirit: Option<SpiritSection>,
}

/// The PlanetScale API and the service token that authenticates against it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanetScaleSection {
    pub organization: String,
    /// The PlanetScale database; defaults to each apply's target database.
    pub database: Option<String>,
    #[serde(default = "PlanetScaleSection::default_api_url")]
    pub api_url: String,
    /// The branch deploy requests merge into.
    #[serde(default = "PlanetScaleSection::default_into_branch")]
    pub into_branch: String,
    pub service_token_id: String,
    pub service_token: SecretSource,
    #[serde(default = "PlanetScaleSection::default_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Attempts of one call on transient errors (5xx, timeouts, connection errors).
    #[serde(default = "PlanetScaleSection::default_attempts")]
    pub attempts: u32,
    #[serde(default = "PlanetScaleSection::default_backoff_ms")]
    pub backoff_ms: u64,
}

impl PlanetScaleSection {
    fn default_api_url() -> String {
        "https://api.planetscale.com/v1".into()
    }
    fn default_into_branch() -> String {
        "main".into()
    }
    fn default_timeout_ms() -> u64 {
        10_000
    }
    fn default_attempts() -> u32 {
        4
    }
    fn default_backoff_ms() -> u64 {
        250
    }
    pub fn service_token(&self) -> Result<Secret, ConfigError> {
        resolve(&self.service_token, "engines.planetscale.service_token")
    }
}

/// The `spirit` binary and how it reaches the MySQL targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpiritSection {
    pub binary: PathBuf,
    /// The server of every environment `hosts` does not name.
    pub host: String,
    #[serde(default = "SpiritSection::default_port")]
    pub port: u16,
    /// The server of an environment (key `production`), or of one deployment of a rollout
    /// (key `production/us-east-1`), as `host` or `host:port`.
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, String>,
    pub username: String,
    /// Handed to Spirit in a private `--conf` file, never on its command line.
    pub password: Option<SecretSource>,
    #[serde(default = "SpiritSection::default_threads")]
    pub threads: u32,
    /// Passed as `--target-chunk-time` when set (Spirit releases that still have the flag).
    pub target_chunk_time: Option<String>,
    /// How long a stopped runner may take to exit (Spirit ends at once on SIGTERM) before it is
    /// killed.
    #[serde(default = "SpiritSection::default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
}

impl SpiritSection {
    fn default_port() -> u16 {
        3306
    }
    fn default_threads() -> u32 {
        4
    }
    fn default_stop_timeout_ms() -> u64 {
        60_000
    }
    pub fn password(&self) -> Result<Secret, ConfigError> {
        match &self.password {
            None => Ok(Secret::default()),
            Some(s) => resolve(s, "engines.spirit.password"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EngineMode {
    #[default]
    Fake,
    RemoteFake,
    Real,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database_url: Option<SecretSource>,
    pub operator: OperatorSection,
    pub api: ApiSection,
    pub log: LogSection,
    pub engines: EnginesSection,
    pub webhooks: WebhooksSection,
}

/// Everything that can be wrong with a configuration, said plainly.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("cannot read secret file {path} for {what}: {source}")]
    SecretFile {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: set either `value` or `file`, not both")]
    SecretBoth { what: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Read the file (if any), then apply `APPLYD_*` environment overrides, then validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.into(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.into(),
                    message: e.to_string(),
                })?
            }
        };
        if let Some(url) = env("APPLYD_DATABASE_URL") {
            config.database_url = Some(SecretSource {
                value: Some(Secret::new(url)),
                file: None,
            });
        }
        if let Some(token) = env("APPLYD_API_TOKEN") {
            config.api.token = SecretSource {
                value: Some(Secret::new(token)),
                file: None,
            };
        }
        if let Some(listen) = env("APPLYD_API_LISTEN") {
            config.api.listen = listen;
        }
        if let Some(owner) = env("APPLYD_OWNER") {
            config.operator.owner = Some(owner);
        }
        let number = |name: &'static str| -> Result<Option<u64>, ConfigError> {
            env(name)
                .map(|v| {
                    v.parse::<u64>().map_err(|e| ConfigError::Env {
                        name,
                        message: format!("{v:?} is not a whole number ({e})"),
                    })
                })
                .transpose()
        };
        if let Some(n) = number("APPLYD_DRIVERS")? {
            config.operator.drivers = n as usize;
        }
        if let Some(n) = number("APPLYD_STALE_AFTER_MS")? {
            config.operator.stale_after_ms = n;
        }
        if let Some(n) = number("APPLYD_PRESUMED_LOSS_MS")? {
            config.operator.presumed_loss_ms = n;
        }
        if let Some(n) = number("APPLYD_HEARTBEAT_INTERVAL_MS")? {
            config.operator.heartbeat_interval_ms = n;
        }
        if let Some(n) = number("APPLYD_POLL_INTERVAL_MS")? {
            config.operator.poll_interval_ms = n;
        }
        if let Some(v) = env("APPLYD_CLAIM_PATH") {
            config.operator.claim_path = v.parse().map_err(|message| ConfigError::Env {
                name: "APPLYD_CLAIM_PATH",
                message,
            })?;
        }
        if let Some(v) = env("APPLYD_LOG_FORMAT") {
            config.log.format = match v.as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                other => {
                    return Err(ConfigError::Env {
                        name: "APPLYD_LOG_FORMAT",
                        message: format!("{other:?} is not json or text"),
                    })
                }
            };
        }
        if let Some(v) = env("APPLYD_ENGINES") {
            config.engines.kind = match v.as_str() {
                "fake" => EngineMode::Fake,
                "remote-fake" => EngineMode::RemoteFake,
                "real" => EngineMode::Real,
                other => {
                    return Err(ConfigError::Env {
                        name: "APPLYD_ENGINES",
                        message: format!("{other:?} is not fake, remote-fake or real"),
                    })
                }
            };
        }
        if let Some(v) = env("APPLYD_REMOTE_FAKE_URL") {
            config.engines.remote_fake_url = Some(v);
        }
        if let Some(n) = number("APPLYD_REMOTE_FAKE_HOST")? {
            config.engines.remote_fake_host = Some(n as u32);
        }
        // Engine secrets from the environment win over the file (they name no section of their own).
        if let (Some(v), Some(ps)) = (
            env("APPLYD_PLANETSCALE_SERVICE_TOKEN"),
            config.engines.planetscale.as_mut(),
        ) {
            ps.service_token = SecretSource {
                value: Some(Secret::new(v)),
                file: None,
            };
        }
        if let (Some(v), Some(sp)) = (
            env("APPLYD_SPIRIT_PASSWORD"),
            config.engines.spirit.as_mut(),
        ) {
            sp.password = Some(SecretSource {
                value: Some(Secret::new(v)),
                file: None,
            });
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.operator
            .params()
            .validate()
            .map_err(ConfigError::Invalid)?;
        if self.operator.drivers == 0 || self.operator.drivers > 256 {
            return Err(ConfigError::Invalid(format!(
                "operator.drivers must be between 1 and 256, not {}",
                self.operator.drivers
            )));
        }
        if self.operator.heartbeat_interval_ms * 2 > self.operator.presumed_loss_ms {
            return Err(ConfigError::Invalid(format!(
                "operator.heartbeat_interval_ms ({}) must be at most half of operator.presumed_loss_ms ({})",
                self.operator.heartbeat_interval_ms, self.operator.presumed_loss_ms
            )));
        }
        if self.operator.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "operator.poll_interval_ms must be positive".into(),
            ));
        }
        self.api
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                ConfigError::Invalid(format!(
                    "api.listen {:?} is not an address like 127.0.0.1:8080 ({e})",
                    self.api.listen
                ))
            })?;
        if self.engines.kind == EngineMode::Real
            && self.engines.planetscale.is_none()
            && self.engines.spirit.is_none()
        {
            return Err(ConfigError::Invalid("engines.kind = \"real\" needs an [engines.planetscale] or [engines.spirit] section".into()));
        }
        if let Some(ps) = &self.engines.planetscale {
            if !(ps.api_url.starts_with("https://") || ps.api_url.starts_with("http://")) {
                return Err(ConfigError::Invalid(format!(
                    "engines.planetscale.api_url {:?} is not an http(s) URL",
                    ps.api_url
                )));
            }
            if ps.organization.is_empty() || ps.service_token_id.is_empty() {
                return Err(ConfigError::Invalid(
                    "engines.planetscale: organization and service_token_id must not be empty"
                        .into(),
                ));
            }
            if ps.attempts == 0 {
                return Err(ConfigError::Invalid(
                    "engines.planetscale.attempts must be at least 1".into(),
                ));
            }
        }
        if let Some(sp) = &self.engines.spirit {
            if sp.threads == 0 || sp.threads > 64 {
                return Err(ConfigError::Invalid(format!(
                    "engines.spirit.threads must be between 1 and 64, not {}",
                    sp.threads
                )));
            }
        }
        self.webhooks.validate()?;
        if self.engines.kind == EngineMode::RemoteFake && self.engines.remote_fake_url.is_none() {
            return Err(ConfigError::Invalid(
                "engines.kind = \"remote-fake\" needs engines.remote_fake_url".into(),
            ));
        }
        Ok(())
    }

    pub fn database_url(&self) -> Result<Option<Secret>, ConfigError> {
        self.database_url
            .as_ref()
            .map(|s| resolve(s, "database_url"))
            .transpose()
    }

    pub fn api_token(&self) -> Result<Option<Secret>, ConfigError> {
        let s = &self.api.token;
        if s.value.is_none() && s.file.is_none() {
            return Ok(None);
        }
        resolve(s, "api.token").map(Some)
    }
}

fn resolve(source: &SecretSource, what: &str) -> Result<Secret, ConfigError> {
    match (&source.value, &source.file) {
        (Some(_), Some(_)) => Err(ConfigError::SecretBoth {
            what: what.to_string(),
        }),
        (Some(v), None) => Ok(v.clone()),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| Secret::new(s.trim().to_string()))
            .map_err(|source| ConfigError::SecretFile {
                what: what.to_string(),
                path: path.clone(),
                source,
            }),
        (None, None) => Err(ConfigError::Invalid(format!(
            "{what}: set `value` or `file`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_are_valid_and_env_overrides_apply() {
        let c = Config::load_with_env(
            None,
            env(&[("APPLYD_DRIVERS", "8"), ("APPLYD_API_TOKEN", "s3cret")]),
        )
        .unwrap();
        assert_eq!(c.operator.drivers, 8);
        assert_eq!(c.api_token().unwrap().unwrap().expose(), "s3cret");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secrets never show in Debug"
        );
    }

    #[test]
    fn bad_files_and_values_name_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("applyd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[operator]\ndrivers = \"many\"\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml") && err.contains("drivers"), "{err}");
        std::fs::write(&path, "[operatr]\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("operatr"), "{err}");
        std::fs::write(&path, "[operator]\nstale_after_ms = 1000\npresumed_loss_ms = 2000\nheartbeat_interval_ms = 100\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("presumed_loss_ms"), "{err}");
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.operator.claim_path, ClaimPath::Operation);
        let c = Config::load_with_env(None, env(&[("APPLYD_CLAIM_PATH", "apply")])).unwrap();
        assert_eq!(c.operator.claim_path, ClaimPath::Apply);
        let err = Config::load_with_env(None, env(&[("APPLYD_CLAIM_PATH", "row")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("APPLYD_CLAIM_PATH") && err.contains("row"),
            "{err}"
        );
        std::fs::write(&path, "[operator]\nclaim_path = \"apply\"\n").unwrap();
        let c = Config::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(c.operator.claim_path, ClaimPath::Apply);
        std::fs::write(&path, "[operator]\nclaim_path = \"rows\"\n").unwrap();
        assert!(Config::load_with_env(Some(&path), env(&[])).is_err());
        let err = Config::load_with_env(None, env(&[("APPLYD_DRIVERS", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("APPLYD_DRIVERS") && err.contains("lots"),
            "{err}"
        );
        let missing = Config::load_with_env(Some(&dir.join("nope.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.toml"), "{missing}");
    }

    #[test]
    fn engine_sections_parse_and_unknown_fields_are_named() {
        let dir =
            std::env::temp_dir().join(format!("applyd-config-engines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("engines.toml");
        std::fs::write(
            &path,
            "[engines]\nkind = \"real\"\n[engines.planetscale]\norganization = \"acme\"\nservice_token_id = \"tid\"\nservice_token = { value = \"pscale_tkn_x\" }\n[engines.spirit]\nbinary = \"/usr/local/bin/spirit\"\nhost = \"db\"\nusername = \"spirit\"\npassword = { value = \"pw\" }\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&path), env(&[])).unwrap();
        let ps = c.engines.planetscale.as_ref().unwrap();
        assert_eq!(ps.api_url, "https://api.planetscale.com/v1");
        assert_eq!(ps.service_token().unwrap().expose(), "pscale_tkn_x");
        assert_eq!(c.engines.spirit.as_ref().unwrap().port, 3306);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("pscale_tkn_x") && !shown.contains("\"pw\""),
            "{shown}"
        );
        std::fs::write(&path, "[engines.planetscale]\norganization = \"acme\"\nservice_token_id = \"t\"\nservice_token = { value = \"x\" }\ntoken_typo = 1\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("token_typo"), "{err}");
        std::fs::write(&path, "[engines.spirt]\nbinary = \"x\"\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spirt"), "{err}");
        std::fs::write(&path, "[engines]\nkind = \"real\"\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[engines.planetscale]"), "{err}");
    }
}
