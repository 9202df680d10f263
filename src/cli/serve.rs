//! `applyd serve`: the operator — a pool of drivers and the HTTP API — against MySQL.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::config::{Config, EngineMode, OperatorSection};
use crate::engine::Engine;
use crate::machine::Rules;
use crate::operator::webhooks::{Deliverer, DelivererConfig};
use crate::operator::{default_owner_prefix, telemetry, Runtime, RuntimeConfig};
use crate::store::mysql::MySqlStore;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file; APPLYD_* environment variables override it.
    #[arg(long, env = "APPLYD_CONFIG")]
    config: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("applyd serve: {e}");
            return ExitCode::from(2);
        }
    };
    super::logging::init(&config.log);
    match super::runtime().block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("applyd serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The engines a config asks for.
pub async fn engines(config: &Config, host: u32) -> anyhow::Result<Arc<dyn Engine>> {
    Ok(match config.engines.kind {
        EngineMode::Fake => {
            tracing::warn!(
                "engines.kind = \"fake\": driving in-process fake engines (trials only)"
            );
            let clock: Arc<dyn crate::store::memory::Clock> =
                Arc::new(crate::store::memory::MonotonicClock::default());
            Arc::new(crate::engine::fake::SharedFakeEngines {
                engines: Arc::new(std::sync::Mutex::new(
                    crate::engine::fake::FakeEngines::new(Default::default()),
                )),
                clock,
                host,
            })
        }
        EngineMode::RemoteFake => {
            let url = config
                .engines
                .remote_fake_url
                .clone()
                .context("engines.remote_fake_url is missing")?;
            Arc::new(crate::engine::remote_fake::remote_fake_engines(
                &url,
                config.engines.remote_fake_host.unwrap_or(host),
            )?)
        }
        EngineMode::Real => crate::engine::real::real_engine(config).await?,
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let url = config
        .database_url()?
        .context("no database: set database_url in the config file or APPLYD_DATABASE_URL")?;
    let rules = Rules::new(config.operator.params());
    let store = Arc::new(
        MySqlStore::connect(url.expose(), rules)
            .await
            .context("cannot connect to the database")?,
    );
    super::migrate::check_schema(store.pool())
        .await
        .map_err(anyhow::Error::msg)?;
    let webhook_endpoints = config.webhooks.resolve()?;
    let owner_prefix = config
        .operator
        .owner
        .clone()
        .unwrap_or_else(default_owner_prefix);
    let metrics = telemetry::install();
    let engine: Arc<dyn Engine> = Arc::new(telemetry::MeteredEngine(
        engines(&config, std::process::id()).await?,
    ));
    let gauges = tokio::spawn(telemetry::publish_apply_states(
        store.clone(),
        Duration::from_secs(15),
    ));
    let runtime = Arc::new(Runtime::new(
        store.clone(),
        engine,
        RuntimeConfig {
            owner_prefix: owner_prefix.clone(),
            drivers: config.operator.drivers,
            poll_interval: OperatorSection::ms(config.operator.poll_interval_ms),
            backoff: OperatorSection::ms(config.operator.backoff_ms),
            heartbeat_interval: OperatorSection::ms(config.operator.heartbeat_interval_ms),
            shutdown_deadline: OperatorSection::ms(config.operator.shutdown_deadline_ms),
            max_commands_per_drive: 10_000_000,
            rules,
            claim_path: config.operator.claim_path,
        },
    ));
    runtime.config.validate().map_err(anyhow::Error::msg)?;
    let wake = runtime.wake.clone();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let api_state = ApiState {
        store: store.clone(),
        inspect: store.clone(),
        token: config.api_token()?,
        wake,
        metrics: Some(metrics),
    };
    let listen: std::net::SocketAddr = config.api.listen.parse()?;
    let mut api_shutdown = shutdown.clone();
    let api = tokio::spawn(api::serve(api_state, listen, async move {
        let _ = api_shutdown.wait_for(|s| *s).await;
    }));
    tracing::info!(owner = %owner_prefix, drivers = config.operator.drivers, %listen, "applyd serving");
    let pool = tokio::spawn(runtime.clone().run(shutdown.clone()));
    // Always started: with no endpoint it only prunes (events are recorded regardless).
    let deliverer = Deliverer::new(
        store.clone(),
        DelivererConfig::new(
            format!("{owner_prefix}/webhooks"),
            &config.webhooks,
            webhook_endpoints,
        ),
    )?;
    let webhooks = tokio::spawn(deliverer.run(shutdown.clone()));
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutdown requested: no new claims; finishing in-flight work"),
        res = api => {
            // The API failed to start (address in use, no token on a public address).
            let _ = shutdown_tx.send(true);
            res??;
            return Ok(());
        }
    }
    let _ = shutdown_tx.send(true);
    let deadline =
        OperatorSection::ms(config.operator.shutdown_deadline_ms) + Duration::from_secs(5);
    if tokio::time::timeout(deadline, pool).await.is_err() {
        tracing::warn!("drivers did not stop within the deadline; peers reclaim after stale-after");
    }
    gauges.abort();
    // Anything it leased and did not mark falls due again when the lease ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), webhooks).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
