//! The operator's side of `engines.kind = "remote-fake"`: several `applyd serve` processes share
//! one fake engine server (`applyd fake-engines`, [`super::fake_server`]).
//!
//! PlanetScale is driven by the real [`PlanetScaleEngine`] over the fake's copy of the real API,
//! so the paths, the retries and the find-by-branch recovery under test are the production ones.
//! The one stand-in on that side is the branch DDL, which in production travels over a MySQL
//! connection to the branch ([`super::planetscale::MySqlBranchSql`]); here it is posted to the fake.
//! Spirit, which has no API (it is a process the operator runs), is reached through the fake's
//! call/probe interface, keyed by this process's host id.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::fake_server::{SpiritCall, SpiritProbe, SpiritReply};
use super::planetscale::{
    BranchCredentials, BranchSql, BranchSqlError, PlanetScaleClient, PlanetScaleEngine,
};
use super::real::RealEngines;
use super::{Engine, Reply};
use crate::config::Secret;
use crate::machine::apply::ApplyRecord;
use crate::machine::observe::{EngineFault, Observation};
use crate::machine::{EngineCall, Probe};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Both engines of a fake engine server at `base`, for the operator process `host`.
pub fn remote_fake_engines(base: &str, host: u32) -> anyhow::Result<RealEngines> {
    let base = base.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder().timeout(TIMEOUT).build()?;
    let client = PlanetScaleClient::new(
        &format!("{base}/v1"),
        "fake",
        "fake",
        &Secret::new("fake"),
        TIMEOUT,
        3,
        Duration::from_millis(100),
    )?;
    let planetscale = PlanetScaleEngine::new(
        client,
        None,
        "main".into(),
        Arc::new(FakeServerBranchSql {
            base: base.clone(),
            http: http.clone(),
        }),
    );
    Ok(RealEngines {
        planetscale: Some(Arc::new(planetscale)),
        spirit: Some(Arc::new(RemoteFakeSpirit { base, host, http })),
    })
}

/// Branch DDL posted to the fake server instead of sent over MySQL to the branch.
struct FakeServerBranchSql {
    base: String,
    http: reqwest::Client,
}

#[async_trait]
impl BranchSql for FakeServerBranchSql {
    async fn apply(&self, conn: &BranchCredentials, ddl: &[String]) -> Result<(), BranchSqlError> {
        let url = format!("{}/_fake/branches/{}/ddl", self.base, conn.branch);
        match self.http.post(url).json(ddl).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(BranchSqlError::Refused(format!(
                "the fake branch refused the DDL: {}",
                r.status()
            ))),
            Err(e) => Err(BranchSqlError::Unreachable(format!(
                "the fake branch is unreachable: {e}"
            ))),
        }
    }
}

/// The fake Spirit on a fake engine server.
pub struct RemoteFakeSpirit {
    base: String,
    host: u32,
    http: reqwest::Client,
}

impl RemoteFakeSpirit {
    async fn post<T: Serialize>(&self, path: &str, body: &T) -> Reply {
        let sent = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => match resp.json::<SpiritReply>().await {
                Ok(reply) => reply.into(),
                Err(e) => {
                    tracing::warn!(error = %e, "fake Spirit sent an unreadable reply");
                    Observation::Fault(EngineFault::Transient).into()
                }
            },
            Ok(resp) => {
                tracing::warn!(status = %resp.status(), "fake Spirit refused the request");
                Observation::Fault(EngineFault::Transient).into()
            }
            Err(e) => {
                tracing::warn!(error = %e, "fake Spirit unreachable");
                Observation::Fault(EngineFault::Transient).into()
            }
        }
    }
}

#[async_trait]
impl Engine for RemoteFakeSpirit {
    async fn probe(&self, apply: &ApplyRecord, epoch: u64, probe: Probe) -> Reply {
        let body = SpiritProbe {
            apply: apply.clone(),
            epoch,
            probe,
        };
        self.post("/_fake/spirit/probe", &body).await
    }
    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Reply {
        let body = SpiritCall {
            apply: apply.clone(),
            epoch,
            host: self.host,
            call,
        };
        self.post("/_fake/spirit/call", &body).await
    }
}
