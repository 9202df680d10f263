//! The real engines behind one [`Engine`], routed by each apply's engine kind, and the reachability
//! checks of `applyd check-config`.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;

use super::planetscale::PlanetScaleEngine;
use super::spirit::{SpiritConfig, SpiritEngine};
use super::{Engine, Reply};
use crate::config::{Config, EngineMode};
use crate::machine::apply::ApplyRecord;
use crate::machine::observe::EngineFault;
use crate::machine::{EngineCall, EngineKind, Probe};

/// PlanetScale and Spirit, either of which may be unconfigured.
pub struct RealEngines {
    pub planetscale: Option<Arc<dyn Engine>>,
    pub spirit: Option<Arc<dyn Engine>>,
}

impl RealEngines {
    fn route(&self, apply: &ApplyRecord) -> Option<&Arc<dyn Engine>> {
        let e = match apply.row.engine {
            EngineKind::PlanetScale => self.planetscale.as_ref(),
            EngineKind::Spirit => self.spirit.as_ref(),
        };
        if e.is_none() {
            tracing::error!(
                apply = apply.row.id,
                "apply uses engine {:?}, which this operator has no section for",
                apply.row.engine
            );
        }
        e
    }
}

fn unconfigured(apply: &ApplyRecord) -> String {
    format!(
        "this operator has no [engines.{}] section; an operator configured for it will take the apply",
        apply.row.engine
    )
}

#[async_trait]
impl Engine for RealEngines {
    async fn probe(&self, apply: &ApplyRecord, epoch: u64, probe: Probe) -> Reply {
        match self.route(apply) {
            Some(e) => e.probe(apply, epoch, probe).await,
            // Another operator may be configured for it; nothing here can help.
            None => Reply::fault(EngineFault::Transient, unconfigured(apply)),
        }
    }
    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Reply {
        match self.route(apply) {
            Some(e) => e.call(apply, epoch, call).await,
            None => Reply::fault(EngineFault::Transient, unconfigured(apply)),
        }
    }
    async fn abandon(&self, apply: &ApplyRecord, epoch: u64) {
        if let Some(e) = self.route(apply) {
            e.abandon(apply, epoch).await
        }
    }
}

/// The engines of `engines.kind = "real"`: PlanetScale from `[engines.planetscale]`, Spirit from
/// `[engines.spirit]`, routed by `apply.row.engine`.
pub async fn real_engine(config: &Config) -> anyhow::Result<Arc<dyn Engine>> {
    if config.engines.kind != EngineMode::Real {
        anyhow::bail!("engines.kind is not \"real\"");
    }
    let planetscale = match &config.engines.planetscale {
        Some(ps) => Some(Arc::new(
            PlanetScaleEngine::from_config(ps).context("engines.planetscale")?,
        ) as Arc<dyn Engine>),
        None => None,
    };
    let spirit = match &config.engines.spirit {
        Some(sp) => Some(Arc::new(SpiritEngine::new(
            SpiritConfig::from_section(sp).context("engines.spirit")?,
        )) as Arc<dyn Engine>),
        None => None,
    };
    if planetscale.is_none() && spirit.is_none() {
        anyhow::bail!("engines.kind = \"real\" needs [engines.planetscale] or [engines.spirit]");
    }
    Ok(Arc::new(RealEngines {
        planetscale,
        spirit,
    }))
}

/// One line of a `check-config` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// How long `check-config` waits for a MySQL server to answer.
const PING_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Reach every configured engine: PlanetScale (an authenticated GET of the organisation and,
/// when configured, the database), Spirit (the binary runs `--help`) and its MySQL target.
pub async fn check_engines(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |what: &str, r: Result<String, String>| {
        out.push(match r {
            Ok(detail) => Check {
                what: what.into(),
                ok: true,
                detail,
            },
            Err(detail) => Check {
                what: what.into(),
                ok: false,
                detail,
            },
        })
    };
    if let Some(ps) = &config.engines.planetscale {
        match super::planetscale::PlanetScaleClient::from_config(ps) {
            Err(e) => push("planetscale", Err(format!("{e:#}"))),
            Ok(client) => {
                push(
                    "planetscale organization",
                    client
                        .get_organization()
                        .await
                        .map(|_| format!("{} reachable at {}", ps.organization, ps.api_url))
                        .map_err(|e| e.to_string()),
                );
                if let Some(db) = &ps.database {
                    push(
                        "planetscale database",
                        client
                            .get_database(db)
                            .await
                            .map(|v| {
                                // `require_approval_for_deploy` (`planetscale/databases.go`).
                                let approval = match v
                                    .get("require_approval_for_deploy")
                                    .and_then(serde_json::Value::as_bool)
                                {
                                    Some(true) => {
                                        "deploys wait for a reviewer's approval (require_approval_for_deploy)"
                                    }
                                    Some(false) => "deploys need no approval",
                                    None => "approval setting not reported",
                                };
                                format!("{db} found; {approval}")
                            })
                            .map_err(|e| e.to_string()),
                    );
                    let into = &ps.into_branch;
                    push(
                        "planetscale deploy branch",
                        match client.get_branch(db, into).await {
                            Ok(Some(b)) if b.safe_migrations => {
                                Ok(format!("{into} has safe migrations on"))
                            }
                            // "Your database must have a production branch with safe
                            // migrations enabled before you can create a deploy request."
                            Ok(Some(_)) => Err(format!(
                                "{into} has safe migrations off: PlanetScale takes no deploy \
                                 request into it (pscale branch safe-migrations enable {db} {into})"
                            )),
                            Ok(None) => Err(format!("{db} has no branch {into}")),
                            Err(e) => Err(e.to_string()),
                        },
                    );
                }
            }
        }
    }
    if let Some(sp) = &config.engines.spirit {
        let bin = sp.binary.display().to_string();
        let run = |args: &'static [&'static str]| {
            let binary = sp.binary.clone();
            async move {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    tokio::process::Command::new(&binary)
                        .args(args)
                        .stdin(std::process::Stdio::null())
                        .output(),
                )
                .await
                {
                    Err(_) => Err(format!("{} did not finish within 20 s", args.join(" "))),
                    Ok(Err(e)) => Err(format!("cannot run {}: {e}", binary.display())),
                    Ok(Ok(o)) if o.status.success() => {
                        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                    }
                    Ok(Ok(o)) => Err(format!(
                        "{} exited with {}: {}",
                        args.join(" "),
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    )),
                }
            }
        };
        let version = run(&["--version"])
            .await
            .ok()
            .and_then(|v| v.lines().next().map(|l| l.trim().to_string()))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "version not reported".into());
        let help = run(&["migrate", "--help"]).await;
        match (help, SpiritConfig::from_section(sp)) {
            (Err(e), _) => push("spirit binary", Err(format!("{bin}: {e}"))),
            (Ok(_), Err(e)) => push("spirit binary", Err(format!("{e:#}"))),
            (Ok(help), Ok(cfg)) => push(
                "spirit binary",
                super::spirit::check_help(&help, &cfg)
                    .map(|said| format!("{bin} ({version}): {said}"))
                    .map_err(|e| format!("{bin} ({version}): {e}")),
            ),
        }
        match SpiritConfig::from_section(sp) {
            Err(e) => push("spirit target", Err(format!("{e:#}"))),
            Ok(cfg) => {
                let mut servers = vec![("spirit mysql target".to_string(), cfg.default_endpoint())];
                for (key, e) in &cfg.hosts {
                    servers.push((format!("spirit mysql target ({key})"), e.clone()));
                }
                let engine = SpiritEngine::new(cfg);
                for (what, server) in servers {
                    let target = format!("{}@{server}", sp.username);
                    let reached =
                        tokio::time::timeout(PING_WITHIN, engine.ping(&server, None)).await;
                    push(
                        &what,
                        match reached {
                            Ok(Ok(())) => Ok(format!("{target} reachable")),
                            Ok(Err(e)) => Err(format!("{target}: {e}")),
                            Err(_) => Err(format!(
                                "{target}: no answer within {} s",
                                PING_WITHIN.as_secs()
                            )),
                        },
                    );
                }
            }
        }
    }
    out
}
