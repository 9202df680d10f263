//! Prometheus metrics: installed once per process; `/metrics` renders them.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the recorder (idempotent) and return the handle that renders the exposition text.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // A second recorder in the same process (tests) keeps the first one.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Wraps an engine to record the latency and the faults of every probe and call.
pub struct MeteredEngine(pub std::sync::Arc<dyn crate::engine::Engine>);

fn record(kind: String, started: std::time::Instant, obs: &crate::machine::observe::Observation) {
    metrics::histogram!("applyd_engine_call_seconds", "call" => kind.clone())
        .record(started.elapsed().as_secs_f64());
    if let crate::machine::observe::Observation::Fault(fault) = obs {
        metrics::counter!("applyd_engine_errors_total", "call" => kind, "fault" => format!("{fault:?}")).increment(1);
    }
}

#[async_trait::async_trait]
impl crate::engine::Engine for MeteredEngine {
    async fn probe(
        &self,
        apply: &crate::store::ApplyRecord,
        epoch: u64,
        probe: crate::machine::Probe,
    ) -> crate::engine::Reply {
        let started = std::time::Instant::now();
        let reply = self.0.probe(apply, epoch, probe).await;
        record(format!("{probe:?}"), started, &reply.obs);
        reply
    }
    async fn call(
        &self,
        apply: &crate::store::ApplyRecord,
        epoch: u64,
        call: crate::machine::EngineCall,
    ) -> crate::engine::Reply {
        let started = std::time::Instant::now();
        let reply = self.0.call(apply, epoch, call).await;
        record(format!("{call:?}"), started, &reply.obs);
        reply
    }
    async fn abandon(&self, apply: &crate::store::ApplyRecord, epoch: u64) {
        self.0.abandon(apply, epoch).await
    }
}

/// Publish `applyd_applies{state}` from the store every `every`, forever.
pub async fn publish_apply_states(
    inspect: std::sync::Arc<dyn crate::store::status::Inspect>,
    every: std::time::Duration,
) {
    loop {
        match inspect.count_by_state().await {
            Ok(counts) => {
                // Older spellings count under the state they stand for; unknown strings under
                // none (the claim path reports those rows).
                let mut by_state = std::collections::BTreeMap::new();
                for (stored, n) in &counts {
                    if let Ok(state) = stored.parse::<crate::machine::ApplyState>() {
                        *by_state.entry(state).or_insert(0u64) += n;
                    }
                }
                for state in crate::machine::ApplyState::ALL {
                    let n = by_state.get(state).copied().unwrap_or(0);
                    metrics::gauge!("applyd_applies", "state" => state.as_str()).set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not count applies by state"),
        }
        tokio::time::sleep(every).await;
    }
}
