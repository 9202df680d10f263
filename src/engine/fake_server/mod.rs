//! The fake engine server (`applyd fake-engines`): the fake state machines of [`super::fake`],
//! driven by the wall clock and shared by every process that talks to it.
//!
//! - PlanetScale is served over the same HTTP paths, verbs and JSON fields the real client uses
//!   (so the operator drives it with the real [`super::planetscale::PlanetScaleEngine`]), with
//!   optional fault injection: 5xx before the effect, latency, and lost replies (the effect is
//!   applied and the reply is a 5xx).
//! - Everything under `/_fake/` is FAKE-ONLY; the real API has nothing like it: inspecting,
//!   deleting or failing deploy requests (or having one report a given state for a few reads),
//!   changing the faults, the facts a crash test asserts,
//!   the branch DDL that really travels over a MySQL connection to the branch, and the fake
//!   Spirit. Spirit has no API at all (it is a process the operator runs), so its fake is reached
//!   through a small JSON call/probe interface keyed by the calling process's host id;
//!   `POST /_fake/crash-host/{host}` kills that host's runners, as a process kill would.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::fake::{FakeEngines, FakeTimings};

mod api;
mod fake_only;

use api::*;
use fake_only::*;
pub use fake_only::{Facts, SpiritCall, SpiritProbe, SpiritReply};

/// Fault injection, changeable at run time through `POST /_fake/faults`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Share of API requests answered 503 before anything happens.
    pub fail_rate: f64,
    /// Share of API requests whose effect is applied and whose reply is then lost (502).
    pub lose_rate: f64,
    /// Delay before every API reply.
    pub latency_ms: u64,
}

#[derive(Debug, Clone)]
pub struct FakeServerOptions {
    pub faults: Faults,
    pub seed: u64,
    pub timings: FakeTimings,
    /// When set, requests must carry `Authorization: <id>:<token>`.
    pub token: Option<(String, String)>,
    /// FAKE-ONLY: the MySQL server every branch password points at. Unset, a password points at
    /// `127.0.0.1:0`, which nothing serves.
    pub branch_server: Option<BranchServer>,
}

/// FAKE-ONLY: a MySQL server standing in for every branch of every database. A branch password
/// connects to it as `username`; the engine then uses the schema named as the PlanetScale
/// database (as on a real branch), so each PlanetScale database is one schema there, and a
/// branch's DDL lands on that schema at once (the deploy request only models the deploy's life).
#[derive(Debug, Clone)]
pub struct BranchServer {
    /// `host:port`, as `access_host_url` carries it.
    pub address: String,
    pub username: String,
    pub password: String,
}

impl Default for FakeServerOptions {
    fn default() -> Self {
        FakeServerOptions {
            faults: Faults::default(),
            seed: 1,
            timings: FakeTimings::default(),
            token: None,
            branch_server: None,
        }
    }
}

struct Inner {
    engines: FakeEngines,
    /// FAKE-ONLY: the DDL applied to each branch (in reality, over a MySQL connection to it).
    branch_ddl: std::collections::BTreeMap<String, Vec<String>>,
    closed: BTreeSet<u64>,
    /// FAKE-ONLY: what a deploy request reports instead of the truth, for a number of reads
    /// (`POST /_fake/deploy-requests/{n}/report`): states the fake never reaches by itself
    /// (one this build does not know), a missing approval, lint errors. While an approval is
    /// reported missing, a deploy is refused.
    reports: std::collections::BTreeMap<u64, Report>,
    /// Branch passwords alive: id -> (branch, name).
    passwords: std::collections::BTreeMap<String, (String, String)>,
    passwords_made: u64,
    faults: Faults,
    rng: u64,
    injected_failures: u64,
    lost_replies: u64,
    served: u64,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    started: Instant,
    token: Option<String>,
    branch_server: Option<Arc<BranchServer>>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// splitmix64: a tiny seeded generator; the faults need no more.
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn err(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "code": code, "message": message.into() })),
    )
        .into_response()
}

/// The router, for tests that serve it in-process and for the CLI.
pub fn router(opts: FakeServerOptions) -> Router {
    let mut engines = FakeEngines::new(opts.timings);
    // The real PlanetScale API cannot refuse an older epoch; neither does this fake.
    engines.planetscale.fence_epochs = false;
    let shared = Shared {
        inner: Arc::new(Mutex::new(Inner {
            engines,
            branch_ddl: Default::default(),
            closed: BTreeSet::new(),
            reports: Default::default(),
            passwords: Default::default(),
            passwords_made: 0,
            faults: opts.faults,
            rng: opts.seed,
            injected_failures: 0,
            lost_replies: 0,
            served: 0,
        })),
        started: Instant::now(),
        token: opts.token.map(|(id, t)| format!("{id}:{t}")),
        branch_server: opts.branch_server.map(Arc::new),
    };
    let db = "/v1/organizations/{org}/databases/{db}";
    Router::new()
        .route("/v1/organizations/{org}", get(get_org))
        .route(db, get(get_db))
        .route(&format!("{db}/branches"), post(create_branch))
        .route(&format!("{db}/branches/{{branch}}"), get(get_branch))
        .route(
            &format!("{db}/branches/{{branch}}/passwords"),
            post(create_password).get(list_passwords),
        )
        .route(
            &format!("{db}/branches/{{branch}}/passwords/{{id}}"),
            axum::routing::delete(delete_password),
        )
        .route(
            &format!("{db}/deploy-requests"),
            get(list_requests).post(create_request),
        )
        .route(
            &format!("{db}/deploy-requests/{{number}}"),
            get(get_request).patch(close_request),
        )
        .route(
            &format!("{db}/deploy-requests/{{number}}/{{action}}"),
            post(request_action),
        )
        .route("/_fake/deploy-requests", get(admin_list))
        .route("/_fake/deploy-requests/{number}", delete(admin_delete))
        .route("/_fake/deploy-requests/{number}/fail", post(admin_fail))
        .route("/_fake/deploy-requests/{number}/report", post(admin_report))
        .route("/_fake/faults", post(admin_faults))
        .route("/_fake/branches/{branch}/ddl", post(admin_branch_ddl))
        .route("/_fake/spirit/probe", post(spirit_probe))
        .route("/_fake/spirit/call", post(spirit_call))
        .route("/_fake/crash-host/{host}", post(admin_crash_host))
        .route("/_fake/facts", get(admin_facts))
        .with_state(shared)
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: FakeServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(opts))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Phase durations all set to `phase_ms` (tests and trials want a quick fake).
pub fn quick_timings(phase_ms: u64) -> FakeTimings {
    FakeTimings {
        branch_ready_ms: phase_ms,
        validate_ms: phase_ms,
        deploy_ms: phase_ms,
        cutover_ms: phase_ms,
        revert_ms: phase_ms,
        server_revert_window_ms: phase_ms.saturating_mul(100),
        ..FakeTimings::default()
    }
}
