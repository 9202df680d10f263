//! The HTTP API over real HTTP on loopback, backed by the memory store.

use std::sync::Arc;

use applyd::api::{router, ApiState};
use applyd::config::Secret;
use applyd::machine::Rules;
use applyd::store::memory::{ManualClock, MemoryStore};
use serde_json::json;

async fn start(token: Option<&str>) -> String {
    let store = Arc::new(MemoryStore::new(
        Rules::default(),
        Arc::new(ManualClock::new(0)),
    ));
    let state = ApiState {
        store: store.clone(),
        inspect: store,
        token: token.map(Secret::new),
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: Some(applyd::operator::telemetry::install()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    format!("http://{addr}")
}

fn apply_body(db: &str, engine: &str) -> serde_json::Value {
    json!({
        "target": { "database": db, "environment": "prod" },
        "engine": engine,
        "ddl": ["ALTER TABLE t ADD COLUMN c INT"],
        "options": { "defer_cutover": true }
    })
}

#[tokio::test]
async fn submit_list_control_and_errors_speak_plainly() {
    let base = start(Some("t0ken")).await;
    let http = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("t0ken");

    let created = auth(
        http.post(format!("{base}/v1/applies"))
            .json(&apply_body("shop", "planetscale")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();

    let dup = auth(
        http.post(format!("{base}/v1/applies"))
            .json(&apply_body("shop", "spirit")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(dup.status(), 409);
    assert!(dup.text().await.unwrap().contains("another active apply"));

    let bad = auth(
        http.post(format!("{base}/v1/applies"))
            .json(&json!({"target": {"database": "x"}, "engine": "spirit", "ddl": []})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    let text = bad.text().await.unwrap();
    assert!(
        text.contains("environment"),
        "names the missing field: {text}"
    );

    let wrong_engine = auth(
        http.post(format!("{base}/v1/applies"))
            .json(&apply_body("y", "oracle")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(wrong_engine.status(), 400);
    assert!(wrong_engine.text().await.unwrap().contains("oracle"));

    let no_token = http.get(format!("{base}/v1/applies")).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = http
        .get(format!("{base}/v1/applies"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(
        !wrong.text().await.unwrap().contains("t0ken"),
        "the token never appears in errors"
    );

    let stop = auth(http.post(format!("{base}/v1/applies/{id}/stop")))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 409);
    assert!(
        stop.text().await.unwrap().contains("cancel"),
        "planetscale stop says to cancel instead"
    );

    let cancel = auth(http.post(format!("{base}/v1/applies/apply-{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    let again = auth(http.post(format!("{base}/v1/applies/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(again.text().await.unwrap().contains("AlreadyPending"));

    let unknown = auth(http.post(format!("{base}/v1/applies/{id}/explode")))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    assert!(unknown.text().await.unwrap().contains("explode"));

    let missing = auth(http.get(format!("{base}/v1/applies/999")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let list: Vec<serde_json::Value> = auth(http.get(format!("{base}/v1/applies")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "pending");
    assert_eq!(list[0]["pending_requests"][0], "cancel");

    let page = auth(http.get(format!("{base}/")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("apply-1") && page.contains("id=\"applies\""),
        "{page}"
    );
    // Without the token (and no session) the dashboard asks to sign in.
    let anonymous = http.get(format!("{base}/")).send().await.unwrap();
    assert!(anonymous.url().path().ends_with("/login"));
    assert!(anonymous.text().await.unwrap().contains("Sign in"));
    let one = auth(http.get(format!("{base}/applies/apply-1")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        one.contains("Why it is here") && one.contains("<svg"),
        "{one}"
    );
    let status: serde_json::Value = auth(http.get(format!("{base}/v1/applies/1")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claim = status["explanation"]["claim"].as_str().unwrap();
    assert!(claim.contains("by A1"), "{claim}");
    assert_eq!(status["explanation"]["requests"][0]["request"], "cancel");
    let timeline: serde_json::Value = auth(http.get(format!("{base}/v1/applies/1/timeline")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(timeline[0]["kind"], "request", "{timeline}");
    assert_eq!(timeline[0]["text"], "cancel requested by api");
    let mermaid = http
        .get(format!("{base}/v1/table?format=mermaid"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(mermaid.contains("preparing_branch"));
}

#[tokio::test]
async fn without_a_token_the_api_refuses_to_listen_beyond_loopback() {
    let store = Arc::new(MemoryStore::new(
        Rules::default(),
        Arc::new(ManualClock::new(0)),
    ));
    let state = ApiState {
        store: store.clone(),
        inspect: store,
        token: None,
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: None,
    };
    let err = applyd::api::serve(state, "0.0.0.0:0".parse().unwrap(), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("without a token"), "{err}");
}

#[tokio::test]
async fn a_rollout_is_submitted_as_json_and_a_bad_one_is_refused_naming_the_field() {
    let base = start(None).await;
    let http = reqwest::Client::new();
    let submit = |body: serde_json::Value| http.post(format!("{base}/v1/applies")).json(&body);
    let rollout_body = |db: &str, rollout: serde_json::Value| {
        let mut body = apply_body(db, "spirit");
        body["rollout"] = rollout;
        body
    };

    let bad_policy = submit(rollout_body(
        "shop",
        json!({"deployments": ["us-east-1", "eu-west-1"], "cutover_policy": "sideways"}),
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(bad_policy.status(), 400);
    let text = bad_policy.text().await.unwrap();
    assert!(
        text.contains("rollout.cutover_policy") && text.contains("sideways"),
        "names the field and the value: {text}"
    );
    assert!(text.contains("rolling"), "lists what is allowed: {text}");

    let twice = submit(rollout_body("shop", json!({"deployments": ["a", "a"]})))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 422);
    let refusal: serde_json::Value = twice.json().await.unwrap();
    assert_eq!(refusal["field"], "deployments", "{refusal}");
    assert!(
        refusal["error"].as_str().unwrap().contains("named twice"),
        "{refusal}"
    );

    let list = |http: reqwest::Client| {
        let url = format!("{base}/v1/applies");
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Vec<serde_json::Value>>()
                .await
                .unwrap()
        }
    };
    assert!(list(http.clone()).await.is_empty(), "nothing was written");

    let created = submit(rollout_body(
        "shop",
        json!({
            "deployments": ["us-east-1", "us-west-2", "eu-west-1"],
            "cutover_policy": "rolling",
            "on_failure": "pause",
            "max_drivers_per_apply": 1
        }),
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let one: serde_json::Value = http
        .get(format!("{base}/v1/applies/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["rollout"]["cutover"], "rolling", "{one}");
    assert_eq!(one["rollout"]["on_failure"], "pause", "{one}");
    let deployments: Vec<&str> = one["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["deployment"].as_str().unwrap())
        .collect();
    assert_eq!(deployments, ["us-east-1", "us-west-2", "eu-west-1"]);
    assert_eq!(
        one["operations"][1]["gate"], "start: waits for operation #1 to complete",
        "{one}"
    );
}

#[tokio::test]
async fn release_is_taken_on_a_rollout_and_refused_on_a_single_apply() {
    let base = start(None).await;
    let http = reqwest::Client::new();
    let post = |path: String| {
        http.post(format!("{base}{path}"))
            .header("content-type", "application/json")
    };

    let single = post("/v1/applies".into())
        .json(&apply_body("shop", "spirit"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let mut body = apply_body("billing", "spirit");
    body["rollout"] = json!({"deployments": ["a", "b"], "on_failure": "pause"});
    let rollout = post("/v1/applies".into())
        .json(&body)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();

    let refused = post(format!("/v1/applies/{single}/release"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let text = refused.text().await.unwrap();
    assert!(text.contains("not a rollout"), "{text}");
    let status = |id: u64| {
        let url = format!("{base}/v1/applies/{id}");
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let requests = status(single).await["requests"].clone();
    assert_eq!(requests, json!([]), "nothing was recorded: {requests}");

    let released = post(format!("/v1/applies/apply-{rollout}/release"))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 202);
    let after = status(rollout).await;
    assert_eq!(after["rollout"]["released"], true, "{after}");
    assert_eq!(
        after["requests"],
        json!([["release", "completed"]]),
        "{after}"
    );

    let volume = post(format!("/v1/applies/{rollout}/volume"))
        .send()
        .await
        .unwrap();
    assert_eq!(volume.status(), 400);
    assert!(volume.text().await.unwrap().contains("volume"));
    let missing = post("/v1/applies/999/release".into()).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// A request that changes something must show no other web page made it: a browser's
/// cross-site form post (no token, no JSON) is refused, as is any request a browser marks
/// cross-site, and without a token only a loopback host is served.
#[tokio::test]
async fn requests_from_other_pages_are_refused() {
    let base = start(None).await;
    let http = reqwest::Client::new();
    let id = http
        .post(format!("{base}/v1/applies"))
        .json(&apply_body("shop", "spirit"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let form_post = http
        .post(format!("{base}/v1/applies/{id}/cancel"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(form_post.status(), 403);
    let body: serde_json::Value = form_post.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("bearer token or a JSON body"));
    let cross = http
        .post(format!("{base}/v1/applies/{id}/cancel"))
        .header("content-type", "application/json")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let rebound = http
        .post(format!("{base}/v1/applies/{id}/cancel"))
        .header("content-type", "application/json")
        .header("host", "evil.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let page = http
        .get(format!("{base}/"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert!(page.url().path().ends_with("/login"), "{}", page.url());
    let ok = http
        .post(format!("{base}/v1/applies/{id}/cancel"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
}
