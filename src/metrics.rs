//! Prometheus metrics (SPEC section 6): the registry, every family, and typed handles.
//!
//! Owns metric names, labels and buckets, and nothing else: no business logic. Label
//! values come from configuration only (route names, transports, event types, end
//! reasons, modes), never from user input, so cardinality is bounded. Every family is
//! created and every configured label set initialised at start-up, so dashboards read 0
//! before anything happened. Hot paths use handles resolved once per stream or per
//! subscriber; counting an event is one atomic add.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::Metric as _;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::ApiError;
use crate::event::{EndReason, EventKind};
use crate::flags::{Flags, Mode, Target};
use crate::request::Transport;
use crate::routes::Routes;
use crate::stats::RecentSubjects;

/// The `reason` of `switchyard_streams_finished_total` for a request refused before its
/// stream started (the other reasons are the [`EndReason`]s).
pub const REJECTED: &str = "rejected";
/// First-event latency buckets: 1 ms to 30 s.
const FIRST_EVENT_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Stream duration buckets: 10 ms to 30 min.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];

pub struct Metrics {
    registry: Registry,
    streams_started: IntCounterVec,
    streams_finished: IntCounterVec,
    events: IntCounterVec,
    active: IntGaugeVec,
    first_event: HistogramVec,
    duration: HistogramVec,
    socketio_connections: IntGaugeVec,
    flag_mode: IntGaugeVec,
    flag_percent: GaugeVec,
    flag_evaluations: IntCounterVec,
    misrouted: IntCounterVec,
    flag_changes: IntCounterVec,
    flag_reload_errors: IntCounter,
    flags_version: IntGauge,
    engine_errors: IntCounterVec,
    streams_held: IntGauge,
    live_bytes: IntGauge,
    retained_bytes: IntGauge,
    connections: IntGauge,
    runtime_tasks: IntGauge,
    cluster_flush: Histogram,
    cluster_flush_events: Histogram,
    cluster_redis_errors: IntCounterVec,
    cluster_mirrors: IntGauge,
    cluster_takeovers: IntCounter,
    cluster_fenced: IntCounter,
    /// The recent subjects of each route, for the console's preview (not exported).
    recent: RecentSubjects,
    /// Each route's handles by transport (`Transport::ALL` order), resolved once at start
    /// so a stream costs no label lookup.
    handles: HashMap<Arc<str>, [Handles; 3]>,
}

/// What a stream and its subscribers of one route × transport count with.
#[derive(Clone)]
struct Handles {
    stream: StreamMetrics,
    events: EventCounters,
}

/// One route × transport's counters as they stand, for `GET /admin/stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransportCounts {
    pub started: u64,
    pub active: i64,
    /// Finished streams by end reason (each [`EndReason`], then [`REJECTED`]).
    pub finished: Vec<(&'static str, u64)>,
    pub misrouted: u64,
    pub first_event: HistogramCounts,
}

/// A histogram as it stands: sample count, sum, and cumulative counts per finite upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramCounts {
    pub count: u64,
    pub sum: f64,
    pub buckets: Vec<(f64, u64)>,
}

/// Redis operations whose failures `switchyard_cluster_redis_errors_total` counts.
pub const CLUSTER_OPS: [&str; 3] = ["append", "read", "heartbeat"];
/// Write-through flush latency buckets: 50 us to 1 s.
const FLUSH_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0,
];
/// Events per flush buckets.
const FLUSH_EVENT_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];

/// Handles for one stream, resolved once when it starts.
#[derive(Clone)]
pub struct StreamMetrics {
    started: IntCounter,
    active: IntGauge,
    first_event: Histogram,
    duration: Histogram,
    finished: IntCounterVec,
    route: Arc<str>,
    transport: Transport,
}

impl StreamMetrics {
    /// The stream was accepted and registered.
    pub fn started(&self) {
        self.started.inc();
        self.active.inc();
    }

    /// Request to first chunk.
    pub fn first_chunk(&self, seconds: f64) {
        self.first_event.observe(seconds);
    }

    /// The stream wrote `end` with `reason` after `seconds`.
    pub fn finished(&self, reason: &str, seconds: f64) {
        self.active.dec();
        self.duration.observe(seconds);
        self.finished
            .with_label_values(&[&self.route, self.transport.as_str(), reason])
            .inc();
    }
}

/// Per-event-type delivery counters of one subscriber.
#[derive(Clone)]
pub struct EventCounters(Arc<[IntCounter; EventKind::ALL.len()]>);

impl EventCounters {
    #[inline]
    pub fn delivered(&self, kind: EventKind) {
        self.0[kind.index()].inc();
    }
}

fn must<T>(r: prometheus::Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        // Only reachable with a malformed name or a double registration: a bug here.
        Err(e) => unreachable_metric(what, e),
    }
}

#[allow(clippy::panic)]
fn unreachable_metric(what: &str, e: prometheus::Error) -> ! {
    panic!("metric {what} cannot be registered: {e}")
}

impl Metrics {
    pub fn new(routes: &Routes) -> Arc<Metrics> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr, $name:literal) => {{
                let m = must($m, $name);
                must(registry.register(Box::new(m.clone())), $name);
                m
            }};
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let m = Metrics {
            streams_started: reg!(
                counter(
                    "switchyard_streams_started_total",
                    "Streams started, by route and the transport of the request.",
                    &["route", "transport"]
                ),
                "streams_started"
            ),
            streams_finished: reg!(
                counter(
                    "switchyard_streams_finished_total",
                    "Streams finished, by end reason; `rejected` counts refused requests (409, 413, 429, 503); `slow_consumer` counts subscribers cut off.",
                    &["route", "transport", "reason"]
                ),
                "streams_finished"
            ),
            events: reg!(
                counter(
                    "switchyard_events_total",
                    "Events delivered, per subscriber transport.",
                    &["route", "transport", "event"]
                ),
                "events"
            ),
            active: reg!(
                gauge(
                    "switchyard_active_streams",
                    "Streams running now.",
                    &["route", "transport"]
                ),
                "active"
            ),
            first_event: reg!(
                HistogramVec::new(
                    HistogramOpts::new(
                        "switchyard_first_event_seconds",
                        "Time from the request to the first chunk."
                    )
                    .buckets(FIRST_EVENT_BUCKETS.to_vec()),
                    &["route", "transport"]
                ),
                "first_event"
            ),
            duration: reg!(
                HistogramVec::new(
                    HistogramOpts::new(
                        "switchyard_stream_duration_seconds",
                        "Time from the request to the stream's end."
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["route", "transport"]
                ),
                "duration"
            ),
            socketio_connections: reg!(
                gauge(
                    "switchyard_socketio_connections",
                    "Socket.IO connections open now.",
                    &["namespace"]
                ),
                "socketio_connections"
            ),
            flag_mode: reg!(
                gauge(
                    "switchyard_flag_mode",
                    "1 for each route's mode in force, 0 for the others.",
                    &["route", "mode"]
                ),
                "flag_mode"
            ),
            flag_percent: reg!(
                GaugeVec::new(
                    Opts::new(
                        "switchyard_flag_percent",
                        "Each route's rollout percent in force."
                    ),
                    &["route"]
                ),
                "flag_percent"
            ),
            flag_evaluations: reg!(
                counter(
                    "switchyard_flag_evaluations_total",
                    "Flag evaluations of new requests, by evaluated transport (http or socketio).",
                    &["route", "transport"]
                ),
                "flag_evaluations"
            ),
            misrouted: reg!(
                counter(
                    "switchyard_misrouted_total",
                    "Requests served on the other transport than their subject's, by the transport used.",
                    &["route", "transport"]
                ),
                "misrouted"
            ),
            flag_changes: reg!(
                counter(
                    "switchyard_flag_changes_total",
                    "Flag changes applied (admin API or file).",
                    &["route"]
                ),
                "flag_changes"
            ),
            flag_reload_errors: reg!(
                IntCounter::new(
                    "switchyard_flag_reload_errors_total",
                    "Invalid edits of the flags file (the last good flags stayed)."
                ),
                "flag_reload_errors"
            ),
            flags_version: reg!(
                IntGauge::new(
                    "switchyard_flags_version",
                    "The flags version in force on this node."
                ),
                "flags_version"
            ),
            engine_errors: reg!(
                counter(
                    "switchyard_engine_errors_total",
                    "Engine failures (errors, panics, upstream failures).",
                    &["route", "engine"]
                ),
                "engine_errors"
            ),
            cluster_flush: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "switchyard_cluster_flush_seconds",
                        "Cluster write-through: time of one flush (every pending stream's events in one Redis pipeline)."
                    )
                    .buckets(FLUSH_BUCKETS.to_vec())
                ),
                "cluster_flush"
            ),
            cluster_flush_events: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "switchyard_cluster_flush_events",
                        "Cluster write-through: events written by one flush."
                    )
                    .buckets(FLUSH_EVENT_BUCKETS.to_vec())
                ),
                "cluster_flush_events"
            ),
            cluster_redis_errors: reg!(
                counter(
                    "switchyard_cluster_redis_errors_total",
                    "Cluster: failed Redis calls, by operation.",
                    &["op"]
                ),
                "cluster_redis_errors"
            ),
            cluster_mirrors: reg!(
                IntGauge::new(
                    "switchyard_cluster_mirrors",
                    "Cluster: local copies held of streams other nodes run. Read at scrape time."
                ),
                "cluster_mirrors"
            ),
            cluster_takeovers: reg!(
                IntCounter::new(
                    "switchyard_cluster_takeovers_total",
                    "Cluster: streams this node ended for everyone because their node was lost."
                ),
                "cluster_takeovers"
            ),
            cluster_fenced: reg!(
                IntCounter::new(
                    "switchyard_cluster_fenced_total",
                    "Cluster: streams this node stopped because another node had ended them (it was cut off)."
                ),
                "cluster_fenced"
            ),
            streams_held: reg!(
                IntGauge::new(
                    "switchyard_streams_held",
                    "Streams in the registry: running, or ended and kept for resume (replay.retention_secs). Read at scrape time."
                ),
                "streams_held"
            ),
            live_bytes: reg!(
                IntGauge::new(
                    "switchyard_live_bytes",
                    "Memory live streams hold (their logs and text), against limits.max_live_bytes. Read at scrape time."
                ),
                "live_bytes"
            ),
            retained_bytes: reg!(
                IntGauge::new(
                    "switchyard_retained_bytes",
                    "Memory finished streams kept for resume hold (compacted), against replay.max_total_bytes. Read at scrape time."
                ),
                "retained_bytes"
            ),
            connections: reg!(
                IntGauge::new(
                    "switchyard_connections",
                    "Connections open now, against limits.max_connections. Read at scrape time."
                ),
                "connections"
            ),
            runtime_tasks: reg!(
                IntGauge::new(
                    "switchyard_runtime_tasks",
                    "Tasks alive in the bridge's async runtime, read at scrape time: back to its idle level when nothing runs, or something leaks."
                ),
                "runtime_tasks"
            ),
            registry,
            recent: RecentSubjects::new(routes.iter().map(|r| &*r.name)),
            handles: HashMap::new(),
        };
        for ns in routes.namespaces() {
            m.socketio_connections.with_label_values(&[&ns]);
        }
        for r in routes.iter() {
            let route = &*r.name;
            for t in Transport::ALL {
                let t = t.as_str();
                m.streams_started.with_label_values(&[route, t]);
                m.active.with_label_values(&[route, t]);
                m.first_event.with_label_values(&[route, t]);
                m.duration.with_label_values(&[route, t]);
                m.misrouted.with_label_values(&[route, t]);
                for reason in EndReason::ALL
                    .map(EndReason::as_str)
                    .into_iter()
                    .chain([REJECTED])
                {
                    m.streams_finished.with_label_values(&[route, t, reason]);
                }
                for kind in EventKind::ALL {
                    m.events.with_label_values(&[route, t, kind.as_str()]);
                }
            }
            for target in [Target::Http, Target::Socketio] {
                m.flag_evaluations
                    .with_label_values(&[route, target.as_str()]);
            }
            m.flag_changes.with_label_values(&[route]);
            m.engine_errors.with_label_values(&[route, r.engine.kind()]);
        }
        for op in CLUSTER_OPS {
            m.cluster_redis_errors.with_label_values(&[op]);
        }
        let mut m = m;
        for r in routes.iter() {
            let handles = Transport::ALL.map(|t| Handles {
                stream: m.resolve_stream(&r.name, t),
                events: m.resolve_events(&r.name, t),
            });
            m.handles.insert(r.name.clone(), handles);
        }
        Arc::new(m)
    }

    /// Sets the gauges read at scrape time: the streams the hub holds, the memory live
    /// streams hold, the open connections, and the tasks alive in the runtime this is
    /// called from.
    pub fn cluster_flushed(&self, seconds: f64, events: u64) {
        self.cluster_flush.observe(seconds);
        self.cluster_flush_events.observe(events as f64);
    }

    pub fn cluster_redis_error(&self, op: &'static str) {
        self.cluster_redis_errors.with_label_values(&[op]).inc();
    }

    pub fn cluster_took_over(&self) {
        self.cluster_takeovers.inc();
    }

    pub fn cluster_fenced(&self) {
        self.cluster_fenced.inc();
    }

    pub fn cluster_mirrors(&self, n: usize) {
        self.cluster_mirrors
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn sample(
        &self,
        streams_held: usize,
        live_bytes: u64,
        retained_bytes: u64,
        connections: usize,
    ) {
        self.streams_held
            .set(i64::try_from(streams_held).unwrap_or(i64::MAX));
        self.live_bytes
            .set(i64::try_from(live_bytes).unwrap_or(i64::MAX));
        self.retained_bytes
            .set(i64::try_from(retained_bytes).unwrap_or(i64::MAX));
        self.connections
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let tasks = rt.metrics().num_alive_tasks();
            self.runtime_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into memory only fails on a malformed family, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The handles of a stream about to start (nothing is counted until
    /// [`StreamMetrics::started`]).
    pub fn stream(&self, route: &Arc<str>, transport: Transport) -> StreamMetrics {
        match self.handles(route, transport) {
            Some(h) => h.stream.clone(),
            None => self.resolve_stream(route, transport),
        }
    }

    fn handles(&self, route: &str, transport: Transport) -> Option<&Handles> {
        let i = Transport::ALL.iter().position(|t| *t == transport)?;
        self.handles.get(route).and_then(|h| h.get(i))
    }

    fn resolve_stream(&self, route: &Arc<str>, transport: Transport) -> StreamMetrics {
        let labels = [&**route, transport.as_str()];
        StreamMetrics {
            started: self.streams_started.with_label_values(&labels),
            active: self.active.with_label_values(&labels),
            first_event: self.first_event.with_label_values(&labels),
            duration: self.duration.with_label_values(&labels),
            finished: self.streams_finished.clone(),
            route: route.clone(),
            transport,
        }
    }

    /// The delivery counters of one subscriber.
    pub fn subscriber(&self, route: &str, transport: Transport) -> EventCounters {
        match self.handles(route, transport) {
            Some(h) => h.events.clone(),
            None => self.resolve_events(route, transport),
        }
    }

    fn resolve_events(&self, route: &str, transport: Transport) -> EventCounters {
        EventCounters(Arc::new(EventKind::ALL.map(|k| {
            self.events
                .with_label_values(&[route, transport.as_str(), k.as_str()])
        })))
    }

    /// A subscriber cut off for lagging.
    pub fn slow_consumer(&self, route: &str, transport: Transport) {
        self.streams_finished
            .with_label_values(&[route, transport.as_str(), "slow_consumer"])
            .inc();
    }

    /// Counts a refused request on a known route (409, 413, 429, 503); other errors are
    /// not streams.
    pub fn refused(&self, route: &str, transport: Transport, error: &ApiError) {
        if matches!(error.http_status(), 409 | 413 | 429 | 503) {
            self.streams_finished
                .with_label_values(&[route, transport.as_str(), REJECTED])
                .inc();
        }
    }

    pub fn flag_evaluated(&self, route: &str, evaluated: Target) {
        self.flag_evaluations
            .with_label_values(&[route, evaluated.as_str()])
            .inc();
    }

    /// Remembers a new request's subject for the console's preview (atomics only).
    #[inline]
    pub fn subject_seen(&self, route: &str, subject: &crate::request::Subject) {
        self.recent.record(route, subject);
    }

    /// The recent subjects of every route.
    pub fn recent_subjects(&self) -> &RecentSubjects {
        &self.recent
    }

    /// A configured route × transport's counters now (for `GET /admin/stats`; not a hot
    /// path: each read resolves its label set).
    pub fn transport_counts(&self, route: &str, transport: Transport) -> TransportCounts {
        let labels = [route, transport.as_str()];
        let hist = self.first_event.with_label_values(&labels).metric();
        let h = hist.get_histogram();
        TransportCounts {
            started: self.streams_started.with_label_values(&labels).get(),
            active: self.active.with_label_values(&labels).get(),
            finished: EndReason::ALL
                .map(EndReason::as_str)
                .into_iter()
                .chain([REJECTED])
                .map(|r| {
                    let n = self
                        .streams_finished
                        .with_label_values(&[route, transport.as_str(), r])
                        .get();
                    (r, n)
                })
                .collect(),
            misrouted: self.misrouted.with_label_values(&labels).get(),
            first_event: HistogramCounts {
                count: h.get_sample_count(),
                sum: h.get_sample_sum(),
                buckets: h
                    .get_bucket()
                    .iter()
                    .filter(|b| b.upper_bound().is_finite())
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect(),
            },
        }
    }

    /// A configured route's flag evaluations: (http, socketio).
    pub fn evaluations(&self, route: &str) -> (u64, u64) {
        let get = |t: Target| {
            self.flag_evaluations
                .with_label_values(&[route, t.as_str()])
                .get()
        };
        (get(Target::Http), get(Target::Socketio))
    }

    pub fn misrouted(&self, route: &str, used: Transport) {
        self.misrouted
            .with_label_values(&[route, used.as_str()])
            .inc();
    }

    pub fn flag_changed(&self, route: &str) {
        self.flag_changes.with_label_values(&[route]).inc();
    }

    pub fn flag_reload_failed(&self) {
        self.flag_reload_errors.inc();
    }

    /// Sets the flag gauges from the flags in force (every configured route).
    pub fn flags_in_force(&self, flags: &Flags, routes: &[String]) {
        self.flags_version
            .set(i64::try_from(flags.version).unwrap_or(i64::MAX));
        for route in routes {
            let flag = flags.route(route);
            for mode in Mode::ALL {
                self.flag_mode
                    .with_label_values(&[route, mode.as_str()])
                    .set(i64::from(flag.mode == mode));
            }
            self.flag_percent
                .with_label_values(&[route])
                .set(flag.percent.as_f64());
        }
    }

    pub fn engine_error(&self, route: &str, engine: &str) {
        self.engine_errors.with_label_values(&[route, engine]).inc();
    }

    pub fn socket_connected(&self, namespace: &str) {
        self.socketio_connections
            .with_label_values(&[namespace])
            .inc();
    }

    pub fn socket_disconnected(&self, namespace: &str) {
        self.socketio_connections
            .with_label_values(&[namespace])
            .dec();
    }
}
