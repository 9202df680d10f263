//! The webhook deliverer: one task per `applyd serve` process. Every process may deliver any
//! event: deliveries are leased in the store (`store::webhooks::Deliveries`) the way applies
//! are, so two live deliverers never hold the same (event, endpoint), and a killed deliverer's
//! deliveries fall due again when their lease ends.
//!
//! One pass: sweep (create the delivery rows of new events for each endpoint), lease a small
//! batch of due deliveries oldest event first, POST them one after another, mark each delivered
//! (2xx) or failed with its next attempt after a capped exponential backoff; every mark is
//! fenced by the delivery lease. Every minute it prunes delivered events past the retention,
//! also when no endpoint is configured (events are always recorded).
//!
//! Guarantees: at least once (a receiver de-duplicates on the event id). Within one apply ids
//! grow in commit order, and an endpoint is sent an apply's next event only once the previous
//! one was accepted (the store leases only the head of each (endpoint, apply)): a failing event
//! holds back the later events of its apply, never those of other applies. A redelivered
//! duplicate of an accepted event may still arrive after it.

pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{WebhookEndpoint, WebhooksSection};
use crate::store::webhooks::{event_id, Deliveries, LeasedDelivery};
use crate::store::StoreError;
use signing::{backoff_ms, signature, EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// Room in a delivery lease, beyond its POSTs, for marking them.
const MARK_MARGIN_MS: u64 = 2_000;
/// The most of a refusing receiver's answer read (its first 200 characters are kept).
const ERROR_BODY_BYTES: usize = 1024;

/// How the deliverer paces itself.
#[derive(Debug, Clone)]
pub struct DelivererConfig {
    /// The delivery lease owner (the process's owner id).
    pub owner: String,
    pub endpoints: Vec<WebhookEndpoint>,
    pub timeout: Duration,
    pub max_backoff_ms: u64,
    /// Attempts after which a delivery is abandoned.
    pub max_attempts: u32,
    pub retention_hours: u64,
    /// Deliveries leased at once; they are sent one after another within one lease.
    pub batch: u32,
    /// The pause when nothing was due.
    pub idle_poll: Duration,
    pub prune_every: Duration,
}

impl DelivererConfig {
    pub fn new(owner: String, section: &WebhooksSection, endpoints: Vec<WebhookEndpoint>) -> Self {
        DelivererConfig {
            owner,
            endpoints,
            timeout: Duration::from_millis(section.timeout_ms),
            max_backoff_ms: section.max_backoff_ms,
            max_attempts: section.max_attempts,
            retention_hours: section.retention_hours,
            batch: 4,
            idle_poll: Duration::from_millis(500),
            prune_every: Duration::from_secs(60),
        }
    }

    /// A batch is sent one POST after another, each bounded by the timeout: the lease covers
    /// them all with room to mark the last one, so no live deliverer's lease runs out.
    pub fn lease_ms(&self) -> u64 {
        let timeout_ms = self.timeout.as_millis() as u64;
        timeout_ms
            .saturating_mul(u64::from(self.batch.max(1)))
            .saturating_add(MARK_MARGIN_MS)
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub leased: usize,
    pub delivered: usize,
    pub failed: usize,
    /// Of kinds their endpoint does not receive: marked delivered unsent.
    pub skipped: usize,
    /// Left to fall due again: too little of the lease was left to send them.
    pub deferred: usize,
}

/// How one leased delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Delivered,
    Failed,
    Skipped,
}

pub struct Deliverer {
    store: Arc<dyn Deliveries>,
    config: DelivererConfig,
    client: reqwest::Client,
}

impl Deliverer {
    pub fn new(store: Arc<dyn Deliveries>, config: DelivererConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A receiver's redirect is its error, not a new place to send a signed body.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Deliverer {
            store,
            config,
            client,
        })
    }

    /// Deliver and prune until `shutdown` turns true; a store error waits a poll and retries.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let names: Vec<&str> = self
            .config
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        info!(endpoints = ?names, owner = %self.config.owner, "webhook deliverer started");
        let mut last_prune: Option<tokio::time::Instant> = None;
        while !*shutdown.borrow() {
            // The pass first: its sweep marks this process's endpoints as served before a
            // prune could take them for forgotten ones.
            let busy = match self.pass().await {
                Ok(pass) => pass.leased as u32 >= self.config.batch,
                Err(e) => {
                    warn!(error = %e, "webhook delivery pass failed; trying again");
                    false
                }
            };
            if last_prune.is_none_or(|t| t.elapsed() >= self.config.prune_every) {
                last_prune = Some(tokio::time::Instant::now());
                self.prune().await;
                self.publish_health().await;
            }
            if !busy {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.idle_poll) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        info!("webhook deliverer stopped");
    }

    /// One sweep, lease and send.
    pub async fn pass(&self) -> Result<Pass, StoreError> {
        if self.config.endpoints.is_empty() {
            return Ok(Pass::default());
        }
        let names = self.endpoint_names();
        self.store.sweep(&names).await?;
        let leased_at = tokio::time::Instant::now();
        let leased = self
            .store
            .lease_due(
                &names,
                &self.config.owner,
                self.config.lease_ms(),
                self.config.batch,
            )
            .await?;
        let mut pass = Pass {
            leased: leased.len(),
            ..Pass::default()
        };
        // Each POST must end, and be marked, inside the lease: once less than that is left
        // (slow marks), the rest wait for the lease to end and fall due again, rather than go
        // out while another deliverer may already hold them.
        let lease = Duration::from_millis(self.config.lease_ms());
        let needed = self.config.timeout + Duration::from_millis(MARK_MARGIN_MS);
        for d in &leased {
            if leased_at.elapsed() + needed > lease {
                pass.deferred += 1;
                continue;
            }
            match self.deliver(d).await {
                Sent::Delivered => pass.delivered += 1,
                Sent::Failed => pass.failed += 1,
                Sent::Skipped => pass.skipped += 1,
            }
        }
        Ok(pass)
    }

    fn endpoint_names(&self) -> Vec<String> {
        self.config
            .endpoints
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// Send one delivery and mark it.
    async fn deliver(&self, d: &LeasedDelivery) -> Sent {
        let Some(endpoint) = self.config.endpoints.iter().find(|e| e.name == d.endpoint) else {
            return Sent::Failed;
        };
        let label = endpoint.name.clone();
        // The kinds an endpoint receives are this process's setting: an event of another kind
        // is passed over here (every deliverer sweeps every kind, see `Deliveries::sweep`).
        if d.kind.is_some_and(|k| !endpoint.kinds.contains(&k)) {
            ::metrics::counter!("applyd_webhook_skipped_total", "endpoint" => label).increment(1);
            if let Err(e) = self.store.mark_delivered(d).await {
                debug!(event = %event_id(d.event), endpoint = %d.endpoint, error = %e, "webhook skip not recorded");
            }
            return Sent::Skipped;
        }
        let outcome = match &d.body {
            Ok(body) => self.post(endpoint, d, body).await,
            Err(why) => Err(why.clone()),
        };
        let marked = match &outcome {
            Ok(()) => {
                ::metrics::counter!("applyd_webhook_delivered_total", "endpoint" => label)
                    .increment(1);
                self.store.mark_delivered(d).await
            }
            Err(error) if d.attempts >= self.config.max_attempts => {
                ::metrics::counter!("applyd_webhook_abandoned_total", "endpoint" => label)
                    .increment(1);
                warn!(event = %event_id(d.event), endpoint = %d.endpoint, attempts = d.attempts, %error, "webhook delivery abandoned");
                let why = format!("abandoned after {} attempts: {error}", d.attempts);
                self.store.mark_abandoned(d, &why).await
            }
            Err(error) => {
                ::metrics::counter!("applyd_webhook_failed_total", "endpoint" => label)
                    .increment(1);
                let jitter = d.event.rotate_left(17) ^ u64::from(d.attempts);
                let retry_in = backoff_ms(d.attempts, self.config.max_backoff_ms, jitter);
                debug!(event = %event_id(d.event), endpoint = %d.endpoint, attempts = d.attempts, retry_in_ms = retry_in, %error, "webhook attempt failed");
                self.store.mark_failed(d, error, retry_in).await
            }
        };
        if let Err(e) = marked {
            // The lease ended and another deliverer took it over (it sends it again: at least
            // once), or the store is away (the lease runs out and it falls due again).
            debug!(event = %event_id(d.event), endpoint = %d.endpoint, error = %e, "webhook mark not recorded");
        }
        if outcome.is_ok() {
            Sent::Delivered
        } else {
            Sent::Failed
        }
    }

    async fn post(
        &self,
        endpoint: &WebhookEndpoint,
        d: &LeasedDelivery,
        body: &[u8],
    ) -> Result<(), String> {
        let sent_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_secs())
            .unwrap_or(0);
        let response = self
            .client
            .post(endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, event_id(d.event))
            .header(TIMESTAMP_HEADER, sent_at.to_string())
            .header(
                SIGNATURE_HEADER,
                signature(endpoint.secret.expose().as_bytes(), sent_at, body),
            )
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("no answer within {} ms", self.config.timeout.as_millis())
                } else {
                    // Without the URL: many receivers carry their secret in it, and this text
                    // is stored and shown.
                    format!("cannot reach the endpoint: {}", e.without_url())
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The receiver's words, bounded: they end up in the store and on the dashboard, and a
        // receiver may answer with any amount, so no more than a little is read.
        let mut response = response;
        let mut head = Vec::new();
        while head.len() < ERROR_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                _ => break,
            }
        }
        head.truncate(ERROR_BODY_BYTES);
        let words: String = String::from_utf8_lossy(&head).chars().take(200).collect();
        Err(format!("HTTP {status}: {}", words.trim()))
    }

    /// Small batches (short locks), a bounded number of them per minute: enough to keep up
    /// with any realistic event rate without holding the database for long.
    async fn prune(&self) {
        const BATCH: u32 = 500;
        const MAX_BATCHES: u32 = 20;
        let (mut events, mut endpoints) = (0, 0);
        for _ in 0..MAX_BATCHES {
            let keep = self.endpoint_names();
            match self
                .store
                .prune(self.config.retention_hours, BATCH, &keep)
                .await
            {
                Ok(p) => {
                    events += p.events;
                    endpoints += p.endpoints;
                    if p.events < u64::from(BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot prune webhook events");
                    break;
                }
            }
        }
        if events > 0 || endpoints > 0 {
            info!(events, endpoints, "pruned delivered webhook events");
        }
    }

    async fn publish_health(&self) {
        if self.config.endpoints.is_empty() {
            return;
        }
        match self.store.health().await {
            Ok(health) => {
                for h in health {
                    ::metrics::gauge!("applyd_webhook_pending", "endpoint" => h.endpoint.clone())
                        .set((h.pending + h.failing) as f64);
                    ::metrics::gauge!("applyd_webhook_failing", "endpoint" => h.endpoint)
                        .set(h.failing as f64);
                }
            }
            Err(e) => warn!(error = %e, "cannot read webhook health"),
        }
    }
}
