//! Structured logs: JSON by default (one object per line, with the span fields of the claim
//! and the drive), or human-readable text.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSection};

pub fn init(log: &LogSection) {
    let filter =
        EnvFilter::try_from_env("APPLYD_LOG").unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
