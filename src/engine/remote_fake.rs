//! The fake engines served over loopback, so that several `applyd serve` processes share one
//! fake PlanetScale and one fake Spirit (crash tests). `applyd fake-engines --listen` runs the
//! server; `RemoteFakeEngine` is the client the operator uses with `engines.kind = "remote-fake"`.
//! Runners are hosted by the calling process's host id; `POST /crash-host/{host}` kills them, as
//! a process kill would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::fake::{FakeEngines, FakeTimings};
use super::Engine;
use crate::machine::apply::ApplyRecord;
use crate::machine::observe::{EngineFault, Observation};
use crate::machine::{EngineCall, Probe};
use crate::store::memory::{Clock, MonotonicClock};

#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub apply: ApplyRecord,
    pub epoch: u64,
    pub probe: Probe,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CallRequest {
    pub apply: ApplyRecord,
    pub epoch: u64,
    pub host: u32,
    pub call: EngineCall,
}

/// What the fakes hold, for the crash test's assertions.
#[derive(Debug, Serialize, Deserialize)]
pub struct Facts {
    /// (apply id, deploy requests created for it)
    pub deploy_requests: Vec<(u64, usize)>,
    /// (target, runners alive on it)
    pub runners: Vec<(String, usize)>,
    pub runners_started: u64,
}

struct Server {
    engines: Mutex<FakeEngines>,
    clock: MonotonicClock,
}

pub fn router(timings: FakeTimings) -> Router {
    let mut engines = FakeEngines::new(timings);
    // The real PlanetScale API cannot refuse an older epoch; neither does this fake.
    engines.planetscale.fence_epochs = false;
    let state = Arc::new(Server {
        engines: Mutex::new(engines),
        clock: MonotonicClock::default(),
    });
    Router::new()
        .route("/probe", post(probe))
        .route("/call", post(call))
        .route("/crash-host/{host}", post(crash_host))
        .route("/facts", get(facts))
        .with_state(state)
}

async fn probe(State(s): State<Arc<Server>>, Json(req): Json<ProbeRequest>) -> Json<Observation> {
    let now = s.clock.now_ms();
    let apply = req.apply;
    Json(
        s.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .probe(now, &apply, req.probe),
    )
}

async fn call(State(s): State<Arc<Server>>, Json(req): Json<CallRequest>) -> Json<Observation> {
    let now = s.clock.now_ms();
    let apply = req.apply;
    Json(
        s.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .call(now, req.host, &apply, req.epoch, req.call),
    )
}

async fn crash_host(State(s): State<Arc<Server>>, Path(host): Path<u32>) -> &'static str {
    let now = s.clock.now_ms();
    s.engines
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .crash_host(now, host);
    "ok"
}

async fn facts(State(s): State<Arc<Server>>) -> Json<Facts> {
    let now = s.clock.now_ms();
    let mut e = s.engines.lock().unwrap_or_else(|p| p.into_inner());
    e.advance(now);
    let mut per_apply: std::collections::BTreeMap<u64, usize> = Default::default();
    for dr in e.planetscale.requests.values() {
        *per_apply.entry(dr.apply).or_default() += 1;
    }
    Json(Facts {
        deploy_requests: per_apply.into_iter().collect(),
        runners: e
            .spirit
            .targets
            .iter()
            .map(|(k, t)| (k.clone(), t.runners.len()))
            .collect(),
        runners_started: e.spirit.runners_started,
    })
}

/// Serve the fakes until the process ends.
pub async fn serve(listen: SocketAddr, timings: FakeTimings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    println!("fake engines listening on {}", listener.local_addr()?);
    axum::serve(listener, router(timings)).await?;
    Ok(())
}

/// The operator's client of the fake engine server.
pub struct RemoteFakeEngine {
    base: String,
    host: u32,
    http: reqwest::Client,
}

impl RemoteFakeEngine {
    pub fn new(base: &str, host: u32) -> anyhow::Result<RemoteFakeEngine> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(RemoteFakeEngine {
            base: base.trim_end_matches('/').to_string(),
            host,
            http,
        })
    }

    async fn post<T: Serialize>(&self, path: &str, body: &T) -> Observation {
        let sent = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => match resp.json::<Observation>().await {
                Ok(obs) => obs,
                Err(e) => {
                    tracing::warn!(error = %e, "fake engine sent an unreadable reply");
                    Observation::Fault(EngineFault::Transient)
                }
            },
            Ok(resp) => {
                tracing::warn!(status = %resp.status(), "fake engine refused the request");
                Observation::Fault(EngineFault::Transient)
            }
            Err(e) => {
                tracing::warn!(error = %e, "fake engine unreachable");
                Observation::Fault(EngineFault::Transient)
            }
        }
    }
}

#[async_trait]
impl Engine for RemoteFakeEngine {
    async fn probe(&self, apply: &ApplyRecord, epoch: u64, probe: Probe) -> Observation {
        self.post(
            "/probe",
            &ProbeRequest {
                apply: apply.clone(),
                epoch,
                probe,
            },
        )
        .await
    }
    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Observation {
        self.post(
            "/call",
            &CallRequest {
                apply: apply.clone(),
                epoch,
                host: self.host,
                call,
            },
        )
        .await
    }
}
