//! The production runtime: one poller per process claims work for a pool of drivers, each
//! driving one apply at a time through the worker core against the store and the engines, with
//! one batched, per-lease fenced heartbeat per process, presumed lease loss, panic containment
//! and graceful shutdown.

pub mod executor;
pub mod heartbeats;
pub mod telemetry;
pub mod watched;
pub mod webhooks;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Notify};
use tracing::{info, info_span, warn, Instrument};

use crate::engine::Engine;
use crate::machine::{ApplyState, Rules};
use crate::store::{claim_next, ClaimPath, Claimed, Store};
use crate::worker::{Finish, WaitFor};
pub use executor::{run_drive, DriveReport, Immediate, Pacing};
pub use heartbeats::{HeartbeatHealth, Heartbeats};
use heartbeats::{Held, Holding};
use watched::Watches;

/// How a process runs its drivers.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Lease owner prefix, e.g. `host/pid`; drivers append `/driver-N`.
    pub owner_prefix: String,
    pub drivers: usize,
    pub poll_interval: Duration,
    pub backoff: Duration,
    pub heartbeat_interval: Duration,
    /// How long in-flight drives may run after a shutdown signal before their leases are released.
    pub shutdown_deadline: Duration,
    /// Upper bound on commands per drive before it is abandoned as runaway.
    pub max_commands_per_drive: u64,
    pub rules: Rules,
    /// Which claim the drivers make (see [`ClaimPath`]).
    pub claim_path: ClaimPath,
}

impl RuntimeConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.rules.params.validate()?;
        if self.drivers == 0 {
            return Err("drivers must be at least 1".into());
        }
        let presumed = Duration::from_millis(self.rules.params.presumed_loss_ms);
        if self.heartbeat_interval * 2 > presumed {
            return Err(format!(
                "heartbeat_interval ({:?}) must be at most half of presumed_loss ({presumed:?}) so one missed beat is not a loss",
                self.heartbeat_interval
            ));
        }
        Ok(())
    }
}

/// The default owner prefix: `<hostname>/<pid>`.
pub fn default_owner_prefix() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/{}", std::process::id())
}

struct RuntimePacing {
    poll: Duration,
    backoff: Duration,
    health: Arc<HeartbeatHealth>,
}

#[async_trait]
impl Pacing for RuntimePacing {
    async fn wait(&self, why: WaitFor) {
        tokio::time::sleep(match why {
            WaitFor::Poll => self.poll,
            WaitFor::Backoff => self.backoff,
        })
        .await;
    }
    fn heartbeat_ok_age_ms(&self) -> u64 {
        self.health.age_ms()
    }
}

/// A running pool of drivers.
pub struct Runtime {
    pub store: Arc<dyn Store>,
    pub engine: Arc<dyn Engine>,
    pub config: RuntimeConfig,
    /// Wakes the poller when new work arrives in this process.
    pub wake: Arc<Notify>,
    /// Every lease this process holds, renewed together by [`Runtime::run`]'s heartbeat loop.
    heartbeats: Arc<Heartbeats>,
    /// Waits held without a driver (a Spirit runner waiting for a person's cutover).
    watches: Arc<Watches>,
}

/// How one drive ended, for the caller's logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveEnd {
    Finished(DriveReport),
    LeaseLostByHeartbeat,
    /// Heartbeats failed for the presumed-loss bound: the drive was cancelled, even inside an
    /// engine call, before a peer may reclaim.
    PresumedLost,
    Panicked(String),
    ShutDown,
}

impl Runtime {
    pub fn new(store: Arc<dyn Store>, engine: Arc<dyn Engine>, config: RuntimeConfig) -> Runtime {
        Runtime {
            store,
            engine,
            config,
            wake: Arc::new(Notify::new()),
            heartbeats: Arc::default(),
            watches: Arc::default(),
        }
    }

    /// How many leases this process holds right now (drives and watched waits).
    pub fn leases_held(&self) -> usize {
        self.heartbeats.len()
    }

    /// How many waits this process watches without a driver.
    pub fn watched(&self) -> usize {
        self.watches.len()
    }

    /// Run until `shutdown` turns true, then stop claiming, let drives finish up to the deadline,
    /// and release the leases still held.
    ///
    /// One poller per process claims for every free driver: an idle process makes one cheap read
    /// per poll interval ([`Store::may_have_work`]) whatever its driver count. A wake-up (a submit
    /// in this process) or a driver coming free polls at once.
    ///
    /// Dropping the returned future aborts every drive and heartbeat at once without releasing
    /// anything — exactly what a killed process leaves behind.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let heartbeat = tokio::spawn(
            self.heartbeats
                .clone()
                .run(self.store.clone(), self.config.heartbeat_interval),
        );
        let _heartbeat_guard = AbortOnDrop(heartbeat.abort_handle());
        let mut free: BTreeSet<usize> = (0..self.config.drivers).collect();
        let mut slots: HashMap<tokio::task::Id, usize> = HashMap::new();
        let mut drives = tokio::task::JoinSet::new();
        let mut poll_now = true;
        while !*shutdown.borrow() {
            // Watched waits are looked at every poll even with every driver busy: a lease lost or
            // presumed lost must end its runner at once, whoever is free to drive.
            let polls = !free.is_empty() || !self.watches.is_empty();
            if poll_now && polls {
                poll_now = false;
                self.poll(&mut free, &mut slots, &mut drives, &shutdown)
                    .await;
            }
            let polls = !free.is_empty() || !self.watches.is_empty();
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval), if polls => poll_now = true,
                _ = self.wake.notified() => poll_now = true,
                Some(done) = drives.join_next_with_id() => {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(e) => e.id(),
                    };
                    if let Some(slot) = slots.remove(&id) {
                        free.insert(slot);
                    }
                    if let Err(e) = done {
                        warn!(error = %e, "a drive task ended abnormally");
                    }
                    poll_now = true;
                }
                _ = shutdown.changed() => {}
            }
        }
        // Watched waits hold no work in progress: end them first, before the drives' deadline.
        // A watched runner must not outlive the lease: end it, then give the lease back so a
        // peer resumes from the runner's checkpoint at once.
        for w in self.watches.drain() {
            let lease = w.claimed.lease.clone();
            self.engine.abandon(&w.claimed.record, lease.epoch).await;
            drop(w);
            if let Err(e) = self.store.release(&lease).await {
                warn!(apply = lease.apply, error = %e, "could not release a watched lease on shutdown");
            }
        }
        while drives.join_next().await.is_some() {}
    }

    /// One poll: watched waits first (a request or a runner off its gate hands one to a free
    /// driver), then a cheap read, then expiry and claims for as many free drivers as there is
    /// work.
    async fn poll(
        self: &Arc<Self>,
        free: &mut BTreeSet<usize>,
        slots: &mut HashMap<tokio::task::Id, usize>,
        drives: &mut tokio::task::JoinSet<DriveEnd>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let round = self
            .watches
            .round(
                self.store.as_ref(),
                self.engine.as_ref(),
                &self.heartbeats,
                &self.config.rules,
            )
            .await;
        for w in round.handoffs {
            let Some(&slot) = free.first() else {
                self.watches.put_back(w);
                continue;
            };
            free.remove(&slot);
            let span = info_span!(
                "drive",
                apply = w.claimed.lease.apply,
                epoch = w.claimed.lease.epoch,
                owner = %w.claimed.lease.owner,
                from = %w.claimed.pre_claim,
                handed = "watch"
            );
            let handle = drives.spawn(
                self.clone()
                    .drive_held(w.claimed, w.held, w.holding, shutdown.clone())
                    .instrument(span),
            );
            slots.insert(handle.id(), slot);
        }
        if free.is_empty() {
            return;
        }
        match self.store.may_have_work().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                warn!(error = %e, "polling for work failed");
                return;
            }
        }
        // Expiry errors never starve claims.
        if let Err(e) = self.store.expire_retryable().await {
            warn!(error = %e, "retry expiry failed; claiming anyway");
        }
        while let Some(&slot) = free.first() {
            if *shutdown.borrow() {
                return;
            }
            let owner = format!("{}/driver-{slot}", self.config.owner_prefix);
            let claim_span = info_span!("claim", owner = %owner, path = ?self.config.claim_path);
            let claimed = match claim_next(self.store.as_ref(), self.config.claim_path, &owner)
                .instrument(claim_span.clone())
                .await
            {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    claim_span.in_scope(|| warn!(error = %e, "claim failed"));
                    return;
                }
            };
            claim_span.in_scope(|| {
                info!(
                    apply = claimed.lease.apply,
                    epoch = claimed.lease.epoch,
                    arm = claimed.arm.code(),
                    from = %claimed.pre_claim,
                    "claimed"
                )
            });
            ::metrics::counter!("applyd_claims_total", "arm" => claimed.arm.code()).increment(1);
            if claimed.pre_claim != ApplyState::Pending {
                ::metrics::counter!("applyd_reclaims_total").increment(1);
            }
            let span = info_span!(
                "drive",
                apply = claimed.lease.apply,
                epoch = claimed.lease.epoch,
                owner = %owner,
                arm = claimed.arm.code(),
                from = %claimed.pre_claim
            );
            free.remove(&slot);
            let handle = drives.spawn(
                self.clone()
                    .drive_claimed(claimed, shutdown.clone())
                    .instrument(span),
            );
            slots.insert(handle.id(), slot);
        }
    }

    /// Drive one claimed apply; contain panics to this apply. Its lease is renewed by the
    /// process heartbeat that [`Runtime::run`] keeps (a drive run on its own has none, and ends
    /// at the presumed-loss bound).
    pub async fn drive_claimed(
        self: Arc<Self>,
        claimed: Claimed,
        shutdown: watch::Receiver<bool>,
    ) -> DriveEnd {
        let (held, holding) = self.heartbeats.hold(claimed.lease.clone());
        self.drive_held(claimed, held, holding, shutdown).await
    }

    /// [`Runtime::drive_claimed`] for a lease already in the heartbeat (a watched wait handed
    /// back to a driver).
    async fn drive_held(
        self: Arc<Self>,
        claimed: Claimed,
        held: Held,
        holding: Holding,
        mut shutdown: watch::Receiver<bool>,
    ) -> DriveEnd {
        let health = held.health.clone();
        let lease_lost = held.lost.clone();
        let drive = {
            let rt = self.clone();
            let claimed = claimed.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let pacing = RuntimePacing {
                    poll: rt.config.poll_interval,
                    backoff: rt.config.backoff,
                    health,
                };
                run_drive(
                    rt.store.as_ref(),
                    rt.engine.as_ref(),
                    &claimed,
                    &rt.config.rules,
                    &pacing,
                    rt.config.max_commands_per_drive,
                )
                .await
            })
        };
        let abort = drive.abort_handle();
        let _drive_guard = AbortOnDrop(abort.clone());
        let end = tokio::select! {
            joined = drive => match joined {
                Ok(report) => DriveEnd::Finished(report),
                Err(e) if e.is_panic() => DriveEnd::Panicked(panic_message(e.into_panic())),
                Err(_) => DriveEnd::ShutDown,
            },
            _ = lease_lost.notified() => {
                abort.abort();
                DriveEnd::LeaseLostByHeartbeat
            }
            _ = presumed_loss(&health, &self.config) => {
                abort.abort();
                DriveEnd::PresumedLost
            }
            _ = wait_shutdown(&mut shutdown, self.config.shutdown_deadline) => {
                abort.abort();
                DriveEnd::ShutDown
            }
        };
        // A watched wait keeps its lease in the heartbeat; nothing else is renewed past its
        // drive (a park or a release is final).
        match &end {
            DriveEnd::Finished(report) if report.finish == Finish::Watched => {
                self.watches.add(
                    claimed.clone(),
                    held,
                    holding,
                    report.last_state,
                    self.engine.clone(),
                    &self.config,
                );
            }
            _ => drop(holding),
        }
        match &end {
            DriveEnd::Finished(report) => {
                info!(finish = ?report.finish, commands = report.commands, engine_calls = report.engine_calls, "drive ended");
                if report.finish == Finish::LeaseLost {
                    ::metrics::counter!("applyd_stale_writes_rejected_total").increment(1);
                }
                if matches!(report.finish, Finish::Inconsistent(_)) {
                    warn!(finish = ?report.finish, "drive stopped fail-closed; the apply stays claimable");
                }
            }
            DriveEnd::LeaseLostByHeartbeat => {
                warn!("lease lost (heartbeat bounced); drive cancelled")
            }
            DriveEnd::PresumedLost => {
                ::metrics::counter!("applyd_lease_losses_total").increment(1);
                warn!(
                    presumed_loss_ms = self.config.rules.params.presumed_loss_ms,
                    "heartbeats failing past the presumed-loss bound; drive cancelled, nothing more is written or called"
                )
            }
            DriveEnd::Panicked(msg) => {
                // Fail only this apply, and not as retryable: a panic would loop.
                warn!(panic = %msg, "drive panicked; failing the apply");
                let reason = format!("the operator's drive panicked: {msg}");
                if let Err(e) = self.store.fail_apply(&claimed.lease, &reason).await {
                    warn!(error = %e, "could not record the panic; the apply stays claimable");
                }
            }
            DriveEnd::ShutDown => {
                if let Err(e) = self.store.release(&claimed.lease).await {
                    warn!(error = %e, "could not release the lease on shutdown; peers reclaim after stale-after");
                } else {
                    info!("lease released on shutdown");
                }
            }
        }
        end
    }
}

/// Aborts a spawned task when the owner of the guard goes away (a killed driver kills its drive).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// See [`heartbeats::presumed_loss`]; a hung engine call never returns to the core.
async fn presumed_loss(health: &HeartbeatHealth, config: &RuntimeConfig) {
    heartbeats::presumed_loss(health, &config.rules, config.heartbeat_interval).await
}

/// Resolves once shutdown was requested and the deadline after it has passed.
async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>, deadline: Duration) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    tokio::time::sleep(deadline).await;
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}
