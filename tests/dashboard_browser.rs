//! The dashboard in a real browser: headless Chromium driven over WebDriver against `applyd
//! serve` on MariaDB with the fake engines. Signing in (a wrong token is refused with the API's
//! words), the list and its filters, an apply page with live progress, its explanation,
//! timeline and state diagram, a cutover made from its button, and a request refused for a
//! wrong token. With `APPLYD_DASHBOARD_SCREENSHOT=path.png` it keeps a screenshot of the page.

mod serve_support;
mod store_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use applyd::machine::{ApplyOptions, ApplyState, EngineKind};
use applyd::store::status::Inspect;
use applyd::store::Store;
use fantoccini::{Client, ClientBuilder, Locator};
use serve_support::{apply, until, Killed};

const TOKEN: &str = "dashboard-test-token";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(60);

/// Chromium's WebDriver on a free port, or `None` (with a note) outside CI without Chromium.
async fn webdriver() -> Option<(Killed, String)> {
    if !std::path::Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMEDRIVER} is missing under CI: scripts/test installs chromium-driver"
        );
        eprintln!(
            "note: {CHROMEDRIVER} is missing; skipping the browser test (scripts/test installs it)"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    until("chromedriver to answer", WAIT, || {
        let http = http.clone();
        let status = format!("{url}/status");
        async move { http.get(status).send().await.is_ok() }
    })
    .await;
    Some((Killed(child), url))
}

async fn browser(webdriver: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2200"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(webdriver)
        .await
        .expect("a WebDriver session")
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Wait until the element's text satisfies `check`, as live updates replace the page's parts.
async fn until_text(c: &Client, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let last = text(c, css).await;
        if check(&last) {
            return last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what} in {css}; it says {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn rows(c: &Client) -> usize {
    c.find_all(Locator::Css("tr.apply-row"))
        .await
        .map_or(0, |r| r.len())
}

/// Click a request button, accept the confirmation it asks for, and return what the page said.
async fn request(c: &Client, op: &str, expect_confirm: &str) -> String {
    c.execute(
        "document.getElementById('action-result').textContent = ''",
        vec![],
    )
    .await
    .unwrap();
    c.find(Locator::Id(&format!("action-{op}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let asked = c.get_alert_text().await.expect("a confirmation");
    assert!(asked.contains(expect_confirm), "{asked}");
    c.accept_alert().await.unwrap();
    until_text(c, "#action-result", "the request's answer", |t| {
        !t.is_empty()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_filters_follows_progress_and_cuts_over() {
    let Some(served) = serve_support::serve(&["--phase-ms", "300"], Some(TOKEN)).await else {
        return;
    };
    let Some((_driver, webdriver_url)) = webdriver().await else {
        return;
    };
    let store = &served.store;
    // A Spirit copy of 100,000 rows at 2,000 rows/s: under way for the whole test.
    let copying = store
        .submit(apply(
            "shop",
            EngineKind::Spirit,
            ApplyOptions {
                defer_cutover: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let quick = store
        .submit(apply(
            "billing",
            EngineKind::PlanetScale,
            ApplyOptions {
                skip_revert: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let gated = store
        .submit(apply(
            "orders",
            EngineKind::PlanetScale,
            ApplyOptions {
                defer_cutover: true,
                skip_revert: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    let c = browser(&webdriver_url).await;
    let base = &served.api;

    // Signing in: the wrong token is refused with the API's words; the right one is kept.
    c.goto(&format!("{base}/")).await.unwrap();
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Id("login"))
        .await
        .expect("a sign-in form");
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let refusal = until_text(&c, "#login-refusal", "the refusal", |t| !t.is_empty()).await;
    assert_eq!(refusal, "invalid bearer token");
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Id("applies"))
        .await
        .expect("the applies list");

    // The list: every apply, counts per state, and filters.
    assert_eq!(rows(&c).await, 3);
    let counts = text(&c, "p.counts").await;
    assert!(counts.contains(':'), "{counts}");
    c.find(Locator::Css("#filter-engine option[value=planetscale]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Id("apply-filters"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the engine filter", WAIT, || {
        let c = c.clone();
        async move {
            c.current_url()
                .await
                .is_ok_and(|u| u.as_str().contains("engine=planetscale"))
        }
    })
    .await;
    assert_eq!(rows(&c).await, 2);
    let engines: Vec<String> = {
        let mut out = Vec::new();
        for r in c.find_all(Locator::Css("tr.apply-row")).await.unwrap() {
            out.push(r.attr("data-engine").await.unwrap().unwrap_or_default());
        }
        out
    };
    assert!(engines.iter().all(|e| e == "planetscale"), "{engines:?}");
    c.goto(&format!("{base}/?target=shop")).await.unwrap();
    assert_eq!(rows(&c).await, 1);

    // The copying apply: progress arrives live (no reload), with the explanation, the
    // timeline and the state diagram.
    c.goto(&format!("{base}/applies/{copying}")).await.unwrap();
    let summary = until_text(&c, ".task-summary", "Spirit's progress", |t| {
        t.contains("copyRows") && t.contains("/100000 rows")
    })
    .await;
    let progress = c
        .execute(
            "return document.querySelector('.task-progress').value",
            vec![],
        )
        .await
        .unwrap()
        .as_f64()
        .unwrap_or_default();
    assert!(progress > 0.0, "{summary}");
    let updates_before = c
        .execute("return Number(document.body.dataset.updates || 0)", vec![])
        .await
        .unwrap();
    until_text(&c, "#explanation", "the explanation", |t| {
        t.contains("owner ui-p1/") && t.contains("reclaimable by A2 in")
    })
    .await;
    let timeline = text(&c, "#timeline").await;
    assert!(
        timeline.contains("claim") && timeline.contains("pending → running"),
        "{timeline}"
    );
    let diagram = c
        .find(Locator::Css("#diagram svg"))
        .await
        .expect("the state diagram")
        .html(false)
        .await
        .unwrap();
    assert!(
        diagram.contains("waiting for cutover") && diagram.contains("f6c177"),
        "no current state highlighted"
    );
    until("a live update", WAIT, || {
        let c = c.clone();
        let before = updates_before.clone();
        async move {
            c.execute("return Number(document.body.dataset.updates || 0)", vec![])
                .await
                .is_ok_and(|n| n.as_f64() > before.as_f64())
        }
    })
    .await;
    if let Ok(path) = std::env::var("APPLYD_DASHBOARD_SCREENSHOT") {
        let png = c.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
    }

    // A request with a wrong token in the session is refused with the API's message.
    c.execute("sessionStorage.setItem('applyd-token', 'wrong')", vec![])
        .await
        .unwrap();
    let refused = request(&c, "stop", &format!("Stop apply-{copying}?")).await;
    assert_eq!(refused, "stop refused: invalid bearer token");
    assert!(store
        .status(copying)
        .await
        .unwrap()
        .pending_requests
        .is_empty());
    c.execute(
        &format!("sessionStorage.setItem('applyd-token', '{TOKEN}')"),
        vec![],
    )
    .await
    .unwrap();

    // The gated PlanetScale apply: the cutover button is enabled only at the gate, and a click
    // cuts it over.
    c.goto(&format!("{base}/applies/{gated}")).await.unwrap();
    until_text(&c, "#apply-state", "the cutover gate", |t| {
        t == "waiting_for_cutover"
    })
    .await;
    let why = text(&c, "#explanation").await;
    assert!(
        why.contains(&format!("`applyd cutover apply-{gated}`")),
        "{why}"
    );
    let answer = request(&c, "cutover", &format!("Cut over apply-{gated}?")).await;
    assert!(answer.starts_with("cutover requested"), "{answer}");
    until_text(&c, "#apply-state", "the cutover to finish", |t| {
        t == "completed"
    })
    .await;
    let timeline = text(&c, "#timeline").await;
    assert!(
        timeline.contains("cutover requested by dashboard"),
        "{timeline}"
    );
    let revert = c.find(Locator::Id("action-revert")).await.unwrap();
    assert!(
        revert.attr("disabled").await.unwrap().is_some(),
        "a completed apply takes no revert"
    );
    until("the quick apply to complete", WAIT, || async {
        store.status(quick).await.unwrap().state == ApplyState::Completed
    })
    .await;
    c.close().await.unwrap();
}
