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
