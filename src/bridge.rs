//! The bridge: the one narrow handle both adapters call (start, resume, cancel, follow a
//! session, drain). The only module that sees engines, the hub and the policy together.
//!
//! Owns each stream's producer task: it writes `started`, runs the engine, watches for
//! cancel, orphaning and idleness, and writes the terminal event and `end`. Adapters never
//! see an engine; engines never see a transport.

use std::collections::HashMap;
use std::future::Ready;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use tracing::Instrument;

use crate::auth::Auth;
use crate::capacity::Connections;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::engine::{Emitter, Engine, EngineError};
use crate::error::ApiError;
use crate::event::{EndReason, Finish, Seq};
use crate::flags::Enforcement;
use crate::flags::store::FlagStore;
use crate::hub::{Cursor, Hub, HubConfig, LagPolicy, SessionFollow, Stream};
use crate::metrics::Metrics;
use crate::problem::Problems;
use crate::request::{RequestId, StreamRequest, Transport};
use crate::routes::{RouteName, Routes};

/// How often shutdown re-checks whether streams have finished.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Why a bridge could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Flags(#[from] Problems),
    #[error("route {route}: its engine cannot start: {error}")]
    Engine { route: String, error: EngineError },
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    routes: Routes,
    engines: HashMap<RouteName, Arc<dyn Engine>>,
    hub: Arc<Hub>,
    flags: Arc<FlagStore>,
    metrics: Arc<Metrics>,
    auth: Auth,
    connections: Arc<Connections>,
    draining: AtomicBool,
    /// The cluster this node belongs to (`cluster.redis_url`); `None`: a single node.
    cluster: Option<Arc<Cluster>>,
}

impl Bridge {
    /// Builds the bridge; fails when the flags file cannot be loaded or an engine cannot
    /// be built.
    pub fn new(config: Config, routes: Routes) -> Result<Bridge, BridgeError> {
        let names = routes.iter().map(|r| r.name.to_string()).collect();
        let metrics = Metrics::new(&routes);
        let flags = FlagStore::open(&config.flags_dir, names, metrics.clone())?;
        let engines = routes
            .iter()
            .map(|r| {
                r.engine
                    .build()
                    .map(|e| (r.name.clone(), e))
                    .map_err(|error| BridgeError::Engine {
                        route: r.name.to_string(),
                        error,
                    })
            })
            .collect::<Result<_, _>>()?;
        let cluster = match config.cluster.redis_url {
            Some(_) => Some(Cluster::start(&config.cluster)?),
            None => None,
        };
        if let Some(c) = &cluster {
            flags.share(
                c.clone(),
                Duration::from_millis(config.cluster.flags_poll_ms),
            );
            tracing::info!(
                node = c.node_id(),
                "cluster mode: sharing streams and flags through Redis"
            );
        }
        let hub_config = HubConfig {
            max_streams: config.limits.max_streams,
            max_streams_per_subject: config.limits.max_streams_per_subject,
            replay_max_bytes: config.replay.max_bytes,
            lag: LagPolicy {
                max_lag_bytes: config.limits.max_lag_bytes,
                stall: Duration::from_secs(config.limits.slow_consumer_secs),
            },
            max_output_bytes: config.limits.max_output_bytes,
            max_live_bytes: config.limits.max_live_bytes,
            replay_max_total_bytes: config.replay.max_total_bytes,
            retention: Duration::from_secs(config.replay.retention_secs),
            delivered_retention: Duration::from_secs(config.replay.delivered_retention_secs),
        };
        let hub = match &cluster {
            Some(c) => {
                let hub = Hub::with_backing(hub_config, c.backing());
                c.attach(
                    hub.clone(),
                    routes
                        .iter()
                        .map(|r| (r.name.to_string(), r.clone()))
                        .collect(),
                    metrics.clone(),
                    Duration::from_secs(config.replay.retention_secs),
                    config.cluster.log_max_events,
                );
                hub
            }
            None => Hub::new(hub_config),
        };
        Ok(Bridge {
            inner: Arc::new(Inner {
                auth: Auth::new(&config.auth),
                connections: Connections::new(
                    config.limits.max_connections,
                    config.limits.max_connections_per_ip,
                ),
                config,
                routes,
                engines,
                hub,
                flags,
                metrics,
                draining: AtomicBool::new(false),
                cluster,
            }),
        })
    }

    pub fn flags(&self) -> &Arc<FlagStore> {
        &self.inner.flags
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn routes(&self) -> &Routes {
        &self.inner.routes
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    /// Open connections and sockets, against their limits.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.inner.connections
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.inner.cluster.as_ref()
    }

    /// Whether this node can serve new work: a single node always; a cluster node while
    /// Redis answered within `cluster.outage_timeout_ms`.
    pub fn cluster_available(&self) -> bool {
        self.inner.cluster.as_ref().is_none_or(|c| c.available())
    }

    /// Starts a stream: checks, registers, spawns the producer, returns the requester's
    /// cursor (from seq 0; its stream is `cursor.stream()`). Nothing is started when this
    /// fails.
    pub fn start(&self, req: StreamRequest) -> Result<Cursor, ApiError> {
        if self.is_draining() {
            return Err(ApiError::Draining);
        }
        if !self.cluster_available() {
            return Err(ApiError::ClusterUnavailable);
        }
        self.enforce(&req)?;
        let engine = self
            .inner
            .engines
            .get(&req.route.name)
            .ok_or_else(|| ApiError::UnknownRoute(req.route.name.to_string()))?;
        let job = engine
            .prepare(&req.input, &req.caller)
            .map_err(|e| match e {
                EngineError::InvalidOption { .. } => ApiError::InvalidRequest(e.to_string()),
                EngineError::Failed { message, .. } => ApiError::InvalidRequest(message),
            })?;
        let id = req.request_id.clone().unwrap_or_else(RequestId::generate);
        let (stream, cursor) = self.inner.hub.create(
            id,
            req.route.clone(),
            req.session_id.clone(),
            req.subject.limit_key(),
            req.transport,
            self.inner.metrics.stream(&req.route.name, req.transport),
        )?;
        let span =
            tracing::info_span!("stream", request_id = %stream.id, route = %stream.route.name);
        stream.start();
        let engine_run = {
            let _entered = span.enter();
            start_engine(job, stream.clone())
        };
        tracing::debug!(request_id = %stream.id, route = %stream.route.name, transport = req.transport.as_str(), "stream started");
        // An engine that finished in its first poll (a short burst) needs no producer
        // task: its stream ends here, and the response leaves whole.
        let engine_run = match engine_run {
            Either::Right(done) => {
                let _entered = span.enter();
                let finish = engine_finish(done.into_inner());
                conclude(
                    &self.inner.metrics,
                    engine.kind(),
                    &self.inner.hub,
                    &stream,
                    finish,
                );
                return Ok(cursor);
            }
            running => running,
        };
        let producer = produce(
            self.inner.metrics.clone(),
            engine.kind(),
            self.inner.hub.clone(),
            stream.clone(),
            engine_run,
            Duration::from_secs(self.inner.config.replay.orphan_grace_secs),
            Duration::from_secs(self.inner.config.engine.idle_timeout_secs),
        );
        tokio::spawn(producer.instrument(span));
        Ok(cursor)
    }

    /// In a cluster, waits (at most `cluster.outage_timeout_ms`) until the stream's
    /// first event is in Redis, so the request id a client is given can be resumed or
    /// cancelled from any node at once. A single node returns at once.
    pub async fn replicated(&self, stream: &Arc<Stream>) {
        let Some(c) = &self.inner.cluster else { return };
        let mut probe = stream.subscribe_from(stream.first_kept());
        let bound = Duration::from_millis(c.config().outage_timeout_ms);
        let _ = tokio::time::timeout(bound, probe.next_batch(1)).await;
    }

    /// Applies the route's flag to a new request (SPEC section 5): refused on the
    /// transport its subject is not served on; served but counted when misrouted.
    fn enforce(&self, req: &StreamRequest) -> Result<(), ApiError> {
        let flags = self.inner.flags.current();
        let route = &req.route;
        let flag = flags.route(&route.name);
        let evaluation = flag.evaluate(&route.name, &req.subject);
        self.inner
            .metrics
            .flag_evaluated(&route.name, evaluation.transport);
        self.inner.metrics.subject_seen(&route.name, &req.subject);
        match Enforcement::decide(evaluation, flag.mode, flag.strict, req.transport) {
            Enforcement::Allowed { misrouted } => {
                if misrouted {
                    self.inner.metrics.misrouted(&route.name, req.transport);
                    tracing::debug!(route = %route.name, transport = req.transport.as_str(), "misrouted request served");
                }
                Ok(())
            }
            Enforcement::Refused => Err(match req.transport {
                Transport::Socketio => ApiError::RouteMigrated {
                    route: route.name.to_string(),
                    http_path: route.http.path.clone(),
                },
                Transport::Ndjson | Transport::Sse => ApiError::RouteNotMigrated {
                    route: route.name.to_string(),
                    request_event: route
                        .socketio
                        .as_ref()
                        .map(|s| s.request_event.clone())
                        .unwrap_or_default(),
                },
            }),
        }
    }

    /// A cursor on a known stream from the event after `after` (`None`: from the start).
    /// In a cluster, a stream run by another node is read from a local mirror of it.
    pub async fn resume(&self, request_id: &str, after: Option<i64>) -> Result<Cursor, ApiError> {
        let stream = self.find(request_id).await?;
        let from = Bridge::resume_from(after)?;
        let first = stream.first_kept();
        if from < first {
            return Err(ApiError::ResumeGap {
                request_id: request_id.to_string(),
                after: after.unwrap_or(-1),
                first_kept: first,
            });
        }
        Ok(stream.subscribe_from(from))
    }

    /// The first seq a resume from `after` reads (`None` or -1: from the start).
    pub fn resume_from(after: Option<i64>) -> Result<Seq, ApiError> {
        match after {
            None => Ok(0),
            Some(a) if a < -1 => Err(ApiError::InvalidRequest(format!(
                "`after` must be a seq (or -1 for the start), not {a}"
            ))),
            // -1 is "from the start"; `a + 1` would overflow at i64::MAX.
            Some(a) => Ok(u64::try_from(a).map_or(0, |a| a + 1)),
        }
    }

    /// The stream `request_id`: held here (run here, or mirrored), or in a cluster a new
    /// mirror of the stream another node runs.
    async fn find(&self, request_id: &str) -> Result<Arc<Stream>, ApiError> {
        let unknown = || ApiError::UnknownStream(request_id.to_string());
        if let Some(s) = self.inner.hub.get(request_id) {
            return Ok(s);
        }
        let Some(cluster) = &self.inner.cluster else {
            return Err(unknown());
        };
        let id = RequestId::parse(request_id).map_err(|_| unknown())?;
        match cluster.mirror(&id).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(unknown()),
            Err(e) => {
                tracing::warn!(error = %e, request_id, "cannot read a stream from the cluster");
                Err(ApiError::ClusterUnavailable)
            }
        }
    }

    /// Cancels a live stream this node runs, whichever transport started it.
    /// `Ok(false)` when it had already ended.
    pub fn cancel(&self, request_id: &str) -> Result<bool, ApiError> {
        match self.inner.hub.get(request_id) {
            Some(s) if !s.is_mirror() => Ok(s.stop(EndReason::Cancelled)),
            _ => Err(ApiError::UnknownStream(request_id.to_string())),
        }
    }

    /// Cancels a live stream, whichever transport and, in a cluster, whichever node
    /// started it (routed to its node). `Ok(false)` when it had already ended.
    pub async fn cancel_anywhere(&self, request_id: &str) -> Result<bool, ApiError> {
        let unknown = || ApiError::UnknownStream(request_id.to_string());
        match self.cancel(request_id) {
            Err(ApiError::UnknownStream(_)) => {}
            done => return done,
        }
        let Some(cluster) = &self.inner.cluster else {
            return Err(unknown());
        };
        match cluster.cancel(request_id).await {
            Ok(Some(live)) => Ok(live),
            Ok(None) => Err(unknown()),
            Err(e) => {
                tracing::warn!(error = %e, request_id, "cannot cancel through the cluster");
                Err(ApiError::ClusterUnavailable)
            }
        }
    }

    /// Follows a session; in a cluster, the streams other nodes run for it too (each
    /// mirrored here), for as long as the follower lives.
    pub fn follow_session(&self, session: Arc<str>) -> SessionFollow {
        let mut follow = self.inner.hub.follow_session(session.clone());
        if let Some(c) = &self.inner.cluster {
            follow.hold(Box::new(c.watch_session(session).0));
        }
        follow
    }

    /// [`Bridge::follow_session`], returning (in a cluster) once the other nodes' new
    /// streams of the session reach this follower (at most `cluster.outage_timeout_ms`).
    pub async fn follow_session_ready(&self, session: Arc<str>) -> SessionFollow {
        let mut follow = self.inner.hub.follow_session(session.clone());
        if let Some(c) = &self.inner.cluster {
            let (watch, ready) = c.watch_session(session);
            let bound = Duration::from_millis(c.config().outage_timeout_ms);
            let _ = tokio::time::timeout(bound, ready).await;
            follow.hold(Box::new(watch));
        }
        follow
    }

    /// Graceful shutdown of the streams (SPEC section 8): refuse new work, let running
    /// streams finish for the grace time, end the rest with `shutdown`, give subscribers
    /// a moment to write their last events, then close session followers.
    pub async fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
        let hub = &self.inner.hub;
        let grace = Duration::from_secs(self.inner.config.shutdown.grace_secs);
        tracing::info!(
            running = hub.running(),
            grace_secs = grace.as_secs(),
            "draining"
        );
        wait_until(grace, || hub.running() == 0).await;
        let rest = hub.live_streams();
        if !rest.is_empty() {
            tracing::info!(
                streams = rest.len(),
                "ending the remaining streams with `shutdown`"
            );
        }
        for s in &rest {
            s.stop(EndReason::Shutdown);
        }
        let flush = Duration::from_secs(self.inner.config.shutdown.flush_secs);
        wait_until(flush, || hub.running() == 0).await;
        wait_until(flush, || {
            hub.live_streams().is_empty() && rest.iter().all(|s| s.subscribers() == 0)
        })
        .await;
        hub.close();
    }
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// What an engine run returns; `Err` carries the message of a panic.
type EngineResult = Result<Result<(), EngineError>, String>;

/// An engine run in progress, or its result if it finished in its first poll.
type EngineRun = Either<BoxFuture<'static, EngineResult>, Ready<EngineResult>>;

/// Starts an engine: runs it right here, in the caller's task, up to its first pause (the
/// first upstream read, or the script engine's yield after its first chunk); the producer
/// task runs the rest. The first chunk is then in the log before the response head is
/// written, and a new stream does not queue behind every running one for its first
/// event. A panic, here or later, is caught and becomes the engine's failure.
fn start_engine(job: crate::engine::Job, stream: Arc<Stream>) -> EngineRun {
    let emitter: Emitter = stream.clone();
    let mut engine = job(emitter);
    let ticking = std::future::poll_fn(move |cx| stream.poll_engine(&mut engine, cx));
    let mut run = AssertUnwindSafe(ticking)
        .catch_unwind()
        .map(|r| r.map_err(|p| panic_message(p.as_ref())))
        .boxed();
    // The waker of this first poll is a no-op: the producer task polls again as soon as
    // it runs, and whatever the engine waits on then registers that task's waker.
    let mut cx = Context::from_waker(Waker::noop());
    match run.as_mut().poll(&mut cx) {
        Poll::Ready(done) => Either::Right(std::future::ready(done)),
        Poll::Pending => Either::Left(run),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The producer task of one stream: its engine (started by [`start_engine`], run in this
/// same task), cancel, orphaning and idleness, and the stream's finish.
#[allow(clippy::too_many_arguments)]
async fn produce(
    metrics: Arc<Metrics>,
    engine_kind: &'static str,
    hub: Arc<Hub>,
    stream: Arc<Stream>,
    mut engine: EngineRun,
    orphan_grace: Duration,
    idle_timeout: Duration,
) {
    let watchdog = async {
        tokio::select! {
            _ = orphan_watch(&stream, orphan_grace) => stream.stop(EndReason::Cancelled),
            _ = idle_watch(&stream, idle_timeout) => stream.stop(EndReason::Timeout),
        };
        std::future::pending::<()>().await
    };
    // `biased`, stop first: a stopped stream's engine returns `Ok` at its next write (the
    // log takes no more events), so when both are ready the stop is the truth. Polled at
    // random, a stream cut by shutdown, cancel or timeout could end as `completed` with
    // partial text.
    let finish = tokio::select! {
        biased;
        // Dropping the engine's run (with the rest of this select) stops it, and closes
        // its upstream connection.
        reason = stream.stopped() => match stream.failure() {
            Some((error_type, message)) => Finish::Failed { error_type, message },
            None => Finish::Stopped(reason),
        },
        r = &mut engine => engine_finish(r),
        _ = watchdog => Finish::Stopped(EndReason::Cancelled),
    };
    // A stopped engine goes now, before the stream's last events are written.
    drop(engine);
    conclude(&metrics, engine_kind, &hub, &stream, finish);
}

/// How an engine's result ends its stream.
fn engine_finish(r: EngineResult) -> Finish {
    match r {
        Ok(Ok(())) => Finish::Completed,
        Ok(Err(EngineError::Failed {
            error_type,
            message,
        })) => Finish::Failed {
            error_type,
            message,
        },
        Ok(Err(e @ EngineError::InvalidOption { .. })) => Finish::Failed {
            error_type: "invalid_request".into(),
            message: e.to_string(),
        },
        Err(panic) => {
            tracing::error!(panic, "the engine panicked");
            Finish::Failed {
                error_type: "engine_error".into(),
                message: "the engine stopped unexpectedly".into(),
            }
        }
    }
}

/// Writes a stream's last events and hands it to the hub's retention.
fn conclude(
    metrics: &Metrics,
    engine_kind: &'static str,
    hub: &Arc<Hub>,
    stream: &Arc<Stream>,
    finish: Finish,
) {
    if let Finish::Failed {
        error_type,
        message,
    } = &finish
    {
        tracing::warn!(error_type, message, "stream failed");
    }
    // An engine failure is any stream ending in `error`: the engine's own error result,
    // or an `error` event the upstream sent itself.
    if stream.finish(finish).as_deref() == Some("error") {
        metrics.engine_error(&stream.route.name, engine_kind);
    }
    hub.finished(stream);
    tracing::debug!(subscribers = stream.subscribers(), "stream ended");
}

/// Resolves once the stream has had no subscriber for a whole `grace`.
async fn orphan_watch(stream: &Stream, grace: Duration) {
    loop {
        stream.orphaned().await;
        tokio::time::sleep(grace).await;
        if stream.subscribers() == 0 && stream.remote_readers() == 0 {
            return;
        }
    }
}

/// Resolves once the engine has written nothing for `limit`.
async fn idle_watch(stream: &Stream, limit: Duration) {
    let limit_ms = limit.as_millis() as u64;
    loop {
        let idle = stream.idle_ms();
        if idle >= limit_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(limit_ms - idle)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `request_body` fuzz target: `?after=9223372036854775807` overflowed.
    #[test]
    fn resume_from_any_after() {
        assert_eq!(Bridge::resume_from(None).unwrap(), 0);
        assert_eq!(Bridge::resume_from(Some(-1)).unwrap(), 0);
        assert_eq!(Bridge::resume_from(Some(3)).unwrap(), 4);
        assert_eq!(Bridge::resume_from(Some(i64::MAX)).unwrap(), 1 << 63);
        for bad in [-2, i64::MIN] {
            let e = Bridge::resume_from(Some(bad)).unwrap_err();
            assert_eq!(e.error_type(), "invalid_request");
        }
    }
}
