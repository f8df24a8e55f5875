//! The load generator's lean Socket.IO clients (`switchyard_loadgen::sio`: Engine.IO v4 /
//! Socket.IO v5 over WebSocket and over long-polling), with events as JSON values, for
//! tests that need what the real client libraries cannot do: thousands of sockets, a
//! reader that stops reading (a small receive buffer), a client that stops polling.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_loadgen::check::{Failure, Kind};
use switchyard_loadgen::net::Target;
use switchyard_loadgen::sio::{SioMessage, SioPolling, SioSocket, SioType};

use super::WAIT;

fn target(addr: SocketAddr, recv_buffer: Option<u32>) -> Target {
    let t = Target::parse(&format!("http://{addr}"), 1, WAIT).unwrap();
    match recv_buffer {
        Some(n) => t.with_recv_buffer(n),
        None => t,
    }
}

/// An event as `(name, first argument)`, an ack as `("ack:<id>", first argument)`.
fn named(m: SioMessage) -> (String, Value) {
    let args: Value = serde_json::from_str(&m.data).unwrap();
    match m.kind {
        SioType::Ack => (format!("ack:{}", m.id.unwrap()), args[0].clone()),
        _ => (args[0].as_str().unwrap().to_string(), args[1].clone()),
    }
}

/// A connection that failed underneath reads as closed; a protocol error fails the test.
fn closed_on_io(f: Failure) -> Option<SioMessage> {
    assert!(matches!(f.kind, Kind::Io | Kind::Closed), "{f}");
    None
}

/// A Socket.IO socket on the `/` namespace, over WebSocket or long-polling.
pub struct Lean {
    socket: Socket,
}

enum Socket {
    Ws(Box<SioSocket>),
    /// Long-polling on one keep-alive connection.
    Poll(Box<SioPolling>),
}

impl Lean {
    /// Connects over WebSocket with the handshake `auth`; `rcvbuf` shrinks the socket's
    /// receive buffer, so a client that stops reading is felt by the server at once.
    pub async fn connect(addr: SocketAddr, auth: Value, rcvbuf: Option<u32>) -> Lean {
        let socket = SioSocket::connect_with_auth(&target(addr, rcvbuf), &auth.to_string())
            .await
            .unwrap_or_else(|f| panic!("refused: {f}"));
        Lean {
            socket: Socket::Ws(Box::new(socket)),
        }
    }

    /// Connects over long-polling with the handshake `auth`; `gap` is a pause before each
    /// poll (a slow, mobile or busy, client).
    pub async fn polling(addr: SocketAddr, auth: Value, gap: Duration) -> Lean {
        let mut socket = SioPolling::connect_with_auth(&target(addr, None), &auth.to_string())
            .await
            .unwrap_or_else(|f| panic!("refused: {f}"));
        socket.poll_gap = gap;
        Lean {
            socket: Socket::Poll(Box::new(socket)),
        }
    }

    /// Emits `event` with `data` and an ack id; returns the id.
    pub async fn emit(&mut self, event: &str, data: Value) -> u64 {
        let args = json!([event, data]).to_string();
        match &mut self.socket {
            Socket::Ws(s) => s.emit(&args).await,
            Socket::Poll(s) => s.emit(&args).await,
        }
        .unwrap()
    }

    /// The next event or ack (see [`named`]); `None` once the server closed the socket.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        let m = match &mut self.socket {
            Socket::Ws(s) => s.next_message().await,
            Socket::Poll(s) => s.next_message().await,
        }
        .unwrap_or_else(closed_on_io)?;
        Some(named(m))
    }

    /// Reads with a deadline (failing the test past it); `None` when the socket closed.
    pub async fn next_within(&mut self, limit: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(limit, self.next())
            .await
            .expect("a Socket.IO packet in time")
    }

    /// Leaves politely: a WebSocket close frame (long-polling just stops polling).
    pub async fn close(&mut self) {
        if let Socket::Ws(s) = &mut self.socket {
            let _ = s.close().await;
        }
    }
}
