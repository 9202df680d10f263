//! The webhook deliverer against MariaDB and real HTTP receivers: what it sends, what it passes
//! over, when it gives up, and what its errors say.

#[macro_use]
mod store_support;

use std::sync::{Arc, Mutex};

use applyd::config::{Secret, WebhookEndpoint, WebhooksSection};
use applyd::machine::{ControlOp, EngineKind};
use applyd::operator::webhooks::{Deliverer, DelivererConfig};
use applyd::store::webhooks::{Deliveries, EndpointHealth, EventKind};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use store_support::{new_apply, Backend, Env};

/// What the receivers were sent: (path, body).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A receiver on loopback: `/ok/...` accepts, `/refuse` answers 400 with a megabyte of words.
async fn receiver() -> (std::net::SocketAddr, Received) {
    let received: Received = Arc::default();
    let ok = received.clone();
    let refused = received.clone();
    let app = Router::new()
        .route(
            "/ok/{*rest}",
            post(move |_: HeaderMap, body: Bytes| {
                let r = ok.clone();
                async move {
                    r.lock().unwrap().push(("/ok".into(), body.to_vec()));
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/refuse",
            post(move |body: Bytes| {
                let r = refused.clone();
                async move {
                    r.lock().unwrap().push(("/refuse".into(), body.to_vec()));
                    (StatusCode::BAD_REQUEST, "no ".repeat(350_000))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

fn endpoint(name: &str, url: String, kinds: &[EventKind]) -> WebhookEndpoint {
    WebhookEndpoint {
        name: name.into(),
        url: url.parse().unwrap(),
        secret: Secret::new("k3y"),
        kinds: kinds.to_vec(),
    }
}

fn health_of<'a>(health: &'a [EndpointHealth], name: &str) -> &'a EndpointHealth {
    health
        .iter()
        .find(|h| h.endpoint == name)
        .unwrap_or_else(|| panic!("no health for {name}: {health:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_kinds_are_passed_over_a_refused_event_is_abandoned_and_urls_stay_out_of_errors() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let store = match &env.backend {
        Backend::MySql { store, .. } => store.clone(),
        Backend::Memory { .. } => unreachable!("a MySQL env"),
    };
    let (addr, received) = receiver().await;
    let endpoints = vec![
        endpoint(
            "failures",
            format!("http://{addr}/ok/s3cret-path"),
            &[EventKind::Failure],
        ),
        endpoint("refuser", format!("http://{addr}/refuse"), &EventKind::ALL),
        // Nothing listens on port 1: the error must not carry the token in the path.
        endpoint(
            "nowhere",
            "http://127.0.0.1:1/hook/tok3n".into(),
            &EventKind::ALL,
        ),
    ];
    let mut config =
        DelivererConfig::new("d1".into(), &WebhooksSection::default(), endpoints.clone());
    config.timeout = std::time::Duration::from_secs(2);
    config.max_attempts = 2;
    let deliverer = Deliverer::new(store.clone() as Arc<dyn Deliveries>, config).unwrap();
    // The first pass registers the endpoints: they receive what is recorded from then on.
    deliverer.pass().await.unwrap();
    let id = env
        .store
        .submit(new_apply("db1", EngineKind::Spirit))
        .await
        .unwrap();
    env.store.claim("w1").await.unwrap().unwrap();
    env.store.request(id, ControlOp::Stop).await.unwrap();
    // A state change and a request, to each endpoint. Passes until nothing is due, the store's
    // clock moved past every backoff in between.
    for _ in 0..12 {
        deliverer.pass().await.unwrap();
        env.advance(2_001);
    }
    let health = store.health().await.unwrap();

    let failures = health_of(&health, "failures");
    assert_eq!(
        (failures.delivered, failures.pending, failures.failing),
        (2, 0, 0),
        "passed over as delivered"
    );
    assert!(
        received
            .lock()
            .unwrap()
            .iter()
            .all(|(path, _)| path != "/ok"),
        "an endpoint receiving failures only was sent another kind"
    );

    let refuser = health_of(&health, "refuser");
    assert_eq!(
        (refuser.delivered, refuser.pending, refuser.abandoned),
        (0, 0, 2),
        "each event given up after its two attempts, the second not held back for ever"
    );
    let refused = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _)| path == "/refuse")
        .count();
    assert_eq!(refused, 4, "two attempts per event");
    let error = refuser.last_error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("abandoned after 2 attempts: HTTP 400 Bad Request: no no"),
        "{error}"
    );
    assert!(
        error.len() < 300,
        "the answer is cut short: {}",
        error.len()
    );

    let nowhere = health_of(&health, "nowhere");
    let error = nowhere.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("cannot reach the endpoint"), "{error}");
    assert!(
        !error.contains("tok3n") && !error.contains("/hook"),
        "the URL leaked: {error}"
    );
    env.cleanup().await;
}
