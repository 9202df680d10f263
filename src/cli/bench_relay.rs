//! A TCP relay in front of the database that counts round trips: one each time a client speaks
//! after the server has (a request after its answer). Pings (`COM_PING`, which sqlx's pool sends
//! whenever it takes a connection back) are told apart from statements; that needs the protocol
//! in the clear, so the counted connections run without TLS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct RoundTripRelay {
    pub addr: SocketAddr,
    turns: Arc<Turns>,
}

#[derive(Default)]
struct Turns {
    all: AtomicU64,
    pings: AtomicU64,
}

/// A whole `COM_PING` packet: length 1, sequence 0, command 0x0e.
const PING: [u8; 5] = [0x01, 0x00, 0x00, 0x00, 0x0e];

impl RoundTripRelay {
    pub async fn start(upstream: (String, u16)) -> std::io::Result<RoundTripRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let turns = Arc::new(Turns::default());
        let counted = turns.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let turns = counted.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect((upstream.0.as_str(), upstream.1)).await
                    {
                        let _ = relay(client, server, turns).await;
                    }
                });
            }
        });
        Ok(RoundTripRelay { addr, turns })
    }

    /// Round trips so far over every connection: (all of them, the pings among them).
    pub fn round_trips(&self) -> (u64, u64) {
        (
            self.turns.all.load(Ordering::SeqCst),
            self.turns.pings.load(Ordering::SeqCst),
        )
    }
}

async fn relay(client: TcpStream, server: TcpStream, turns: Arc<Turns>) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // Whether the client has the floor: it speaks, then waits for the whole answer before it
    // speaks again, so the flag is set back before the client can see the answer.
    let client_speaking = Arc::new(AtomicBool::new(false));
    let speaking = client_speaking.clone();
    let answers = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_server.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            speaking.store(false, Ordering::SeqCst);
            to_client.write_all(&buf[..n]).await?;
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from_client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if !client_speaking.swap(true, Ordering::SeqCst) {
            turns.all.fetch_add(1, Ordering::SeqCst);
            if buf[..n] == PING {
                turns.pings.fetch_add(1, Ordering::SeqCst);
            }
        }
        to_server.write_all(&buf[..n]).await?;
    }
    answers.abort();
    Ok(())
}
