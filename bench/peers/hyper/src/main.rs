//! raw-hyper-peer: the practical limit of the side-by-side benchmark.
//!
//! Serves `POST /api/ai/chat/unified` with exactly the bytes Switchyard's `chat` route
//! writes for the script engine's `options: {chunks, chunk_bytes, interval_ms}` workload,
//! NDJSON or SSE
//! (`Accept: text/event-stream`), and nothing else: no router, no bridge, no replay log,
//! no metrics, no heartbeats. Each event is formatted by hand into its own body frame,
//! generated lazily when hyper asks for the next frame, as a real generator would produce
//! it; with `interval_ms`, chunks after the first wait that long each (one timer at a
//! time), which is what the idle benchmark holds open.
//!
//! Usage: `raw-hyper-peer [--port N]` (else env `PORT`, else 8080); binds 127.0.0.1 and
//! prints `listening on 127.0.0.1:PORT` once accepting.

use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpListener;

const PATH: &str = "/api/ai/chat/unified";
const DEFAULT_PORT: u16 = 8080;
/// Switchyard's `limits.max_body_bytes`.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Defaults when the request has no usable `options` (Switchyard would stream words).
const DEFAULT_CHUNKS: u64 = 1;
const DEFAULT_CHUNK_BYTES: u64 = 16;
/// The shipped `chat` route's script maxima; over them Switchyard answers 400 too.
const MAX_CHUNKS: u64 = 100_000;
const MAX_CHUNK_BYTES: u64 = 65_536;
const OVER_MAXIMUM: &[u8] = br#"{"error":{"error_type":"invalid_request","message":"options.chunks is at most 100000, options.chunk_bytes at most 65536"}}"#;
/// Room for the framing around an event's data (SSE `id:`/`event:` lines or the envelope).
const FRAMING: usize = 64;

type ResBody = Either<Events, Full<Bytes>>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (port, vectored) = match args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("raw-hyper-peer: {e}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("raw-hyper-peer: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(_) => println!("listening on 127.0.0.1:{port}"),
    }
    // hyper's defaults (keep-alive, ~408 KiB write buffer, Date header), with the queued
    // body frames flattened into one buffer per write (`writev(false)`): about twice the
    // events/s of one frame per iovec here, so the strong reference. `--vectored` keeps
    // hyper's automatic vectored writes. The timer arms the default 30 s header-read
    // timeout, as the bridge does.
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new());
    if !vectored {
        http.writev(false);
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors and the like: back off, keep serving.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Streaming: each event leaves as soon as it is written, no Nagle delay.
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), service_fn(handle));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// `--port N` / `--port=N`, else env `PORT`, else 8080; `--vectored` for hyper's
/// automatic vectored writes.
fn args() -> Result<(u16, bool), String> {
    let mut args = std::env::args().skip(1);
    let mut given = std::env::var("PORT").ok();
    let mut vectored = false;
    while let Some(a) = args.next() {
        if a == "--port" {
            given = Some(args.next().ok_or("--port needs a value")?);
        } else if let Some(v) = a.strip_prefix("--port=") {
            given = Some(v.to_string());
        } else if a == "--vectored" {
            vectored = true;
        } else {
            return Err(format!(
                "unknown argument {a:?} (usage: raw-hyper-peer [--port N] [--vectored])"
            ));
        }
    }
    let port = match given {
        None => DEFAULT_PORT,
        Some(p) => p.trim().parse().map_err(|_| format!("bad port {p:?}"))?,
    };
    Ok((port, vectored))
}

async fn handle(req: Request<Incoming>) -> Result<Response<ResBody>, Infallible> {
    if req.method() != Method::POST || req.uri().path() != PATH {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    // The same test as the bridge: any Accept value mentioning text/event-stream.
    let sse = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .any(|v| v.as_bytes().windows(17).any(|w| w == b"text/event-stream"));
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Ok(status(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    let Some(events) = Events::from_request(&body, sse) else {
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(OVER_MAXIMUM))));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(resp);
    };
    let id = HeaderValue::from_str(&events.request_id).ok();
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut resp = Response::new(Either::Left(events));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(id) = id {
        h.insert("x-request-id", id);
    }
    Ok(resp)
}

fn status(code: StatusCode) -> Response<ResBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = code;
    resp
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Started,
    Chunks,
    Completion,
    End,
    Done,
}

/// One response: `status_update` (started), N chunks, `completion`, `end`, one frame each,
/// made when hyper polls for it.
struct Events {
    phase: Phase,
    sse: bool,
    request_id: String,
    chunks: u64,
    chunk_bytes: usize,
    /// Index of the next chunk; its seq is `next + 1`.
    next: u64,
    /// Every chunk so far, for `completion.output`.
    output: Vec<u8>,
    /// The wait before each chunk after the first (`options.interval_ms`), and the
    /// running one.
    interval: Option<Duration>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Events {
    /// The plan of a request body. A body that is not JSON, or has no usable `options`,
    /// gets one chunk of 16 bytes; `None` when an option is over the route's maximum.
    fn from_request(body: &[u8], sse: bool) -> Option<Events> {
        let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let option = |name: &str| {
            input
                .get("options")
                .and_then(|o| o.get(name))
                .and_then(Value::as_u64)
        };
        let chunks = option("chunks").unwrap_or(DEFAULT_CHUNKS);
        let chunk_bytes = option("chunk_bytes")
            .filter(|&b| b > 0)
            .unwrap_or(DEFAULT_CHUNK_BYTES);
        if chunks > MAX_CHUNKS || chunk_bytes > MAX_CHUNK_BYTES {
            return None;
        }
        let request_id = input
            .get("request_id")
            .and_then(Value::as_str)
            .filter(|s| usable_id(s))
            .map_or_else(new_request_id, str::to_string);
        let interval = option("interval_ms")
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis);
        Some(Events {
            interval,
            pause: None,
            phase: Phase::Started,
            sse,
            request_id,
            chunks,
            chunk_bytes: chunk_bytes as usize,
            next: 0,
            // Room for the whole output at once, unless the chunks are paced (a stream
            // held open grows it as they come).
            output: Vec::with_capacity(if interval.is_some() {
                0
            } else {
                (chunks * chunk_bytes) as usize
            }),
        })
    }

    /// The next event's bytes, advancing the phase.
    fn next_frame(&mut self) -> Option<Bytes> {
        match self.phase {
            Phase::Started => {
                self.phase = if self.chunks > 0 {
                    Phase::Chunks
                } else {
                    Phase::Completion
                };
                let id = self.request_id.as_bytes();
                Some(self.encode(0, b"status_update", id.len() + 64, |b| {
                    b.put_slice(br#"{"status":"started","metadata":{"request_id":""#);
                    b.put_slice(id);
                    b.put_slice(br#"","route":"chat"}}"#);
                }))
            }
            Phase::Chunks => {
                let i = self.next;
                self.next += 1;
                if self.next == self.chunks {
                    self.phase = Phase::Completion;
                }
                let len = self.chunk_bytes;
                let mut out = std::mem::take(&mut self.output);
                let frame = self.encode(i + 1, b"chunk", len + 16, |b| {
                    b.put_slice(br#"{"text":""#);
                    let start = b.len();
                    // generated_chunk(i, len): letter j is 'a' + (i + j) % 26.
                    let mut letter = (i % 26) as u8;
                    for _ in 0..len {
                        b.put_u8(b'a' + letter);
                        letter = if letter == 25 { 0 } else { letter + 1 };
                    }
                    out.extend_from_slice(&b[start..]);
                    b.put_slice(br#""}"#);
                });
                self.output = out;
                Some(frame)
            }
            Phase::Completion => {
                self.phase = Phase::End;
                let out = std::mem::take(&mut self.output);
                Some(
                    self.encode(self.chunks + 1, b"completion", out.len() + 40, |b| {
                        b.put_slice(br#"{"status":"complete","output":""#);
                        b.put_slice(&out);
                        b.put_slice(br#""}"#);
                    }),
                )
            }
            Phase::End => {
                self.phase = Phase::Done;
                Some(self.encode(self.chunks + 2, b"end", 24, |b| {
                    b.put_slice(br#"{"reason":"completed"}"#);
                }))
            }
            Phase::Done => None,
        }
    }

    /// One event on the wire: `{"event":..,"seq":..,"data":..}\n` or
    /// `id: seq\nevent: name\ndata: ..\n\n`.
    fn encode(
        &self,
        seq: u64,
        event: &[u8],
        data_len: usize,
        data: impl FnOnce(&mut BytesMut),
    ) -> Bytes {
        let mut b = BytesMut::with_capacity(data_len + FRAMING);
        if self.sse {
            b.put_slice(b"id: ");
            put_u64(&mut b, seq);
            b.put_slice(b"\nevent: ");
            b.put_slice(event);
            b.put_slice(b"\ndata: ");
            data(&mut b);
            b.put_slice(b"\n\n");
        } else {
            b.put_slice(br#"{"event":""#);
            b.put_slice(event);
            b.put_slice(br#"","seq":"#);
            put_u64(&mut b, seq);
            b.put_slice(br#","data":"#);
            data(&mut b);
            b.put_slice(b"}\n");
        }
        b.freeze()
    }
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.phase == Phase::Chunks
            && this.next > 0
            && let Some(every) = this.interval
        {
            let pause = this
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        Poll::Ready(this.next_frame().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
    }
}

fn put_u64(b: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b.put_slice(&digits[at..]);
}

/// The bridge's request-id rule (1 to 128 printable ASCII, no `/ ? # %` or space), minus
/// `"` and `\` so the id goes into JSON as is.
fn usable_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%' | b'"' | b'\\'))
}

/// A random UUID v4-shaped id: SipHash (random keys from the OS, once) of a counter, so
/// no system call per request.
fn new_request_id() -> String {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let keys = KEYS.get_or_init(RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = (keys.hash_one((n, 0u8)) & !0xf000) | 0x4000;
    let lo = (keys.hash_one((n, 1u8)) & !(0xc << 60)) | (0x8 << 60);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}
