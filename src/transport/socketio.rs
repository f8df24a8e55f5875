//! The Socket.IO adapter (SPEC section 4): handshake identity, the namespace's configured
//! event on connect, request events (joining the session's room when the route says so),
//! `join`, `cancel`, `resume`, acks, and one delivery task per (socket, stream) that
//! respects the socket's bounded queue.
//!
//! Decodes legacy payloads through the route's request template and emits frames made by
//! [`encode`] (the connect event from its namespace's template); it holds no policy of its
//! own. A socket never gets the same stream twice,
//! whether it asked for it, resumed it or follows its session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use axum::extract::Request;
use axum::http::{HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Map, Value, json};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::task::AbortHandle;

use super::encode::{self, LegacyFrame};
use crate::bridge::Bridge;
use crate::capacity::Connections;
use crate::engine::Caller;
use crate::error::ApiError;
use crate::event::{EventKind, slow_consumer_events};
use crate::hub::{Batch, Cursor, SessionFollow, Stream};
use crate::metrics::{EventCounters, Metrics};
use crate::request::{RequestId, StreamRequest, Subject, Transport, parse_session_id};
use crate::routes::template::iso8601;
use crate::routes::{ConnectContext, RequestContext, Route};

/// Logged events taken from a cursor at a time. Small, so lag is measured close to what
/// the socket has really been given.
const MAX_BATCH: usize = 32;
/// Longest wait between two tries when the socket's queue is full.
const MAX_BACKOFF: Duration = Duration::from_millis(20);
/// Times a delivery yields to a socket's writer on a full queue before it sleeps.
const YIELDS_BEFORE_BACKOFF: u32 = 4;
/// How long a lagging socket's last two events (`error`, `end`) may wait for queue room.
/// Longer than Engine.IO's heartbeat (ping every 25 s, 20 s to answer), which closes a
/// socket whose queue stays full: a client that stalls for a while and then reads again
/// gets its `slow_consumer` end, never a stream that just stops. A socket that still has
/// no room after this long is disconnected, so its client sees the connection drop.
const FAREWELL_LIMIT: Duration = Duration::from_secs(60);
/// How long a delivery waits for its socket to finish connecting. socketioxide sends the
/// CONNECT packet before it marks the socket connected, so a fast client's first request
/// can start a stream whose first emit finds the socket "closed" for a moment; a socket
/// still not connected after this long never will be.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Handshake query keys that belong to Engine.IO, not to the client's auth.
const ENGINE_IO_QUERY: [&str; 4] = ["EIO", "transport", "t", "sid"];

/// What the bridge keeps per socket.
struct SocketCtx {
    subject: Subject,
    /// `Bearer <handshake token>`, for upstreams that forward the caller's credential.
    caller: Caller,
    /// The handshake auth object without its token (templates read `$.auth.x`).
    auth: Value,
    /// Streams this socket receives or has received (see [`Received`]).
    streams: Mutex<HashMap<RequestId, Received>>,
    /// Sessions this socket follows.
    sessions: Mutex<HashMap<Arc<str>, AbortHandle>>,
    /// The session named in the handshake, followed from the handshake on so no stream
    /// starting while the connection completes is missed.
    handshake_session: Mutex<Option<SessionFollow>>,
    /// Counted in `switchyard_socketio_connections` (and in the socket limit) and not
    /// yet gone.
    open: AtomicBool,
    /// Not yet through its connect handler, nor gone: an emit that finds it closed waits
    /// (see [`CONNECT_WAIT`]).
    connecting: AtomicBool,
    connections: Arc<Connections>,
}

/// A stream a socket receives, or received: kept after its delivery ended for as long as
/// the stream itself exists, because another cursor on it may still be on its way (the
/// session tap's, queued when the stream started) and must not deliver it a second time.
struct Received {
    stream: Weak<Stream>,
    /// The delivery task while it runs.
    task: Option<AbortHandle>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SocketCtx {
    /// The socket is gone: uncounted once, whichever of the disconnect handler and the
    /// connect handler sees it first, and its deliveries stopped.
    fn gone(&self, metrics: &Metrics, namespace: &str) {
        self.connecting.store(false, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) {
            metrics.socket_disconnected(namespace);
            self.connections.socket_gone();
        }
        self.abort_all();
    }

    fn abort_all(&self) {
        for (_, r) in locked(&self.streams).drain() {
            if let Some(h) = r.task {
                h.abort();
            }
        }
        for (_, h) in locked(&self.sessions).drain() {
            h.abort();
        }
    }
}

/// Registers every namespace of the routes (and `/`) on `io`.
pub fn attach(io: &SocketIo, bridge: Bridge) {
    for ns in bridge.routes().namespaces() {
        let routes: Vec<Arc<Route>> = bridge
            .routes()
            .iter()
            .filter(|r| r.socketio.as_ref().is_some_and(|s| s.namespace == ns))
            .cloned()
            .collect();
        let b = bridge.clone();
        let on_connect = move |socket: SocketRef| {
            let b = b.clone();
            async move { on_connect(&b, socket) }
        };
        let b = bridge.clone();
        let handshake = move |socket: SocketRef, TryData(auth): TryData<Value>| {
            let b = b.clone();
            let routes = routes.clone();
            async move {
                handshake(&b, &socket, auth.ok())?;
                // Before the connect packet goes out: socketioxide runs the connect handler
                // in a task of its own, and an event the client emits on connect could
                // otherwise arrive before its handler exists and be dropped.
                register_events(&b, routes, &socket);
                Ok::<(), String>(())
            }
        };
        io.ns(ns, on_connect.with(handshake));
    }
}

/// Refuses or accepts a connection; on acceptance stores the socket's context.
fn handshake(b: &Bridge, socket: &SocketRef, auth: Option<Value>) -> Result<(), String> {
    if b.is_draining() {
        return Err(format!("{}: {}", "draining", ApiError::Draining));
    }
    if let Err(refused) = b.connections().socket_fits() {
        let e = ApiError::Connections(refused);
        return Err(format!("{}: {e}", e.error_type()));
    }
    let mut auth = match auth {
        Some(Value::Object(map)) if !map.is_empty() => map,
        _ => query_auth(socket),
    };
    let token = match auth.remove("token") {
        Some(Value::String(t)) => Some(t),
        _ => None,
    };
    let field = |k: &str| auth.get(k).and_then(Value::as_str).map(str::to_string);
    let dev = Subject {
        user: field("user_id"),
        session: None,
        tenant: field("tenant_id"),
    };
    let subject = b
        .auth()
        .identify(token.as_deref(), dev)
        .map_err(|e| format!("{}: {e}", e.error_type()))?;
    let handshake_session = match auth.get("session_id").and_then(Value::as_str) {
        Some(s) => Some(
            b.follow_session(parse_session_id(s).map_err(|e| format!("{}: {e}", e.error_type()))?),
        ),
        None => None,
    };
    socket.extensions.insert(Arc::new(SocketCtx {
        subject,
        caller: Caller {
            authorization: token.map(|t| format!("Bearer {t}")),
        },
        auth: Value::Object(auth),
        streams: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
        handshake_session: Mutex::new(handshake_session),
        open: AtomicBool::new(false),
        connecting: AtomicBool::new(true),
        connections: b.connections().clone(),
    }));
    Ok(())
}

/// Bytes read from a WebSocket at a time (socketioxide's default is 4 KiB, all of it
/// resident for every idle socket; client events are small, a large one takes more reads).
pub const WS_READ_BUFFER: usize = 1024;

/// Gives a Socket.IO request its own copy of its URI and header values before the
/// Socket.IO layer sees it. hyper hands them out as slices of the connection's 8 KiB read
/// buffer, and Engine.IO keeps the request parts for the socket's whole life: without the
/// copy every idle socket holds that buffer.
pub async fn detach_head(mut req: Request, next: Next) -> Response {
    if req.uri().path().starts_with(crate::routes::paths::SOCKETIO) {
        if let Ok(uri) = Uri::try_from(req.uri().to_string()) {
            *req.uri_mut() = uri;
        }
        for value in req.headers_mut().values_mut() {
            if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
                copy.set_sensitive(value.is_sensitive());
                *value = copy;
            }
        }
    }
    next.run(req).await
}

/// Protocol v4 clients (socket.io-client 2.x) send their auth fields in the query string.
fn query_auth(socket: &SocketRef) -> Map<String, Value> {
    let query = socket.req_parts().uri.query().unwrap_or_default();
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !ENGINE_IO_QUERY.contains(&k.as_str()))
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

fn ctx_of(socket: &SocketRef) -> Option<Arc<SocketCtx>> {
    socket.extensions.get::<Arc<SocketCtx>>()
}

/// The socket's request, `join`, `cancel` and `resume` events (from the handshake).
fn register_events(b: &Bridge, routes: Vec<Arc<Route>>, socket: &SocketRef) {
    for route in routes {
        let Some(sio) = &route.socketio else { continue };
        let event = sio.request_event.clone();
        let b = b.clone();
        socket.on(
            event,
            move |s: SocketRef, TryData(payload): TryData<Value>, ack: AckSender| {
                let b = b.clone();
                let route = route.clone();
                async move { on_request(&b, &route, s, payload.ok(), ack) }
            },
        );
    }
    {
        let b = b.clone();
        socket.on(
            "join",
            move |s: SocketRef, TryData(payload): TryData<Value>, ack: AckSender| {
                let b = b.clone();
                async move { on_join(&b, s, payload.ok(), ack) }
            },
        );
    }
    {
        let b = b.clone();
        socket.on(
            "cancel",
            move |TryData(payload): TryData<Value>, ack: AckSender| {
                let b = b.clone();
                async move {
                    let id = payload.ok().and_then(|p| string_field(&p, "request_id"));
                    let cancelled = match id {
                        Some(id) => b.cancel_anywhere(&id).await.unwrap_or(false),
                        None => false,
                    };
                    let _ = ack.send(&json!({ "cancelled": cancelled }));
                }
            },
        );
    }
    {
        let b = b.clone();
        socket.on(
            "resume",
            move |s: SocketRef, TryData(payload): TryData<Value>, ack: AckSender| {
                let b = b.clone();
                async move { on_resume(&b, s, payload.ok(), ack).await }
            },
        );
    }
}

fn on_connect(b: &Bridge, socket: SocketRef) {
    let Some(ctx) = ctx_of(&socket) else {
        // The handshake always stores it; without it the socket can do nothing.
        let _ = socket.disconnect();
        return;
    };
    b.metrics().socket_connected(socket.ns());
    b.connections().socket_connected();
    ctx.open.store(true, Ordering::Release);
    ctx.connecting.store(false, Ordering::Release);
    let metrics = b.metrics().clone();
    socket.on_disconnect(move |s: SocketRef| {
        let metrics = metrics.clone();
        async move {
            if let Some(ctx) = ctx_of(&s) {
                ctx.gone(&metrics, s.ns());
            }
        }
    });
    greet(b, &socket, &ctx);
    let handshake_session = locked(&ctx.handshake_session).take();
    if let Some(f) = handshake_session {
        follow(b, &socket, &ctx, f);
    }
    // A client that vanished while this handler ran was closed before its disconnect
    // handler was in place, and that handler will never run: uncount it and stop what
    // was started for it here.
    if !socket.connected() {
        ctx.gone(b.metrics(), socket.ns());
    }
}

/// Sends the namespace's `connect_event`, when it has one, rendered for this socket.
fn greet(b: &Bridge, socket: &SocketRef, ctx: &SocketCtx) {
    let Some(greeting) = b
        .routes()
        .namespace(socket.ns())
        .and_then(|n| n.connect_event.as_ref())
    else {
        return;
    };
    let now = if greeting.payload.uses_now() {
        iso8601(SystemTime::now())
    } else {
        String::new()
    };
    let payload = greeting.payload.render_connect(&ConnectContext {
        auth: &ctx.auth,
        now: &now,
    });
    if let Err(e) = socket.emit(&*greeting.event, &payload) {
        tracing::debug!(error = %e, "connect event not sent");
    }
}

fn string_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn on_request(
    b: &Bridge,
    route: &Arc<Route>,
    socket: SocketRef,
    payload: Option<Value>,
    ack: AckSender,
) {
    let Some(ctx) = ctx_of(&socket) else { return };
    let payload = payload.unwrap_or(Value::Null);
    match start(b, route, &ctx, &payload) {
        Ok(cursor) => {
            let answer = json!({ "request_id": cursor.stream().id.as_str() });
            if b.cluster().is_some() {
                // The request id resumes and cancels from any node once acknowledged.
                let (b, stream) = (b.clone(), cursor.stream().clone());
                tokio::spawn(async move {
                    b.replicated(&stream).await;
                    let _ = ack.send(&answer);
                });
            } else {
                let _ = ack.send(&answer);
            }
            let joins = route.socketio.as_ref().is_some_and(|s| s.join_session);
            let session = cursor.stream().session_id.clone().filter(|_| joins);
            deliver(b, &socket, &ctx, cursor);
            if let Some(session) = session {
                join(b, &socket, &ctx, session);
            }
        }
        Err(e) => {
            tracing::debug!(route = %route.name, error_type = e.error_type(), "Socket.IO request refused");
            b.metrics().refused(&route.name, Transport::Socketio, &e);
            let _ = ack.send(&json!({ "error": e.body() }));
            if let Some(sio) = &route.socketio {
                let request_id = string_field(&payload, "request_id");
                let session_id = string_field(&payload, "session_id");
                if let Some(frame) = encode::legacy_refusal(
                    &sio.emit,
                    &route.name,
                    request_id.as_deref(),
                    session_id.as_deref(),
                    &e.body(),
                ) {
                    let _ = socket.emit(&*frame.event, &frame.payload);
                }
            }
        }
    }
}

fn start(
    b: &Bridge,
    route: &Arc<Route>,
    ctx: &SocketCtx,
    payload: &Value,
) -> Result<Cursor, ApiError> {
    let sio = route
        .socketio
        .as_ref()
        .ok_or_else(|| ApiError::UnknownRoute(route.name.to_string()))?;
    if !payload.is_object() {
        return Err(ApiError::InvalidRequest(format!(
            "the `{}` payload must be a JSON object",
            sio.request_event
        )));
    }
    let input = match &sio.request {
        Some(t) => t.render_request(&RequestContext {
            payload,
            auth: &ctx.auth,
        }),
        None => payload.clone(),
    };
    let mut req = StreamRequest::from_input(
        route.clone(),
        input,
        ctx.subject.clone(),
        Transport::Socketio,
    )?;
    req.caller = ctx.caller.clone();
    b.start(req)
}

fn on_join(b: &Bridge, socket: SocketRef, payload: Option<Value>, ack: AckSender) {
    let Some(ctx) = ctx_of(&socket) else { return };
    let session = payload
        .as_ref()
        .and_then(|p| string_field(p, "session_id"))
        .ok_or_else(|| ApiError::InvalidRequest("`join` needs {session_id}".into()))
        .and_then(|s| parse_session_id(&s));
    match session {
        Ok(session) if b.cluster().is_some() => {
            // In a cluster the ack waits until the other nodes' new streams of the
            // session reach this socket.
            let b = b.clone();
            tokio::spawn(async move {
                if !locked(&ctx.sessions).contains_key(&session) {
                    let f = b.follow_session_ready(session.clone()).await;
                    if !locked(&ctx.sessions).contains_key(&session) {
                        follow(&b, &socket, &ctx, f);
                    }
                }
                let _ = ack.send(&json!({ "session_id": &*session }));
            });
        }
        Ok(session) => {
            let _ = ack.send(&json!({ "session_id": &*session }));
            join(b, &socket, &ctx, session);
        }
        Err(e) => {
            let _ = ack.send(&json!({ "error": e.body() }));
        }
    }
}

/// Puts the socket in a session's room (once): it receives every stream of the session,
/// the running ones from their head and every later one, whoever starts it.
fn join(b: &Bridge, socket: &SocketRef, ctx: &Arc<SocketCtx>, session: Arc<str>) {
    if !locked(&ctx.sessions).contains_key(&session) {
        follow(b, socket, ctx, b.follow_session(session));
    }
}

async fn on_resume(b: &Bridge, socket: SocketRef, payload: Option<Value>, ack: AckSender) {
    let Some(ctx) = ctx_of(&socket) else { return };
    let p = payload.unwrap_or(Value::Null);
    let result = match string_field(&p, "request_id") {
        None => Err(ApiError::InvalidRequest(
            "`resume` needs {request_id, after}".into(),
        )),
        Some(id) => match p.get("after") {
            None | Some(Value::Null) => b.resume(&id, None).await,
            Some(v) => match v.as_i64() {
                Some(after) => b.resume(&id, Some(after)).await,
                None => Err(ApiError::InvalidRequest(
                    "`after` must be an integer seq".into(),
                )),
            },
        },
    };
    match result {
        Ok(cursor) => {
            let answer = json!({ "request_id": cursor.stream().id.as_str() });
            if b.cluster().is_some() {
                // The request id resumes and cancels from any node once acknowledged.
                let (b, stream) = (b.clone(), cursor.stream().clone());
                tokio::spawn(async move {
                    b.replicated(&stream).await;
                    let _ = ack.send(&answer);
                });
            } else {
                let _ = ack.send(&answer);
            }
            // A resume replaces whatever delivery this socket had (or had had) for the
            // stream: the client asked for these events again.
            if let Some(h) = locked(&ctx.streams)
                .remove(&cursor.stream().id)
                .and_then(|r| r.task)
            {
                h.abort();
            }
            deliver(b, &socket, &ctx, cursor);
        }
        Err(e) => {
            let _ = ack.send(&json!({ "error": e.body() }));
        }
    }
}

/// Delivers every stream of a followed session to this socket (once per session).
fn follow(b: &Bridge, socket: &SocketRef, ctx: &Arc<SocketCtx>, mut follow: SessionFollow) {
    let session = follow.session().clone();
    let mut sessions = locked(&ctx.sessions);
    if sessions.contains_key(&session) {
        return;
    }
    let (b2, socket2, weak) = (b.clone(), socket.clone(), Arc::downgrade(ctx));
    let task = tokio::spawn(async move {
        while let Some(cursor) = follow.next().await {
            let Some(ctx) = weak.upgrade() else { return };
            deliver(&b2, &socket2, &ctx, cursor);
        }
    });
    sessions.insert(session, task.abort_handle());
}

/// Starts delivering a stream to a socket, unless the socket receives it already or
/// received it (a requester in its own session room gets each event once, however its
/// two cursors race).
fn deliver(b: &Bridge, socket: &SocketRef, ctx: &Arc<SocketCtx>, cursor: Cursor) {
    let id = cursor.stream().id.clone();
    let mut streams = locked(&ctx.streams);
    if streams
        .get(&id)
        .is_some_and(|r| std::ptr::eq(r.stream.as_ptr(), Arc::as_ptr(cursor.stream())))
    {
        return;
    }
    // Records of streams that no longer exist anywhere can go: no cursor on them remains.
    streams.retain(|_, r| r.task.is_some() || r.stream.strong_count() > 0);
    let delivery = Delivery {
        counters: b
            .metrics()
            .subscriber(&cursor.stream().route.name, Transport::Socketio),
        metrics: b.metrics().clone(),
        ctx: Arc::downgrade(ctx),
    };
    let weak: Weak<SocketCtx> = Arc::downgrade(ctx);
    let stream = Arc::downgrade(cursor.stream());
    let (socket, key, this) = (socket.clone(), id.clone(), stream.clone());
    let task = tokio::spawn(async move {
        pump(&socket, cursor, &delivery).await;
        if let Some(ctx) = weak.upgrade()
            && let Some(r) = locked(&ctx.streams).get_mut(&key)
            && r.stream.ptr_eq(&this)
        {
            r.task = None;
        }
    });
    streams.insert(
        id,
        Received {
            stream,
            task: Some(task.abort_handle()),
        },
    );
}

/// What a delivery task needs besides its socket and cursor.
struct Delivery {
    counters: EventCounters,
    metrics: Arc<Metrics>,
    ctx: Weak<SocketCtx>,
}

impl Delivery {
    /// The socket has not finished connecting yet (and is not gone).
    fn connecting(&self) -> bool {
        self.ctx
            .upgrade()
            .is_some_and(|c| c.connecting.load(Ordering::Acquire))
    }
}

enum Stop {
    Gone,
    Lagging,
}

/// Emits a stream's events to one socket, in order, waiting for queue room rather than
/// dropping; a socket that stopped keeping up (the cursor's rule, [`Cursor::stalled_at`])
/// is ended with `slow_consumer`.
async fn pump(socket: &SocketRef, mut cursor: Cursor, d: &Delivery) {
    let stream = cursor.stream().clone();
    loop {
        match cursor.next_batch(MAX_BATCH).await {
            Batch::Events(entries) => {
                for e in &entries {
                    if let Some(frame) = encode::legacy_frame(e, &stream.describe()) {
                        match emit(socket, &frame, || cursor.stalled_at(e), None, d).await {
                            Ok(()) => d.counters.delivered(e.kind),
                            Err(Stop::Gone) => return,
                            Err(Stop::Lagging) => {
                                let seq = e.seq;
                                return farewell(socket, cursor, seq, d).await;
                            }
                        }
                    }
                    if e.kind == EventKind::End {
                        return;
                    }
                }
            }
            Batch::Lagged => {
                let seq = cursor.next_seq();
                return farewell(socket, cursor, seq, d).await;
            }
            Batch::End => return,
        }
    }
}

/// The last two events of a lagging socket's subscription: `error` + `end` with
/// `slow_consumer`, numbered from `seq` (the first event it did not get), given a bounded
/// time to find queue room. The subscription is over: the cursor is dropped first, so
/// the stream does not count this socket as a subscriber while it waits.
async fn farewell(socket: &SocketRef, cursor: Cursor, seq: u64, d: &Delivery) {
    tracing::info!(request_id = %cursor.stream().id, lag_bytes = cursor.lag_bytes(), "ending a slow Socket.IO subscriber");
    let stream = cursor.stream().clone();
    drop(cursor);
    d.metrics
        .slow_consumer(&stream.route.name, Transport::Socketio);
    let deadline = tokio::time::Instant::now() + FAREWELL_LIMIT;
    for ev in slow_consumer_events(seq) {
        let Some(frame) = encode::encode_legacy(&ev, &stream.describe()) else {
            continue;
        };
        if emit(socket, &frame, || false, Some(deadline), d)
            .await
            .is_err()
        {
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(request_id = %stream.id, "a slow Socket.IO subscriber took no farewell; disconnecting it");
                let _ = socket.clone().disconnect();
            }
            return;
        }
        d.counters.delivered(ev.event);
    }
}

/// Emits one frame, waiting (with backoff) while the socket's queue is full.
async fn emit(
    socket: &SocketRef,
    frame: &LegacyFrame,
    lagging: impl Fn() -> bool,
    deadline: Option<tokio::time::Instant>,
    d: &Delivery,
) -> Result<(), Stop> {
    let mut backoff = Duration::from_micros(250);
    let mut yields = 0;
    let mut connect_wait = None;
    loop {
        match socket.emit(&*frame.event, &frame.payload) {
            Ok(()) => return Ok(()),
            Err(SendError::Socket(SocketError::Closed)) if d.connecting() => {
                // Its connect handler is about to run: wait for it, a bounded time.
                let until =
                    *connect_wait.get_or_insert_with(|| tokio::time::Instant::now() + CONNECT_WAIT);
                if tokio::time::Instant::now() >= until {
                    return Err(Stop::Gone);
                }
                if yields < YIELDS_BEFORE_BACKOFF {
                    yields += 1;
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                if lagging() {
                    return Err(Stop::Lagging);
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return Err(Stop::Gone);
                }
                // The socket's writer usually just needs a turn: yield to it first, and
                // only back off with timers (a millisecond at least) when it stays full.
                if yields < YIELDS_BEFORE_BACKOFF {
                    yields += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                tracing::debug!(socket = %socket.id, connected = socket.connected(), error = %e, "socket gone");
                return Err(Stop::Gone);
            }
        }
    }
}
