//! `applyd check-config` reaches every configured engine and says plainly what is wrong.

use std::str::FromStr;

use applyd::engine::fake_server::{router, FakeServerOptions};

async fn fake_planetscale() -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = FakeServerOptions {
        token: Some(("tid".into(), "good-token".into())),
        ..Default::default()
    };
    tokio::spawn(async move {
        axum::serve(listener, router(opts))
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (format!("http://{addr}/v1"), tx)
}

async fn check(config: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("applyd-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("c{}.toml", config.len()));
    std::fs::write(&path, config).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_applyd"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("APPLYD_PLANETSCALE_SERVICE_TOKEN")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reaches_planetscale_and_spirit_and_names_what_is_wrong() {
    let (api, _stop) = fake_planetscale().await;
    let ps = |token: &str| {
        format!(
            "[engines]\nkind = \"real\"\n[engines.planetscale]\norganization = \"acme\"\ndatabase = \"shop\"\napi_url = \"{api}\"\nservice_token_id = \"tid\"\nservice_token = {{ value = \"{token}\" }}\nattempts = 1\n"
        )
    };
    let (ok, out) = check(&ps("good-token")).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("planetscale organization") && out.contains("planetscale database"),
        "{out}"
    );
    assert!(
        out.contains("deploys need no approval") && out.contains("main has safe migrations on"),
        "{out}"
    );

    let (ok, out) = check(&ps("pscale_tkn_very_secret")).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL") && out.contains("service token"),
        "{out}"
    );
    assert!(
        !out.contains("pscale_tkn_very_secret"),
        "the token leaked: {out}"
    );

    let spirit = |binary: &str, host: &str, port: u16, user: &str| {
        format!(
            "[engines]\nkind = \"real\"\n[engines.spirit]\nbinary = \"{binary}\"\nhost = \"{host}\"\nport = {port}\nusername = \"{user}\"\n"
        )
    };
    let (ok, out) = check(&spirit("/nonexistent/spirit", "127.0.0.1", 9, "x")).await;
    assert!(!ok);
    assert!(out.contains("cannot run /nonexistent/spirit"), "{out}");
    assert!(
        out.contains("spirit mysql target") && out.contains("127.0.0.1:9"),
        "{out}"
    );

    let (ok, out) = check("[engines.spirt]\nbinary = \"x\"\n").await;
    assert!(!ok && out.contains("spirt"), "{out}");

    if let Ok(url) = std::env::var("APPLYD_TEST_DATABASE_URL") {
        let o = sqlx::mysql::MySqlConnectOptions::from_str(&url).unwrap();
        let (ok, out) = check(&spirit(
            env!("CARGO_BIN_EXE_applyd-spirit-standin"),
            o.get_host(),
            o.get_port(),
            o.get_username(),
        ))
        .await;
        assert!(ok, "{out}");
        assert!(
            out.contains("takes every flag applyd passes")
                && out.contains("applyd-spirit-standin 0."),
            "the flags and the version are reported: {out}"
        );
        // The check reads the installed binary's own help: the stand-in takes --target-chunk-time
        // as v0.16 does (a release without it fails the check: `engine::spirit::flags`).
        let with_chunk_time = format!(
            "{}target_chunk_time = \"500ms\"\n",
            spirit(
                env!("CARGO_BIN_EXE_applyd-spirit-standin"),
                o.get_host(),
                o.get_port(),
                o.get_username(),
            )
        );
        let (ok, out) = check(&with_chunk_time).await;
        assert!(
            ok,
            "the stand-in takes --target-chunk-time, as v0.16 does: {out}"
        );
    }
}
