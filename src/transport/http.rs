//! The HTTP adapter (SPEC section 3): NDJSON and SSE streams, resume, cancel, session
//! following, health, and the one mapping of [`ApiError`] to an HTTP status + JSON body.
//!
//! Decodes requests into [`StreamRequest`]s (through the route's `[route.http] request`
//! template when it has one) and writes frames made by [`encode`], in the format `Accept`
//! or the route's `default_format` picks; holds no policy of its own (limits, identity,
//! flags and stream rules are the core's).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream, SelectAll, Stream, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::encode::{self, Wire};
use crate::bridge::Bridge;
use crate::config::Limits;
use crate::error::ApiError;
use crate::event::{Event, EventKind, slow_consumer_events};
use crate::hub::{Batch, Cursor, SessionFollow};
use crate::metrics::{EventCounters, Metrics};
use crate::request::{StreamRequest, Subject, parse_session_id};
use crate::routes::{HttpFormat, RequestContext, Route, paths};

/// Most logged events written in one body chunk (a burst already queued goes out in one
/// write; a long backlog is still cut into bounded writes).
const MAX_BATCH: usize = 256;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(json!({ "error": self.body() }))).into_response()
    }
}

/// The HTTP routes: one POST per route of routes.toml, plus the bridge's own endpoints.
pub fn router(bridge: Bridge) -> Router {
    let mut router = Router::new();
    for route in bridge.routes().iter() {
        let route = route.clone();
        let path = route.http.path.clone();
        router = router.route(
            &path,
            post(move |State(b): State<Bridge>, req: Request| start_stream(b, route, req)),
        );
    }
    router
        .route(&format!("{}/{{request_id}}", paths::CANCEL), post(cancel))
        .route(&format!("{}/{{request_id}}", paths::STREAMS), get(resume))
        .route(
            &format!("{}/{{session_id}}/events", paths::SESSIONS),
            get(follow_session),
        )
        .route(paths::HEALTHZ, get(healthz))
        .route(paths::READYZ, get(readyz))
        .route(paths::METRICS, get(metrics))
        .route(paths::FLAGS, get(flags_all))
        .route(&format!("{}/{{route}}", paths::FLAGS), get(flags_one))
        .merge(crate::admin::router())
        .merge(crate::console::router())
        .fallback(unknown_route)
        .with_state(bridge)
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::UnknownRoute(format!("{} {}", req.method(), req.uri().path()))
}

async fn metrics(State(b): State<Bridge>) -> Response {
    b.metrics().cluster_mirrors(b.hub().mirrors());
    b.metrics().sample(
        b.hub().held(),
        b.hub().live_bytes(),
        b.hub().retained_bytes(),
        b.connections().count(),
    );
    let mut resp = b.metrics().render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(b): State<Bridge>) -> Response {
    if b.is_draining() {
        return ApiError::Draining.into_response();
    }
    if !b.cluster_available() {
        return ApiError::ClusterUnavailable.into_response();
    }
    axum::Json(json!({
        "status": "ready",
        "node": b.cluster().map(|c| c.node_id()),
        "routes": b.routes().len(),
        "streams": b.hub().running(),
        "flags_version": b.flags().current().version,
        "flags_reload": b.flags().status(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct SubjectQuery {
    user: Option<String>,
    session: Option<String>,
    tenant: Option<String>,
}

impl From<SubjectQuery> for Subject {
    fn from(q: SubjectQuery) -> Subject {
        let keep = |v: Option<String>| v.filter(|s| !s.is_empty());
        Subject {
            user: keep(q.user),
            session: keep(q.session),
            tenant: keep(q.tenant),
        }
    }
}

/// One route's evaluation as the evaluation API shows it.
fn evaluation(flags: &crate::flags::Flags, route: &str, subject: &Subject) -> Value {
    let flag = flags.route(route);
    let ev = flag.evaluate(route, subject);
    json!({
        "transport": ev.transport.as_str(),
        "mode": flag.mode.as_str(),
        "reason": ev.reason.as_str(),
        "bucket": ev.bucket,
    })
}

async fn flags_all(State(b): State<Bridge>, Query(q): Query<SubjectQuery>) -> axum::Json<Value> {
    let subject = Subject::from(q);
    let flags = b.flags().current();
    let routes: serde_json::Map<String, Value> = b
        .routes()
        .iter()
        .map(|r| (r.name.to_string(), evaluation(&flags, &r.name, &subject)))
        .collect();
    axum::Json(json!({"flags_version": flags.version, "routes": routes}))
}

async fn flags_one(
    State(b): State<Bridge>,
    Path(route): Path<String>,
    Query(q): Query<SubjectQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let route = b
        .routes()
        .get(&route)
        .ok_or_else(|| ApiError::UnknownRoute(format!("route {route}")))?;
    let flags = b.flags().current();
    Ok(axum::Json(evaluation(
        &flags,
        &route.name,
        &Subject::from(q),
    )))
}

/// The wire a route's POST answers on: SSE when `Accept` names `text/event-stream`, NDJSON
/// when it names anything else; when it names nothing (no `Accept`, or only `*/*`, which
/// `fetch` sends by default), the route's `default_format`.
fn route_wire(headers: &HeaderMap, default: HttpFormat) -> Wire {
    let no_preference = headers
        .get_all(header::ACCEPT)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .flat_map(|v| v.split(','))
        .map(|range| range.split(';').next().unwrap_or_default().trim())
        .all(|range| range.is_empty() || range == "*/*");
    match (no_preference, default) {
        (true, HttpFormat::Sse) => Wire::Sse,
        (true, HttpFormat::Ndjson) => Wire::Ndjson,
        (false, _) => wire_for(headers, Wire::Sse, Wire::Ndjson),
    }
}

/// The wire a request asks for with `Accept`.
fn wire_for(headers: &HeaderMap, sse: Wire, ndjson: Wire) -> Wire {
    let accepts_sse = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if accepts_sse { sse } else { ndjson }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The request's subject: the bearer JWT when auth is on, the development headers when off.
fn identify(b: &Bridge, headers: &HeaderMap) -> Result<Subject, ApiError> {
    let token = crate::auth::bearer(header_str(headers, "authorization"));
    let dev = Subject {
        user: header_str(headers, "x-user-id").map(str::to_string),
        session: None,
        tenant: header_str(headers, "x-tenant-id").map(str::to_string),
    };
    b.auth().identify(token, dev)
}

/// Reads a request body of at most `limits.max_body_bytes`. A larger one is refused with
/// 413 once the rest of it has been read and thrown away ([`discard_rest`]), so a client
/// that is still sending it reads the answer instead of a reset connection.
async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<Bytes, ApiError> {
    let limit = limits.max_body_bytes;
    let too_large = ApiError::PayloadTooLarge { limit };
    let declared = header_str(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        discard_rest(body, 0, declared, headers, limits).await;
        return Err(too_large);
    }
    // Most bodies come in one frame, which is kept as it is; more are joined once at the end.
    let mut parts: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::InvalidRequest(format!("could not read the request body: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            discard_rest(body, len as u64, declared, headers, limits).await;
            return Err(too_large);
        }
        parts.push(data);
    }
    Ok(match parts.len() {
        0 => Bytes::new(),
        1 => parts.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            for p in &parts {
                joined.extend_from_slice(p);
            }
            joined.freeze()
        }
    })
}

/// Reads and throws away the rest of an oversized body (`seen` bytes of it already read),
/// at most `limits.oversize_discard_bytes` in all and for at most
/// `limits.oversize_discard_secs`. A body declared larger than that bound is not read at
/// all, and neither is one whose client waits for `100 Continue` (it sends nothing before
/// the answer). Its 413 follows with `connection: close` either way: cleanly when the
/// whole body was read, under a client still sending when not.
async fn discard_rest(
    mut body: Body,
    seen: u64,
    declared: Option<u64>,
    headers: &HeaderMap,
    limits: &Limits,
) {
    let bound = limits.oversize_discard_bytes;
    let expects_continue =
        header_str(headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue || declared.is_some_and(|n| n > bound) {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(limits.oversize_discard_secs);
    let mut seen = seen;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return,
            Ok(Some(Ok(frame))) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > bound {
                    tracing::debug!(bound, "oversized body longer than the discard bound");
                    return;
                }
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "oversized body ended with an error");
                return;
            }
            Err(_) => {
                tracing::debug!(seen, "oversized body not read in time");
                return;
            }
        }
    }
}

async fn start_stream(b: Bridge, route: Arc<Route>, req: Request) -> Response {
    let wire = route_wire(req.headers(), route.http.default_format);
    let name = route.name.clone();
    match start_stream_on(&b, route, req, wire).await {
        Ok(resp) => resp,
        Err(e) => {
            b.metrics().refused(&name, wire.transport(), &e);
            // An oversized body may not have been read to its end: the connection cannot
            // carry another request.
            let close = matches!(e, ApiError::PayloadTooLarge { .. });
            let mut resp = e.into_response();
            if close {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

async fn start_stream_on(
    b: &Bridge,
    route: Arc<Route>,
    req: Request,
    wire: Wire,
) -> Result<Response, ApiError> {
    if b.is_draining() {
        return Err(ApiError::Draining);
    }
    let (parts, body) = req.into_parts();
    let subject = identify(b, &parts.headers)?;
    let bytes = read_body(body, &parts.headers, &b.config().limits).await?;
    let mut request = decode_body(route, &bytes, subject, wire.transport())?;
    request.caller.authorization = header_str(&parts.headers, "authorization").map(str::to_string);
    let cursor = b.start(request)?;
    b.replicated(cursor.stream()).await;
    Ok(stream_response(b, cursor, wire, StatusCode::OK))
}

/// What every HTTP subscriber needs besides its cursor (the cursor itself applies the
/// slow-consumer rule: it reports [`Batch::Lagged`]).
#[derive(Clone)]
struct Delivery {
    wire: Wire,
    metrics: Arc<Metrics>,
}

impl Delivery {
    fn new(b: &Bridge, wire: Wire) -> Delivery {
        Delivery {
            wire,
            metrics: b.metrics().clone(),
        }
    }
}

fn stream_response(b: &Bridge, cursor: Cursor, wire: Wire, status: StatusCode) -> Response {
    let id = HeaderValue::from_str(cursor.stream().id.as_str()).ok();
    let stream = cursor.stream().clone();
    let counters = b.metrics().subscriber(&stream.route.name, wire.transport());
    let heartbeat = move || {
        let hb = encode::encode_http(&Event::heartbeat(now_ms()), &stream.describe(), wire);
        if hb.is_some() {
            counters.delivered(EventKind::Heartbeat);
        }
        hb
    };
    let frames = cursor_frames(cursor, Delivery::new(b, wire));
    let body = with_heartbeat(frames, b.config().heartbeat(), heartbeat);
    let mut resp = streaming(body, wire, status);
    if let Some(id) = id {
        resp.headers_mut().insert("x-request-id", id);
    }
    resp
}

fn streaming(
    body: impl Stream<Item = Bytes> + Send + 'static,
    wire: Wire,
    status: StatusCode,
) -> Response {
    let body = Body::from_stream(body.map(Ok::<_, Infallible>));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wire.content_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The frames of one cursor until its stream's `end` (or this subscriber's
/// `slow_consumer` end), each read batch written as one chunk.
fn cursor_frames(cursor: Cursor, d: Delivery) -> impl Stream<Item = Bytes> + Send {
    /// One subscriber's reading state, moved from poll to poll (nothing cloned per batch).
    struct Reader {
        cursor: Cursor,
        d: Delivery,
        counters: EventCounters,
    }
    let counters = d
        .metrics
        .subscriber(&cursor.stream().route.name, d.wire.transport());
    let reader = Reader {
        cursor,
        d,
        counters,
    };
    stream::unfold(Some(reader), |state| async move {
        let mut r = state?;
        loop {
            match r.cursor.next_batch(MAX_BATCH).await {
                Batch::Events(entries) => {
                    // Room for the neutral lines plus the SSE framing around them.
                    let size: u64 = entries.iter().map(|e| e.size() + 24).sum();
                    let mut out = BytesMut::with_capacity(size as usize);
                    let mut ended = false;
                    for e in &entries {
                        if encode::write_http(e, &r.cursor.stream().describe(), r.d.wire, &mut out)
                        {
                            r.counters.delivered(e.kind);
                        }
                        ended |= e.kind == EventKind::End;
                    }
                    match (out.is_empty(), ended) {
                        (true, true) => return None,
                        (true, false) => continue,
                        (false, true) => return Some((out.freeze(), None)),
                        (false, false) => return Some((out.freeze(), Some(r))),
                    }
                }
                Batch::Lagged => {
                    let seq = r.cursor.next_seq();
                    return Some((slow_consumer(&r.cursor, seq, &r.d, &r.counters), None));
                }
                Batch::End => return None,
            }
        }
    })
}

/// The `error` + `end` of a subscriber cut off for lagging, numbered from `seq` (the first
/// event it did not get).
fn slow_consumer(cursor: &Cursor, seq: u64, d: &Delivery, counters: &EventCounters) -> Bytes {
    tracing::info!(request_id = %cursor.stream().id, lag_bytes = cursor.lag_bytes(), "ending a slow HTTP subscriber");
    let stream = cursor.stream();
    d.metrics
        .slow_consumer(&stream.route.name, d.wire.transport());
    let mut out = BytesMut::new();
    for ev in slow_consumer_events(seq) {
        if let Some(f) = encode::encode_http(&ev, &stream.describe(), d.wire) {
            out.extend_from_slice(&f);
            counters.delivered(ev.event);
        }
    }
    out.freeze()
}

/// Adds a heartbeat whenever `inner` has been silent for `period`. One timer per response,
/// re-armed when it fires (not a timer per frame): a busy stream only notes the time of
/// its last frame.
fn with_heartbeat<S, H>(
    inner: S,
    period: Duration,
    heartbeat: H,
) -> impl Stream<Item = Bytes> + Send
where
    S: Stream<Item = Bytes> + Send + 'static,
    H: Fn() -> Option<Bytes> + Send + 'static,
{
    use tokio::time::Instant;
    let timer = Box::pin(tokio::time::sleep(period));
    stream::unfold(
        (Box::pin(inner), heartbeat, timer, Instant::now()),
        move |(mut inner, heartbeat, mut timer, mut last)| async move {
            loop {
                tokio::select! {
                    biased;
                    item = inner.next() => {
                        let bytes = item?;
                        last = Instant::now();
                        return Some((bytes, (inner, heartbeat, timer, last)));
                    }
                    () = timer.as_mut() => {
                        let due = last + period;
                        let now = Instant::now();
                        if now < due {
                            timer.as_mut().reset(due);
                            continue;
                        }
                        last = now;
                        timer.as_mut().reset(now + period);
                        if let Some(hb) = heartbeat() {
                            return Some((hb, (inner, heartbeat, timer, last)));
                        }
                    }
                }
            }
        },
    )
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct ResumeQuery {
    after: Option<String>,
}

fn parse_seq(v: &str, what: &str) -> Result<i64, ApiError> {
    v.trim()
        .parse::<i64>()
        .map_err(|_| ApiError::InvalidRequest(format!("{what} must be an integer seq, not `{v}`")))
}

/// A stream request from a POST body: JSON, an object, and the fields the bridge reads
/// well-typed ([`StreamRequest::from_input`]); anything else is 400 `invalid_request`.
///
/// A route with a `[route.http] request` template renders the body into the neutral input
/// (as the Socket.IO side renders its payload); its `$.auth` is the request's subject,
/// [`subject_auth`]. Without one, the body is the neutral input.
pub fn decode_body(
    route: Arc<Route>,
    body: &[u8],
    subject: Subject,
    transport: crate::request::Transport,
) -> Result<StreamRequest, ApiError> {
    let body: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::InvalidRequest(format!("the request body is not valid JSON: {e}"))
    })?;
    let input = match &route.http.request {
        None => body,
        Some(_) if !body.is_object() => {
            return Err(ApiError::InvalidRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        Some(template) => template.render_request(&RequestContext {
            payload: &body,
            auth: &subject_auth(&subject),
        }),
    };
    StreamRequest::from_input(route, input, subject, transport)
}

/// What `$.auth` is to an HTTP request template: the identity the bridge established for
/// the request, never a credential. `{user_id, tenant_id}`: the verified JWT's `sub` and
/// `tenant` when `auth.jwt_secret` is set, else the `x-user-id` / `x-tenant-id` headers;
/// a field the request has no value for is absent (so it renders as `null`).
pub fn subject_auth(subject: &Subject) -> Value {
    let mut auth = serde_json::Map::new();
    if let Some(u) = &subject.user {
        auth.insert("user_id".into(), Value::from(u.as_str()));
    }
    if let Some(t) = &subject.tenant {
        auth.insert("tenant_id".into(), Value::from(t.as_str()));
    }
    Value::Object(auth)
}

/// The position a resume asks for (`None`: from the start). Over SSE, `Last-Event-ID` is
/// the newer position (the browser's own), so it wins over `?after=`.
pub fn resume_after(
    last_event_id: Option<&str>,
    after: Option<&str>,
    sse: bool,
) -> Result<Option<i64>, ApiError> {
    match (last_event_id, after) {
        (Some(id), _) if sse => parse_seq(id, "Last-Event-ID").map(Some),
        (_, Some(a)) => parse_seq(a, "`after`").map(Some),
        _ => Ok(None),
    }
}

async fn resume(
    State(b): State<Bridge>,
    Path(request_id): Path<String>,
    Query(q): Query<ResumeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    identify(&b, &headers)?;
    let wire = wire_for(&headers, Wire::Sse, Wire::Ndjson);
    let after = resume_after(
        header_str(&headers, "last-event-id"),
        q.after.as_deref(),
        wire.is_sse(),
    )?;
    let cursor = b.resume(&request_id, after).await?;
    let stream = cursor.stream();
    if wire.is_sse() && stream.is_ended() && cursor.next_seq() >= stream.next_seq() {
        // Nothing left to send: 204 tells EventSource to stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(stream_response(&b, cursor, wire, StatusCode::OK))
}

async fn cancel(
    State(b): State<Bridge>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    identify(&b, &headers)?;
    let cancelled = b.cancel_anywhere(&request_id).await?;
    Ok(axum::Json(json!({ "cancelled": cancelled })).into_response())
}

async fn follow_session(
    State(b): State<Bridge>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if b.is_draining() {
        return Err(ApiError::Draining);
    }
    identify(&b, &headers)?;
    let session = parse_session_id(&session_id)?;
    let wire = wire_for(&headers, Wire::SessionSse, Wire::SessionNdjson);
    let follow = b.follow_session_ready(session).await;
    let frames = session_frames(follow, Delivery::new(&b, wire));
    let heartbeat = move || Some(encode::session_heartbeat(&Event::heartbeat(now_ms()), wire));
    let body = with_heartbeat(frames, b.config().heartbeat(), heartbeat);
    Ok(streaming(body, wire, StatusCode::OK))
}

/// Every stream of a session, merged as their events come, until following ends.
fn session_frames(follow: SessionFollow, d: Delivery) -> impl Stream<Item = Bytes> + Send {
    struct State {
        follow: SessionFollow,
        following: bool,
        streams: SelectAll<BoxStream<'static, Bytes>>,
        d: Delivery,
    }
    let state = State {
        follow,
        following: true,
        streams: SelectAll::new(),
        d,
    };
    stream::unfold(state, |mut st| async move {
        loop {
            if !st.following && st.streams.is_empty() {
                return None;
            }
            tokio::select! {
                c = st.follow.next(), if st.following => match c {
                    Some(cursor) => st.streams.push(cursor_frames(cursor, st.d.clone()).boxed()),
                    None => st.following = false,
                },
                b = st.streams.next(), if !st.streams.is_empty() => {
                    if let Some(bytes) = b {
                        return Some((bytes, st));
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Routes;
    use serde_json::json;

    fn route(http: &str) -> Arc<Route> {
        let text = format!(
            "[[route]]\nname = \"r\"\nengine = {{ kind = \"script\" }}\n[route.http]\npath = \"/r\"\n{http}\n"
        );
        let routes = Routes::parse(&text, "r.toml").unwrap();
        routes.get("r").unwrap().clone()
    }

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_route_default_applies_only_without_a_preference() {
        let none: [&str; 0] = [];
        for (headers, sse_default, ndjson_default) in [
            (&none[..], Wire::Sse, Wire::Ndjson),
            (&["*/*"][..], Wire::Sse, Wire::Ndjson),
            (&["*/*;q=0.8", ""][..], Wire::Sse, Wire::Ndjson),
            (&["text/event-stream"][..], Wire::Sse, Wire::Sse),
            (&["application/x-ndjson"][..], Wire::Ndjson, Wire::Ndjson),
            (&["application/json, */*"][..], Wire::Ndjson, Wire::Ndjson),
        ] {
            let h = accept(headers);
            assert_eq!(route_wire(&h, HttpFormat::Sse), sse_default, "{headers:?}");
            assert_eq!(
                route_wire(&h, HttpFormat::Ndjson),
                ndjson_default,
                "{headers:?}"
            );
        }
    }

    #[test]
    fn a_request_template_renders_the_body_and_the_subject() {
        let r = route(
            r#"request = { messages = [{ role = "user", content = "$.message" }], session_id = "$.session_id", who = "$.auth", user = "$.auth.user_id", tenant = "$.auth.tenant_id" }"#,
        );
        let subject = Subject {
            user: Some("u1".into()),
            session: None,
            tenant: None,
        };
        let body = br#"{"message": "hi there", "session_id": "s-1", "user_id": "spoofed", "metadata": {}}"#;
        let req = decode_body(r.clone(), body, subject, crate::request::Transport::Sse).unwrap();
        assert_eq!(
            req.input,
            json!({"messages": [{"role": "user", "content": "hi there"}], "session_id": "s-1",
                   "who": {"user_id": "u1"}, "user": "u1", "tenant": null})
        );
        assert_eq!(req.session_id.as_deref(), Some("s-1"));
        // The body must still be an object, and the rendered fields keep their rules.
        for bad in [&b"[1]"[..], b"\"x\"", br#"{"session_id": 7}"#] {
            let e = decode_body(
                r.clone(),
                bad,
                Subject::default(),
                crate::request::Transport::Sse,
            )
            .unwrap_err();
            assert_eq!(e.error_type(), "invalid_request", "{e}");
        }
    }
}
