//! A fake upstream server on loopback, for the engines in front of one (`ndjson`, `openai`,
//! `ollama`): it answers every request with the test's own `reply(attempt, seen)` and
//! records what it saw. The helpers below build the answers the tests need: whole bodies,
//! bodies trickled a byte at a time, bodies that record when their client went away, and
//! an endless body that counts what the client took.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    /// The request body as JSON (`null` when it is not JSON).
    pub body: Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// A running fake upstream (it serves until the test's runtime stops).
pub struct Upstream {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Starts it: every request (any method, any path) is answered by
    /// `reply(attempt, seen)`, `attempt` counting requests from 0.
    pub async fn start<F, Fut>(reply: F) -> Upstream
    where
        F: Fn(usize, Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let reply = Arc::new(reply);
        let app = Router::new().fallback({
            let seen = seen.clone();
            move |req: axum::extract::Request| {
                let (seen, reply) = (seen.clone(), reply.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                    let s = Seen {
                        path: parts.uri.path().to_string(),
                        headers: parts.headers,
                        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    };
                    let attempt = {
                        let mut all = seen.lock().unwrap();
                        all.push(s.clone());
                        all.len() - 1
                    };
                    reply(attempt, s).await
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream {
            base: format!("http://{addr}"),
            seen,
        }
    }

    /// Every request seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub fn respond(status: u16, content_type: &str, body: Body) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

pub fn ndjson_ok(text: String) -> Response {
    respond(200, "application/x-ndjson", Body::from(text))
}

/// One NDJSON line per value, each ended by `\n`.
pub fn lines(values: &[Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

/// An OpenAI-style SSE body: one `data:` event per value, then `data: [DONE]` when `done`.
pub fn sse(values: &[Value], done: bool) -> String {
    let mut out: String = values.iter().map(|v| format!("data: {v}\n\n")).collect();
    if done {
        out.push_str("data: [DONE]\n\n");
    }
    out
}

/// The whole body written one byte per body frame, with a pause between frames so that
/// every byte position is also a network read boundary.
pub fn trickle(text: String) -> Body {
    let bytes = text.into_bytes();
    Body::from_stream(stream::unfold((bytes, 0usize), |(bytes, i)| async move {
        if i >= bytes.len() {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let b = Bytes::copy_from_slice(&bytes[i..=i]);
        Some((Ok::<_, Infallible>(b), (bytes, i + 1)))
    }))
}

/// When a body was dropped: its client went away (or the answer ended).
pub type Dropped = Arc<Mutex<Option<Instant>>>;

/// A response body of `frames` that records in `dropped` the instant it is dropped.
pub fn tracked(
    frames: BoxStream<'static, Result<Bytes, std::io::Error>>,
    dropped: Dropped,
) -> Body {
    Body::from_stream(Tracked {
        inner: frames,
        dropped,
    })
}

struct Tracked {
    inner: BoxStream<'static, Result<Bytes, std::io::Error>>,
    dropped: Dropped,
}

impl Stream for Tracked {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        *self.dropped.lock().unwrap() = Some(Instant::now());
    }
}

/// An endless NDJSON answer repeating `line`, written as fast as the client takes it;
/// `written` counts the bytes handed to the connection (what the client accepted, give
/// or take the connection's write buffer).
pub fn flood(line: String, written: Arc<AtomicU64>) -> Response {
    let line = Bytes::from(line);
    let frames = stream::repeat_with(move || {
        written.fetch_add(line.len() as u64, Ordering::Relaxed);
        Ok::<_, Infallible>(line.clone())
    });
    respond(200, "application/x-ndjson", Body::from_stream(frames))
}
