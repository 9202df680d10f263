//! `[webhooks]`: endpoints that receive a signed JSON event on each state change, request and
//! failure of an apply, and how the deliverer treats them.
//!
//! ```toml
//! [webhooks]
//! timeout_ms = 5000
//! max_backoff_ms = 300000
//! max_attempts = 300
//! retention_hours = 168
//!
//! [[webhooks.endpoints]]
//! name = "chat"
//! url = "https://hooks.example.com/applyd"
//! secret = { file = "/etc/applyd/chat-hook" }
//! kinds = ["failure"]
//! ```

use serde::Deserialize;

use super::{resolve, ConfigError, Secret, SecretSource};
use crate::store::webhooks::EventKind;

/// The longest endpoint name (the store's column is this wide).
pub const MAX_ENDPOINT_NAME: usize = 64;
/// The longest retry backoff: a day.
pub const MAX_BACKOFF_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSection {
    /// How long one POST may take, connection included.
    pub timeout_ms: u64,
    /// The cap of the retry backoff (1 s, 2 s, 4 s, … up to this).
    pub max_backoff_ms: u64,
    /// Attempts after which a delivery is given up (abandoned, shown in the health): one event
    /// a receiver never accepts must not hold back its apply's later events for ever.
    pub max_attempts: u32,
    /// Delivered events older than this are pruned.
    pub retention_hours: u64,
    pub endpoints: Vec<EndpointSection>,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        WebhooksSection {
            timeout_ms: 5_000,
            max_backoff_ms: 300_000,
            max_attempts: 300,
            retention_hours: 7 * 24,
            endpoints: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    pub name: String,
    pub url: String,
    pub secret: SecretSource,
    /// The kinds it receives; every kind when absent.
    pub kinds: Option<Vec<String>>,
}

/// An endpoint ready to deliver to.
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    pub name: String,
    pub url: reqwest::Url,
    pub secret: Secret,
    pub kinds: Vec<EventKind>,
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}

impl WebhooksSection {
    /// Everything that can be checked without reading secret files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err(invalid(format!(
                "webhooks.timeout_ms must be between 1 and 60000, not {}",
                self.timeout_ms
            )));
        }
        if !(1_000..=MAX_BACKOFF_MS).contains(&self.max_backoff_ms) {
            return Err(invalid(format!(
                "webhooks.max_backoff_ms must be between 1000 and {MAX_BACKOFF_MS} (a day), not {}",
                self.max_backoff_ms
            )));
        }
        if !(1..=1_000).contains(&self.max_attempts) {
            return Err(invalid(format!(
                "webhooks.max_attempts must be between 1 and 1000, not {}",
                self.max_attempts
            )));
        }
        if self.retention_hours == 0 || self.retention_hours > 24 * 366 {
            return Err(invalid(format!(
                "webhooks.retention_hours must be between 1 and 8784, not {}",
                self.retention_hours
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = format!("webhooks.endpoints[{i}]");
            if e.name.trim().is_empty() || e.name.len() > MAX_ENDPOINT_NAME {
                return Err(invalid(format!(
                    "{at}.name must be 1 to {MAX_ENDPOINT_NAME} characters, not {:?}",
                    e.name
                )));
            }
            if !names.insert(e.name.as_str()) {
                return Err(invalid(format!(
                    "{at}.name {:?} is used by another endpoint: names must be unique",
                    e.name
                )));
            }
            parse_url(&at, &e.url)?;
            parse_kinds(&at, e.kinds.as_deref())?;
            match (&e.secret.value, &e.secret.file) {
                (Some(v), None) if v.expose().is_empty() => {
                    return Err(invalid(format!("{at}.secret must not be empty")))
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(format!(
                        "{at}.secret: set either `value` or `file`, not both"
                    )))
                }
                (None, None) => return Err(invalid(format!("{at}.secret: set `value` or `file`"))),
                _ => {}
            }
        }
        Ok(())
    }

    /// The endpoints with their secrets read (a secret file that is missing or empty is an
    /// error naming the endpoint).
    pub fn resolve(&self) -> Result<Vec<WebhookEndpoint>, ConfigError> {
        self.validate()?;
        let mut out = Vec::with_capacity(self.endpoints.len());
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = format!("webhooks.endpoints[{i}]");
            let secret = resolve(&e.secret, &format!("{at}.secret"))?;
            if secret.expose().is_empty() {
                return Err(invalid(format!("{at}.secret ({:?}) is empty", e.name)));
            }
            out.push(WebhookEndpoint {
                name: e.name.clone(),
                url: parse_url(&at, &e.url)?,
                secret,
                kinds: parse_kinds(&at, e.kinds.as_deref())?,
            });
        }
        Ok(out)
    }
}

/// Errors show the URL's scheme and host only: many receivers carry their secret in the path
/// or the query.
fn parse_url(at: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| invalid(format!("{at}.url is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(invalid(format!(
            "{at}.url ({}://{}…) is not an http(s) URL with a host",
            parsed.scheme(),
            parsed.host_str().unwrap_or("")
        )));
    }
    Ok(parsed)
}

fn parse_kinds(at: &str, kinds: Option<&[String]>) -> Result<Vec<EventKind>, ConfigError> {
    let Some(kinds) = kinds else {
        return Ok(EventKind::ALL.to_vec());
    };
    if kinds.is_empty() {
        return Err(invalid(format!(
            "{at}.kinds is empty: leave it out to receive every kind"
        )));
    }
    let mut out = Vec::new();
    for k in kinds {
        let kind = k
            .parse::<EventKind>()
            .map_err(|e| invalid(format!("{at}.kinds: {e}")))?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> Result<WebhooksSection, String> {
        #[derive(Deserialize)]
        struct File {
            webhooks: WebhooksSection,
        }
        toml::from_str::<File>(toml_text)
            .map(|f| f.webhooks)
            .map_err(|e| e.to_string())
    }

    fn error_of(toml_text: &str) -> String {
        section(toml_text)
            .expect("parses")
            .resolve()
            .expect_err("refused")
            .to_string()
    }

    const ONE: &str = r#"
[webhooks]
timeout_ms = 2000
[[webhooks.endpoints]]
name = "chat"
url = "https://hooks.example.com/applyd"
secret = { value = "s3cret" }
kinds = ["failure", "request"]
"#;

    #[test]
    fn an_endpoint_resolves_with_its_kinds_and_defaults() {
        let s = section(ONE).unwrap();
        assert_eq!((s.timeout_ms, s.retention_hours), (2000, 168));
        let e = &s.resolve().unwrap()[0];
        assert_eq!(e.name, "chat");
        assert_eq!(e.kinds, vec![EventKind::Failure, EventKind::Request]);
        assert_eq!(e.secret.expose(), "s3cret");
        assert!(!format!("{e:?}").contains("s3cret"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (ONE.replace("\"request\"", "\"deploy\""), "webhooks.endpoints[0].kinds: unknown event kind \"deploy\""),
            (ONE.replace("https://hooks.example.com/applyd", "hooks.example.com"), "webhooks.endpoints[0].url is not a URL"),
            (ONE.replace("https://", "ftp://"), "webhooks.endpoints[0].url (ftp://hooks.example.com…) is not an http(s) URL"),
            (ONE.replace("timeout_ms = 2000", "timeout_ms = 2000\nmax_backoff_ms = 86400001"), "webhooks.max_backoff_ms must be between 1000 and 86400000"),
            (ONE.replace("timeout_ms = 2000", "timeout_ms = 2000\nmax_attempts = 0"), "webhooks.max_attempts must be between 1 and 1000, not 0"),
            (ONE.replace("\"s3cret\"", "\"\""), "webhooks.endpoints[0].secret must not be empty"),
            (ONE.replace("kinds = [\"failure\", \"request\"]", "kinds = []"), "webhooks.endpoints[0].kinds is empty"),
            (format!("{ONE}[[webhooks.endpoints]]\nname = \"chat\"\nurl = \"http://x\"\nsecret = {{ value = \"k\" }}\n"), "webhooks.endpoints[1].name \"chat\" is used by another endpoint"),
            (ONE.replace("timeout_ms = 2000", "timeout_ms = 0"), "webhooks.timeout_ms must be between"),
        ];
        for (text, expected) in cases {
            let err = error_of(&text);
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
            assert!(!err.contains("/applyd"), "the URL's path is shown: {err}");
        }
    }

    #[test]
    fn an_empty_secret_file_is_refused_by_name() {
        let path = std::env::temp_dir().join(format!("applyd-hook-secret-{}", std::process::id()));
        std::fs::write(&path, "\n").unwrap();
        let text = ONE.replace(
            "{ value = \"s3cret\" }",
            &format!("{{ file = {:?} }}", path.display().to_string()),
        );
        let err = error_of(&text);
        assert!(
            err.contains("webhooks.endpoints[0].secret (\"chat\") is empty"),
            "{err}"
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn an_unknown_field_is_a_parse_error_naming_it() {
        let err = section(&ONE.replace("kinds", "kind")).unwrap_err();
        assert!(err.contains("kind"), "{err}");
    }
}
