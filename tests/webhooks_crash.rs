//! Webhooks through crashes, on real processes: MariaDB, the fake engines over loopback, three
//! `applyd serve` processes delivering to a receiver in this test over real HTTP. The receiver
//! verifies every signature and sometimes answers 500 or hangs past the deliverers' timeout;
//! a loop SIGKILLs whichever process holds delivery leases (and restarts it). In the end every
//! event in the outbox was received at least once, every move in the audit log has its event,
//! every signature was valid and nothing is left undelivered.

mod serve_support;
mod store_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use applyd::machine::{ApplyOptions, ControlOp, EngineKind, Rules};
use applyd::store::mysql::MySqlStore;
use applyd::store::status::Inspect;
use applyd::store::{NewApply, Store, Target};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serve_support::{fake_engines, operator_command, remote_fake, Killed};
use sha2::Sha256;
use sqlx::Row;

const SECRET: &str = "crash-test-secret";

/// What the receiver saw.
#[derive(Default, Clone)]
struct Received {
    /// Event id → how many times it was accepted (answered 2xx).
    accepted: BTreeMap<String, u32>,
    requests: u64,
    bad_signatures: Vec<String>,
    /// Answered 500 or left hanging on purpose.
    refused: u64,
    /// (apply, event number) in the order they were first taken in.
    first_arrivals: Vec<(u64, u64)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn receive(
    state: axum::extract::State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let id = header("x-applyd-event-id");
    // As a receiver checks it: `t=<send time>,v1=<HMAC of "<t>.<body>">`, the time the one in
    // the timestamp header and recent.
    let t = header("x-applyd-timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let expected = format!("t={t},v1={}", hex(&mac.finalize().into_bytes()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fresh = t.parse::<u64>().is_ok_and(|t| now.abs_diff(t) <= 300);
    let n = {
        let mut r = state.lock().unwrap();
        r.requests += 1;
        if header("x-applyd-signature") != expected || !fresh {
            r.bad_signatures.push(id.clone());
        }
        let body_id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string));
        if body_id.as_deref() != Some(id.as_str()) {
            r.bad_signatures.push(format!("{id}: body id {body_id:?}"));
        }
        r.requests
    };
    let apply = parsed_apply(&body);
    // Every 7th request fails, every 11th is taken in but answered past the deliverers'
    // timeout (a duplicate follows).
    if n % 7 == 0 {
        state.lock().unwrap().refused += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let late = n % 11 == 0;
    {
        let mut r = state.lock().unwrap();
        let number = id.trim_start_matches("evt-").parse().unwrap_or(0);
        let seen = r.accepted.entry(id).or_default();
        *seen += 1;
        if *seen == 1 {
            r.first_arrivals.push((apply, number));
        }
        r.refused += u64::from(late);
    }
    if late {
        // Taken in, but the answer comes too late: the deliverer sends it again.
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    StatusCode::OK
}

fn parsed_apply(body: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["apply_id"].as_u64())
        .unwrap_or(0)
}

async fn start_receiver(received: Arc<Mutex<Received>>) -> SocketAddr {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(received);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// An operator process, killed on drop, and the host its Spirit runners live on.
struct Proc {
    /// Held for its drop, which kills it.
    _process: Killed,
    host: u32,
}

fn spawn_operator(db_url: &str, engines_url: &str, config: &std::path::Path, host: u32) -> Proc {
    let child = operator_command(db_url, &format!("hook-p{host}"), 2000)
        .arg("--config")
        .arg(config)
        .envs(remote_fake(engines_url, host))
        .spawn()
        .expect("start applyd serve");
    Proc {
        _process: Killed(child),
        host,
    }
}

/// Poll `done` until it holds or `within` passes; true if it held.
async fn poll_until<F, Fut>(within: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done().await
}

async fn scalar(store: &MySqlStore, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(store.pool())
        .await
        .expect(sql)
        .try_get::<Option<i64>, _>(0)
        .expect(sql)
        .unwrap_or(0)
}

/// Apply `i`: every sixth (a Spirit one) adds a column every fake table already has, and
/// fails for good, with a reason.
async fn submit(store: &MySqlStore, i: u32) -> u64 {
    let column = if i % 6 == 5 { "id" } else { "c" };
    let engine = if i % 2 == 0 {
        EngineKind::PlanetScale
    } else {
        EngineKind::Spirit
    };
    store
        .submit(NewApply {
            allow_destructive: false,
            rollout: None,
            target: Target {
                database: format!("db{i}"),
                environment: "prod".into(),
            },
            engine,
            ddl: vec![format!("ALTER TABLE t{i} ADD COLUMN {column} INT")],
            options: ApplyOptions {
                skip_revert: true,
                ..Default::default()
            },
        })
        .await
        .expect("submit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_through_sigkills_with_valid_signatures() {
    let Some(url) = store_support::mysql_url() else {
        return;
    };
    let (options, name) = store_support::fresh_database(&url).await;
    let db_url = format!("{}/{name}", url.trim_end_matches('/'));
    let store = MySqlStore::connect_with(options, Rules::default(), 8)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");

    let received = Arc::new(Mutex::new(Received::default()));
    let receiver = start_receiver(received.clone()).await;
    let config = std::env::temp_dir().join(format!("applyd-hooks-{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[webhooks]\ntimeout_ms = 500\nmax_backoff_ms = 2000\n\n\
             [[webhooks.endpoints]]\nname = \"receiver\"\nurl = \"http://{receiver}/hook\"\n\
             secret = {{ value = \"{SECRET}\" }}\n"
        ),
    )
    .unwrap();

    let (engines, engines_url) = fake_engines(&["--fast"], &[]);
    let http = reqwest::Client::new();

    let mut procs: Vec<Proc> = (1..=3)
        .map(|h| spawn_operator(&db_url, &engines_url, &config, h))
        .collect();
    let mut next_host = 4u32;
    // An endpoint receives the events from its first sweep on: let a deliverer serve it first.
    assert!(
        poll_until(Duration::from_secs(20), || async {
            scalar(&store, "SELECT COUNT(*) FROM webhook_endpoints").await == 1
        })
        .await,
        "a deliverer registers the endpoint"
    );

    let mut ids = Vec::new();
    for i in 0..8u32 {
        ids.push(submit(&store, i).await);
    }
    // Requests: a cancel of two applies (accepted or refused by the rules, whichever state
    // they are in; an accepted one records a request event).
    for id in [ids[3], ids[6]] {
        let _ = store.request(id, ControlOp::Cancel).await;
    }

    // Kill whichever process holds delivery leases while events flow; a fixed pseudo-random
    // sequence keeps the schedule reproducible.
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let chaos_until = Instant::now() + Duration::from_secs(15);
    let mut kills = 0;
    while Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_millis(800 + next() % 1_200)).await;
        let holders: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT lease_owner FROM webhook_deliveries \
             WHERE lease_owner IS NOT NULL AND delivered_at IS NULL",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        let victim = procs
            .iter()
            .position(|p| holders.contains(&format!("hook-p{}/webhooks", p.host)))
            .unwrap_or((next() % procs.len() as u64) as usize);
        let dead = std::mem::replace(
            &mut procs[victim],
            spawn_operator(&db_url, &engines_url, &config, next_host),
        );
        next_host += 1;
        let host = dead.host;
        drop(dead);
        let _ = http
            .post(format!("{engines_url}/_fake/crash-host/{host}"))
            .send()
            .await;
        kills += 1;
        // More work while the deliverers die: events keep flowing.
        for _ in 0..2 {
            let i = ids.len() as u32;
            ids.push(submit(&store, i).await);
        }
    }

    let settled = poll_until(Duration::from_secs(40), || async {
        let applies = store.list(100).await.expect("list");
        let finished = applies.iter().all(|a| a.state.is_terminal());
        let events = scalar(&store, "SELECT COUNT(*) FROM webhook_outbox").await;
        let deliveries = scalar(
            &store,
            "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NOT NULL",
        )
        .await;
        finished && events > 0 && deliveries == events
    })
    .await;
    drop(procs);
    drop(engines);
    let _ = std::fs::remove_file(&config);

    let events: BTreeSet<String> =
        sqlx::query_scalar::<_, u64>("SELECT id FROM webhook_outbox ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|id| format!("evt-{id}"))
            .collect();
    let undelivered = scalar(
        &store,
        "SELECT COUNT(*) FROM webhook_outbox o WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
         WHERE d.event_id = o.id AND d.delivered_at IS NOT NULL)",
    )
    .await;
    let retries = scalar(
        &store,
        "SELECT CAST(SUM(attempts) - COUNT(*) AS SIGNED) FROM webhook_deliveries",
    )
    .await;
    let kinds: Vec<String> = sqlx::query(
        "SELECT kind, CAST(COUNT(*) AS SIGNED) AS n FROM webhook_outbox GROUP BY kind ORDER BY kind",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|row| {
        let kind: String = row.try_get_unchecked("kind").unwrap();
        let n: i64 = row.try_get("n").unwrap();
        format!("{n} {kind}")
    })
    .collect();
    let r = received.lock().unwrap().clone();
    let got: BTreeSet<String> = r.accepted.keys().cloned().collect();
    let missing: Vec<&String> = events.difference(&got).collect();
    assert!(
        settled,
        "everything settled: {undelivered} undelivered, missing {missing:?}"
    );
    assert!(missing.is_empty(), "events never received: {missing:?}");
    assert!(got.is_subset(&events), "only recorded events are sent");
    assert_eq!(undelivered, 0, "no delivery left undelivered");
    assert!(
        r.bad_signatures.is_empty(),
        "bad signatures: {:?}",
        r.bad_signatures
    );
    // The endpoint saw each apply's events in id order (first arrivals; duplicates aside).
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (apply, event) in &r.first_arrivals {
        let before = last.insert(*apply, *event).unwrap_or(0);
        assert!(
            before < *event,
            "apply-{apply}: evt-{event} arrived after evt-{before}"
        );
    }

    // Every move in the audit log has its event (same apply, same from/to, same order).
    let logs = store.stored_logs().await.expect("logs");
    for id in &ids {
        let moves: Vec<(String, String)> = logs
            .iter()
            .filter(|l| l.apply == *id && l.from != l.to)
            .map(|l| (l.from.clone(), l.to.clone()))
            .collect();
        let evented: Vec<(String, String)> = store
            .webhook_events(*id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.payload.get("to").is_some())
            .map(|e| {
                (
                    e.payload["from"].as_str().unwrap_or_default().to_string(),
                    e.payload["to"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert!(!moves.is_empty());
        assert_eq!(moves, evented, "apply-{id}: every move has its event");
    }
    assert!(kills >= 5, "the chaos loop ran: {kills} kills");
    let failures: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(JSON_UNQUOTE(JSON_EXTRACT(payload, '$.reason')) AS CHAR) FROM webhook_outbox WHERE kind = 'failure'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        !failures.is_empty(),
        "the failing applies sent failure events"
    );
    assert!(
        failures.iter().all(|why| !why.is_empty() && why != "null"),
        "each failure says why: {failures:?}"
    );
    let duplicates: u32 = r.accepted.values().map(|n| n - 1).sum();
    eprintln!(
        "webhooks crash test: {} events ({}), {} received ({} duplicates), {} kills, {} retries, {} refused or hung by the receiver, 0 bad signatures",
        events.len(),
        kinds.join(", "),
        got.len(),
        duplicates,
        kills,
        retries,
        r.refused
    );
    store_support::drop_database(&url, &name).await;
}
