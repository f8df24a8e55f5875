//! A lean Engine.IO v4 / Socket.IO v5 client: packet parsing, a WebSocket socket
//! ([`SioSocket`], tungstenite framing over a plain TcpStream) and an HTTP long-polling
//! socket ([`SioPolling`], on one keep-alive connection of `http.rs`).
//!
//! Only what the load needs: the `/` namespace, text packets, `40` connect, `42` events
//! with ack ids, `43` acks, answering pings. Binary packets are a protocol error.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::check::{Failure, Kind, SioCheck, SioEvent, Step};
use crate::http::{self, HttpConn, HttpError};
use crate::net::{Counted, Target};
use crate::stats::Timing;

/// The Engine.IO path (Socket.IO's default).
const EIO_PATH: &str = "/socket.io/";
/// Separator of packets in a long-polling payload.
const RECORD_SEPARATOR: char = '\u{1e}';
/// Largest polling response accepted.
const MAX_POLL_BODY: usize = 64 << 20;

/// An Engine.IO packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Eio<'a> {
    Open(&'a str),
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Message(Sio<'a>),
    Upgrade,
    Noop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioType {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A Socket.IO packet (inside an Engine.IO message).
#[derive(Debug, PartialEq, Eq)]
pub struct Sio<'a> {
    pub kind: SioType,
    pub nsp: &'a str,
    pub id: Option<u64>,
    /// The JSON payload, unparsed.
    pub data: &'a str,
}

/// Parses one Engine.IO packet (text).
pub fn parse(packet: &str) -> Result<Eio<'_>, String> {
    let rest = packet.get(1..).unwrap_or_default();
    match packet.as_bytes().first() {
        Some(b'0') => Ok(Eio::Open(rest)),
        Some(b'1') => Ok(Eio::Close),
        Some(b'2') => Ok(Eio::Ping(rest)),
        Some(b'3') => Ok(Eio::Pong(rest)),
        Some(b'4') => parse_sio(rest).map(Eio::Message),
        Some(b'5') => Ok(Eio::Upgrade),
        Some(b'6') => Ok(Eio::Noop),
        _ => Err(format!("not an Engine.IO packet: {}", short(packet))),
    }
}

fn parse_sio(s: &str) -> Result<Sio<'_>, String> {
    let kind = match s.as_bytes().first() {
        Some(b'0') => SioType::Connect,
        Some(b'1') => SioType::Disconnect,
        Some(b'2') => SioType::Event,
        Some(b'3') => SioType::Ack,
        Some(b'4') => SioType::ConnectError,
        Some(b'5') => SioType::BinaryEvent,
        Some(b'6') => SioType::BinaryAck,
        _ => return Err(format!("not a Socket.IO packet: {}", short(s))),
    };
    let mut rest = s.get(1..).unwrap_or_default();
    let mut nsp = "/";
    if rest.starts_with('/') {
        let (name, after) = rest.split_once(',').unwrap_or((rest, ""));
        nsp = name;
        rest = after;
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = match digits {
        0 => None,
        _ => Some(
            rest.get(..digits)
                .unwrap_or_default()
                .parse::<u64>()
                .map_err(|e| format!("ack id: {e}"))?,
        ),
    };
    Ok(Sio {
        kind,
        nsp,
        id,
        data: rest.get(digits..).unwrap_or_default(),
    })
}

fn short(s: &str) -> String {
    if s.len() > 60 {
        format!("{:?}…", s.chars().take(60).collect::<String>())
    } else {
        format!("{s:?}")
    }
}

fn protocol(m: impl Into<String>) -> Failure {
    Failure::new(Kind::Protocol, m)
}

/// The `sid` of an open packet's JSON.
fn open_sid(json: &str) -> Result<String, Failure> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Failure::new(Kind::Handshake, format!("open packet: {e}")))?;
    v.get("sid")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Failure::new(
                Kind::Handshake,
                format!("open packet without sid: {}", short(json)),
            )
        })
}

/// A Socket.IO event or ack, owned: what [`SioSocket::next_message`] and
/// [`SioPolling::next_message`] return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SioMessage {
    /// `Event` or `Ack`.
    pub kind: SioType,
    /// The ack id: asked for by an event, answered by an ack.
    pub id: Option<u64>,
    /// The JSON array of arguments (an event's name first), unparsed.
    pub data: String,
}

/// What a client outside a checked stream makes of one packet.
enum Received {
    Message(SioMessage),
    Ping(String),
    Closed,
    Other,
}

fn received(text: &str) -> Result<Received, Failure> {
    Ok(match parse(text).map_err(protocol)? {
        Eio::Ping(p) => Received::Ping(p.to_string()),
        Eio::Close
        | Eio::Message(Sio {
            kind: SioType::Disconnect,
            ..
        }) => Received::Closed,
        Eio::Message(Sio {
            kind: kind @ (SioType::Event | SioType::Ack),
            id,
            data,
            ..
        }) => Received::Message(SioMessage {
            kind,
            id,
            data: data.to_string(),
        }),
        _ => Received::Other,
    })
}

/// What one packet of a stream meant.
enum Handled {
    Continue,
    Pong(String),
    Done,
}

/// Handles one packet of a running stream (both transports).
fn handle_stream_packet(
    text: &str,
    ack_id: u64,
    check: &mut SioCheck<'_>,
    first_chunk: &mut Option<Instant>,
) -> Result<Handled, Failure> {
    match parse(text).map_err(protocol)? {
        Eio::Ping(p) => Ok(Handled::Pong(format!("3{p}"))),
        Eio::Noop | Eio::Pong(_) => Ok(Handled::Continue),
        Eio::Message(Sio {
            kind: SioType::Event,
            nsp: "/",
            id: None,
            data,
        }) => {
            let ev: SioEvent = serde_json::from_str(data)
                .map_err(|e| Failure::garbled(format!("event {}: {e}", short(data))))?;
            match check.on_event(&ev.0, &ev.1)? {
                Step::FirstChunk => {
                    *first_chunk = Some(Instant::now());
                    Ok(Handled::Continue)
                }
                Step::Done => Ok(Handled::Done),
                Step::Accepted | Step::Ignored => Ok(Handled::Continue),
            }
        }
        Eio::Message(Sio {
            kind: SioType::Ack,
            nsp: "/",
            id: Some(id),
            data,
        }) if id == ack_id => match check.on_ack(data)? {
            Step::Done => Ok(Handled::Done),
            _ => Ok(Handled::Continue),
        },
        Eio::Message(Sio {
            kind: SioType::Disconnect,
            ..
        })
        | Eio::Close => Err(Failure::new(
            Kind::Closed,
            "the server disconnected the socket",
        )),
        _ => Err(protocol(format!("unexpected packet {}", short(text)))),
    }
}

/// A connected Socket.IO socket over WebSocket.
pub struct SioSocket {
    ws: WebSocketStream<Counted<TcpStream>>,
    next_ack: u64,
    /// Pings answered.
    pub pongs: u64,
}

fn ws_failure(e: tungstenite::Error) -> Failure {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            Failure::new(Kind::Closed, "WebSocket closed")
        }
        tungstenite::Error::Io(e) => Failure::new(Kind::Io, e.to_string()),
        e => protocol(format!("WebSocket: {e}")),
    }
}

impl SioSocket {
    /// Connects: TCP, WebSocket upgrade, Engine.IO open, Socket.IO `40` → `40{sid}`.
    pub async fn connect(target: &Target) -> Result<SioSocket, Failure> {
        SioSocket::connect_with_auth(target, "").await
    }

    /// Connects with a handshake `auth` (a JSON object, or `""` for none): `40{auth}`.
    pub async fn connect_with_auth(target: &Target, auth: &str) -> Result<SioSocket, Failure> {
        let tcp = target
            .connect()
            .await
            .map_err(|e| Failure::new(Kind::Connect, e.to_string()))?;
        let url = format!(
            "ws://{}{EIO_PATH}?EIO=4&transport=websocket",
            target.authority
        );
        let (ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .map_err(|e| Failure::new(Kind::Handshake, format!("WebSocket upgrade: {e}")))?;
        let mut s = SioSocket {
            ws,
            next_ack: 1,
            pongs: 0,
        };
        loop {
            let text = s.next_text().await?;
            match parse(&text).map_err(protocol)? {
                Eio::Open(json) => {
                    open_sid(json)?;
                    s.send(format!("40{auth}")).await?;
                }
                Eio::Ping(p) => s.pong(p).await?,
                Eio::Message(Sio {
                    kind: SioType::Connect,
                    ..
                }) => return Ok(s),
                Eio::Message(Sio {
                    kind: SioType::ConnectError,
                    data,
                    ..
                }) => {
                    return Err(Failure::new(
                        Kind::Handshake,
                        format!("connect_error {}", short(data)),
                    ));
                }
                Eio::Noop => {}
                _ => {
                    return Err(Failure::new(
                        Kind::Handshake,
                        format!("unexpected {}", short(&text)),
                    ));
                }
            }
        }
    }

    /// Bytes received since the last call.
    pub fn take_read(&mut self) -> u64 {
        self.ws.get_mut().take_read()
    }

    async fn send(&mut self, text: String) -> Result<(), Failure> {
        self.ws.send(Message::text(text)).await.map_err(ws_failure)
    }

    async fn pong(&mut self, payload: &str) -> Result<(), Failure> {
        self.pongs += 1;
        let msg = if payload.is_empty() {
            Message::Text(Utf8Bytes::from_static("3"))
        } else {
            Message::text(format!("3{payload}"))
        };
        self.ws.send(msg).await.map_err(ws_failure)
    }

    /// The next text message (control frames are handled by tungstenite).
    pub async fn next_text(&mut self) -> Result<Utf8Bytes, Failure> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Binary(_))) => return Err(protocol("binary WebSocket message")),
                Some(Ok(Message::Close(frame))) => {
                    return Err(Failure::new(
                        Kind::Closed,
                        format!("WebSocket close frame {frame:?}"),
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ws_failure(e)),
                None => return Err(Failure::new(Kind::Closed, "WebSocket ended")),
            }
        }
    }

    /// Emits an event: `42<ack id>` + `args` (a JSON array, the event name first); returns
    /// the ack id.
    pub async fn emit(&mut self, args: &str) -> Result<u64, Failure> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send(format!("42{id}{args}")).await?;
        Ok(id)
    }

    /// The next Socket.IO event or ack, answering pings; `None` once the server closed the
    /// socket (a disconnect, an Engine.IO close, a WebSocket close).
    pub async fn next_message(&mut self) -> Result<Option<SioMessage>, Failure> {
        loop {
            let text = match self.next_text().await {
                Ok(t) => t,
                Err(f) if f.kind == Kind::Closed => return Ok(None),
                Err(f) => return Err(f),
            };
            match received(&text)? {
                Received::Message(m) => return Ok(Some(m)),
                Received::Closed => return Ok(None),
                Received::Ping(p) => self.pong(&p).await?,
                Received::Other => {}
            }
        }
    }

    /// Closes the WebSocket (a close frame), as a client leaving politely does.
    pub async fn close(&mut self) -> Result<(), Failure> {
        self.ws.close(None).await.map_err(ws_failure)
    }

    /// Idles: answers pings until the server sends something else or fails.
    pub async fn idle(&mut self) -> Result<(), Failure> {
        loop {
            let text = self.next_text().await?;
            match parse(&text).map_err(protocol)? {
                Eio::Ping(p) => self.pong(p).await?,
                Eio::Noop => {}
                _ => return Err(protocol(format!("unexpected {} while idle", short(&text)))),
            }
        }
    }

    /// Runs one stream: emits `42<id>` + `args` and reads until the check says done.
    pub async fn stream(
        &mut self,
        args: &str,
        check: &mut SioCheck<'_>,
    ) -> Result<Timing, Failure> {
        let id = self.next_ack;
        self.next_ack += 1;
        let start = Instant::now();
        self.send(format!("42{id}{args}")).await?;
        let mut first_chunk = None;
        loop {
            let text = self.next_text().await?;
            match handle_stream_packet(&text, id, check, &mut first_chunk)? {
                Handled::Continue => {}
                Handled::Pong(p) => {
                    self.pongs += 1;
                    self.send(p).await?;
                }
                Handled::Done => {
                    return Ok(Timing {
                        start,
                        first_chunk,
                        end: Instant::now(),
                    });
                }
            }
        }
    }
}

/// A connected Socket.IO socket over HTTP long-polling: one keep-alive connection that
/// alternates GET (wait for packets) and POST (send packets), as a client with a
/// single connection would.
pub struct SioPolling {
    conn: HttpConn,
    authority: String,
    query: String,
    next_ack: u64,
    body: Vec<u8>,
    /// Packets received but not yet returned by [`SioPolling::next_message`].
    pending: std::collections::VecDeque<String>,
    /// A pause before each poll of [`SioPolling::next_message`]: a slow (mobile, busy)
    /// client.
    pub poll_gap: std::time::Duration,
    pub pongs: u64,
}

fn http_failure(e: HttpError) -> Failure {
    match e {
        HttpError::Closed { .. } => Failure::new(Kind::Closed, e.to_string()),
        HttpError::Io(_) => Failure::new(Kind::Io, e.to_string()),
        HttpError::Protocol(_) => protocol(e.to_string()),
    }
}

impl SioPolling {
    pub async fn connect(target: &Target) -> Result<SioPolling, Failure> {
        SioPolling::connect_with_auth(target, "").await
    }

    /// Connects with a handshake `auth` (a JSON object, or `""` for none): `40{auth}`.
    pub async fn connect_with_auth(target: &Target, auth: &str) -> Result<SioPolling, Failure> {
        let conn = HttpConn::connect(target)
            .await
            .map_err(|e| Failure::new(Kind::Connect, e.to_string()))?;
        let mut s = SioPolling {
            conn,
            authority: target.authority.clone(),
            query: format!("{EIO_PATH}?EIO=4&transport=polling"),
            next_ack: 1,
            body: Vec::with_capacity(16 * 1024),
            pending: Default::default(),
            poll_gap: std::time::Duration::ZERO,
            pongs: 0,
        };
        s.get().await?;
        let open = String::from_utf8_lossy(&s.body).into_owned();
        let sid = match parse(&open).map_err(protocol)? {
            Eio::Open(json) => open_sid(json)?,
            _ => {
                return Err(Failure::new(
                    Kind::Handshake,
                    format!("expected open, got {}", short(&open)),
                ));
            }
        };
        s.query = format!("{EIO_PATH}?EIO=4&transport=polling&sid={sid}");
        s.post(&format!("40{auth}")).await?;
        loop {
            s.get().await?;
            let payload = String::from_utf8_lossy(&s.body).into_owned();
            let mut pongs = Vec::new();
            let mut connected = false;
            for packet in payload.split(RECORD_SEPARATOR) {
                match parse(packet).map_err(protocol)? {
                    Eio::Ping(p) => pongs.push(format!("3{p}")),
                    Eio::Message(Sio {
                        kind: SioType::Connect,
                        ..
                    }) => connected = true,
                    Eio::Message(Sio {
                        kind: SioType::ConnectError,
                        data,
                        ..
                    }) => {
                        return Err(Failure::new(
                            Kind::Handshake,
                            format!("connect_error {}", short(data)),
                        ));
                    }
                    Eio::Noop => {}
                    _ => {
                        return Err(Failure::new(
                            Kind::Handshake,
                            format!("unexpected {}", short(packet)),
                        ));
                    }
                }
            }
            if !pongs.is_empty() {
                s.pongs += pongs.len() as u64;
                s.post(&pongs.join("\u{1e}")).await?;
            }
            if connected {
                return Ok(s);
            }
        }
    }

    pub fn take_read(&mut self) -> u64 {
        self.conn.take_read()
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<(), Failure> {
        if !self.conn.reusable() {
            return Err(Failure::new(
                Kind::Closed,
                "the server closed the polling connection",
            ));
        }
        self.conn.send(request).await.map_err(http_failure)?;
        let head = self.conn.read_head().await.map_err(http_failure)?;
        self.body.clear();
        self.conn
            .read_body_to_end(&mut self.body, MAX_POLL_BODY)
            .await
            .map_err(http_failure)?;
        if head.status != 200 {
            return Err(Failure::new(
                Kind::Http(head.status),
                format!("polling: {}", String::from_utf8_lossy(&self.body)),
            ));
        }
        Ok(())
    }

    async fn get(&mut self) -> Result<(), Failure> {
        let req = http::request("GET", &self.query, &self.authority, &[], b"");
        self.exchange(&req).await
    }

    async fn post(&mut self, payload: &str) -> Result<(), Failure> {
        let req = http::request(
            "POST",
            &self.query,
            &self.authority,
            &[("Content-Type", "text/plain;charset=UTF-8")],
            payload.as_bytes(),
        );
        self.exchange(&req).await
    }

    /// Emits an event (one POST): `42<ack id>` + `args` (a JSON array, the event name
    /// first); returns the ack id.
    pub async fn emit(&mut self, args: &str) -> Result<u64, Failure> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.post(&format!("42{id}{args}")).await?;
        Ok(id)
    }

    /// The next Socket.IO event or ack, polling when none is queued and answering pings;
    /// `None` once the server closed the session.
    pub async fn next_message(&mut self) -> Result<Option<SioMessage>, Failure> {
        loop {
            let Some(packet) = self.pending.pop_front() else {
                if !self.poll_gap.is_zero() {
                    tokio::time::sleep(self.poll_gap).await;
                }
                match self.get().await {
                    Ok(()) => {}
                    Err(f) if matches!(f.kind, Kind::Closed | Kind::Http(_)) => return Ok(None),
                    Err(f) => return Err(f),
                }
                let payload = std::str::from_utf8(&self.body)
                    .map_err(|e| protocol(format!("polling payload: {e}")))?;
                self.pending
                    .extend(payload.split(RECORD_SEPARATOR).map(str::to_string));
                continue;
            };
            match received(&packet)? {
                Received::Message(m) => return Ok(Some(m)),
                Received::Closed => return Ok(None),
                Received::Ping(p) => {
                    self.pongs += 1;
                    self.post(&format!("3{p}")).await?;
                }
                Received::Other => {}
            }
        }
    }

    /// Runs one stream; packets after the stream's end in the same poll response are
    /// garbled (only pings may follow).
    pub async fn stream(
        &mut self,
        args: &str,
        check: &mut SioCheck<'_>,
    ) -> Result<Timing, Failure> {
        let id = self.next_ack;
        self.next_ack += 1;
        let start = Instant::now();
        self.post(&format!("42{id}{args}")).await?;
        let mut first_chunk = None;
        let mut done = false;
        loop {
            self.get().await?;
            let body = std::mem::take(&mut self.body);
            let mut pongs: Vec<String> = Vec::new();
            let result = (|| {
                let payload = std::str::from_utf8(&body)
                    .map_err(|e| protocol(format!("polling payload: {e}")))?;
                for packet in payload.split(RECORD_SEPARATOR) {
                    if done {
                        match parse(packet).map_err(protocol)? {
                            Eio::Ping(p) => pongs.push(format!("3{p}")),
                            Eio::Noop => {}
                            _ => {
                                return Err(Failure::garbled(format!(
                                    "{} after the stream's end",
                                    short(packet)
                                )));
                            }
                        }
                        continue;
                    }
                    match handle_stream_packet(packet, id, check, &mut first_chunk)? {
                        Handled::Continue => {}
                        Handled::Pong(p) => pongs.push(p),
                        Handled::Done => done = true,
                    }
                }
                Ok(())
            })();
            self.body = body;
            result?;
            let end = Instant::now();
            if !pongs.is_empty() {
                self.pongs += pongs.len() as u64;
                self.post(&pongs.join("\u{1e}")).await?;
            }
            if done {
                return Ok(Timing {
                    start,
                    first_chunk,
                    end,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_io_packets() {
        assert_eq!(parse(r#"0{"sid":"x"}"#), Ok(Eio::Open(r#"{"sid":"x"}"#)));
        assert_eq!(parse("2"), Ok(Eio::Ping("")));
        assert_eq!(parse("2probe"), Ok(Eio::Ping("probe")));
        assert_eq!(parse("3"), Ok(Eio::Pong("")));
        assert_eq!(parse("1"), Ok(Eio::Close));
        assert_eq!(parse("6"), Ok(Eio::Noop));
        assert!(parse("").is_err());
        assert!(parse("9").is_err());
        assert!(parse("4").is_err());
    }

    #[test]
    fn socket_io_packets() {
        let p = |s| match parse(s) {
            Ok(Eio::Message(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            p(r#"40{"sid":"a"}"#),
            Sio {
                kind: SioType::Connect,
                nsp: "/",
                id: None,
                data: r#"{"sid":"a"}"#
            }
        );
        assert_eq!(
            p(r#"42["chat_chunk",{"chunk":"ab"}]"#),
            Sio {
                kind: SioType::Event,
                nsp: "/",
                id: None,
                data: r#"["chat_chunk",{"chunk":"ab"}]"#
            }
        );
        assert_eq!(
            p(r#"4317[{"request_id":"r"}]"#),
            Sio {
                kind: SioType::Ack,
                nsp: "/",
                id: Some(17),
                data: r#"[{"request_id":"r"}]"#
            }
        );
        assert_eq!(
            p(r#"42/admin,5["x"]"#),
            Sio {
                kind: SioType::Event,
                nsp: "/admin",
                id: Some(5),
                data: r#"["x"]"#
            }
        );
        assert_eq!(p("41/admin,").kind, SioType::Disconnect);
        assert_eq!(p(r#"44{"message":"no"}"#).kind, SioType::ConnectError);
        assert_eq!(
            p("451-[\"x\",{\"_placeholder\":true,\"num\":0}]").kind,
            SioType::BinaryEvent
        );
        assert!(parse("4x").is_err());
    }

    #[test]
    fn stream_packets_against_the_check() {
        let e = crate::check::Expect::new(1, 2);
        let mut c = SioCheck::new(&e);
        let mut first = None;
        let h =
            |t: &str, c: &mut SioCheck, f: &mut Option<Instant>| handle_stream_packet(t, 7, c, f);
        assert!(matches!(h("2", &mut c, &mut first), Ok(Handled::Pong(p)) if p == "3"));
        assert!(matches!(
            h(r#"437[{"request_id":"r"}]"#, &mut c, &mut first),
            Ok(Handled::Continue)
        ));
        assert!(matches!(
            h(r#"42["chat_chunk",{"chunk":"ab"}]"#, &mut c, &mut first),
            Ok(Handled::Continue)
        ));
        assert!(first.is_some());
        assert!(matches!(
            h(
                r#"42["chat_complete",{"full_response":"ab"}]"#,
                &mut c,
                &mut first
            ),
            Ok(Handled::Done)
        ));
        // an ack for another id, a binary event, a disconnect
        let mut c = SioCheck::new(&e);
        assert!(h(r#"438[{"request_id":"r"}]"#, &mut c, &mut first).is_err());
        assert!(h("451-[]", &mut c, &mut first).is_err());
        assert_eq!(
            h("41", &mut c, &mut first).err().map(|f| f.kind),
            Some(Kind::Closed)
        );
        assert_eq!(
            h(r#"42["chat_chunk",{"chunk":"a"#, &mut c, &mut first)
                .err()
                .map(|f| f.kind),
            Some(Kind::Garbled)
        );
    }

    #[test]
    fn open_packet_sid() {
        assert_eq!(
            open_sid(r#"{"sid":"abc","pingInterval":25000}"#),
            Ok("abc".to_string())
        );
        assert!(open_sid("{}").is_err());
        assert!(open_sid("nope").is_err());
    }

    #[test]
    fn received_packets_outside_a_stream() {
        let message = |text| match received(text) {
            Ok(Received::Message(m)) => Some(m),
            _ => None,
        };
        assert_eq!(
            message(r#"427["chat_chunk",{"chunk":"a"}]"#),
            Some(SioMessage {
                kind: SioType::Event,
                id: Some(7),
                data: r#"["chat_chunk",{"chunk":"a"}]"#.into()
            })
        );
        assert_eq!(
            message(r#"433[{"request_id":"r"}]"#),
            Some(SioMessage {
                kind: SioType::Ack,
                id: Some(3),
                data: r#"[{"request_id":"r"}]"#.into()
            })
        );
        assert!(matches!(received("2probe"), Ok(Received::Ping(p)) if p == "probe"));
        assert!(matches!(received("41"), Ok(Received::Closed)));
        assert!(matches!(received("1"), Ok(Received::Closed)));
        assert!(matches!(received("40{\"sid\":\"x\"}"), Ok(Received::Other)));
        assert!(matches!(received("6"), Ok(Received::Other)));
        assert!(received("x").is_err());
    }
}
