//! #307: an owner write that changes no column must not be read as a lost lease on a server that
//! reports rows *changed* instead of rows *matched*.
//!
//! sqlx always asks MySQL for matched rows (the `CLIENT_FOUND_ROWS` capability). A relay on the
//! loopback clears that capability bit in the client's handshake, so the same store, through the
//! relay, talks to a server that reports changed rows. With the store's clock frozen, a repeated
//! heartbeat or write would set every column to the value it already has; every guarded write
//! must still change the row (its `write_seq`), so it still counts one row and succeeds, with
//! the flag set and cleared alike.

mod store_support;

use std::net::SocketAddr;
use std::str::FromStr;

use applyd::machine::{ApplyState, ControlOp, EngineKind, Rules};
use applyd::store::mysql::MySqlStore;
use applyd::store::Store;
use applyd::worker::ResumeState;
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::{Connection, Executor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The `CLIENT_FOUND_ROWS` capability bit (MySQL client/server protocol).
const CLIENT_FOUND_ROWS: u8 = 0x02;

/// A relay to `upstream` that clears `CLIENT_FOUND_ROWS` in each client's handshake response
/// (the first packet a client sends: 3-byte length, sequence id, then the capability flags,
/// little-endian) and passes everything else through.
async fn changed_rows_relay(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a relay");
    let addr = listener.local_addr().expect("relay address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(client, upstream));
        }
    });
    addr
}

async fn relay(client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    let mut header = [0u8; 4];
    from_client.read_exact(&mut header).await?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    from_client.read_exact(&mut payload).await?;
    if let Some(flags) = payload.first_mut() {
        *flags &= !CLIENT_FOUND_ROWS;
    }
    to_server.write_all(&header).await?;
    to_server.write_all(&payload).await?;
    tokio::io::copy(&mut from_client, &mut to_server).await?;
    Ok(())
}

/// Options for a fresh database, directly or through the relay (TLS off: the relay reads the
/// handshake in the clear).
async fn options(matched_rows: bool) -> Option<(MySqlConnectOptions, String, String)> {
    let url = store_support::mysql_url()?;
    let (options, db) = store_support::fresh_database(&url).await;
    let options = options.ssl_mode(MySqlSslMode::Disabled);
    if matched_rows {
        return Some((options, url, db));
    }
    let upstream: SocketAddr = format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .or_else(|_| SocketAddr::from_str(&format!("127.0.0.1:{}", options.get_port())))
        .expect("the test server listens on an IP address");
    let relay = changed_rows_relay(upstream).await;
    Some((
        options.host(&relay.ip().to_string()).port(relay.port()),
        url,
        db,
    ))
}

/// Rows affected by an UPDATE that changes nothing.
async fn no_op_update_count(options: &MySqlConnectOptions) -> u64 {
    let mut conn = sqlx::MySqlConnection::connect_with(options)
        .await
        .expect("connect");
    conn.execute("CREATE TABLE IF NOT EXISTS probe (id INT PRIMARY KEY, v INT)")
        .await
        .unwrap();
    conn.execute("REPLACE INTO probe VALUES (1, 7)")
        .await
        .unwrap();
    let n = conn
        .execute("UPDATE probe SET v = 7 WHERE id = 1")
        .await
        .unwrap()
        .rows_affected();
    conn.close().await.ok();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_turns_matched_rows_into_changed_rows() {
    for (matched, expected) in [(true, 1), (false, 0)] {
        let Some((options, url, db)) = options(matched).await else {
            return;
        };
        assert_eq!(
            no_op_update_count(&options).await,
            expected,
            "matched rows {matched}"
        );
        store_support::drop_database(&url, &db).await;
    }
}

async fn owner_writes_that_change_no_column_keep_the_lease(matched_rows: bool) {
    let Some((options, url, db)) = options(matched_rows).await else {
        return;
    };
    let store = MySqlStore::connect_with(options, Rules::default(), 4)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store.freeze_clock(store.now_us().await.expect("clock"));
    let id = store
        .submit(store_support::new_apply("users", EngineKind::Spirit))
        .await
        .expect("submit");
    let lease = store.claim("w1").await.unwrap().expect("claim").lease;
    let mode = if matched_rows { "matched" } else { "changed" };
    for round in 0..2 {
        store
            .heartbeat(&lease)
            .await
            .unwrap_or_else(|e| panic!("heartbeat {round} ({mode} rows): {e}"));
        store
            .write(&lease, ApplyState::Running, ResumeState::default(), None)
            .await
            .unwrap_or_else(|e| panic!("write {round} ({mode} rows): {e}"));
        store
            .load(&lease)
            .await
            .unwrap_or_else(|e| panic!("load {round} ({mode} rows): {e}"));
    }
    store
        .request(id, ControlOp::Cutover)
        .await
        .expect("request");
    store
        .complete_request(&lease, ControlOp::Cutover)
        .await
        .unwrap_or_else(|e| panic!("complete request ({mode} rows): {e}"));
    for round in 0..2 {
        store
            .release(&lease)
            .await
            .unwrap_or_else(|e| panic!("release {round} ({mode} rows): {e}"));
    }
    let again = store.claim("w2").await.unwrap().expect("a released row");
    store
        .fail_apply(&again.lease, "the drive panicked")
        .await
        .unwrap_or_else(|e| panic!("fail ({mode} rows): {e}"));
    let row = &store.stored_applies().await.unwrap()[0];
    assert_eq!((row.state.as_str(), row.lease_epoch), ("failed", 2));
    store.pool().close().await;
    store_support::drop_database(&url, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_writes_keep_the_lease_on_a_matched_rows_connection() {
    owner_writes_that_change_no_column_keep_the_lease(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_writes_keep_the_lease_on_a_changed_rows_connection() {
    owner_writes_that_change_no_column_keep_the_lease(false).await;
}
