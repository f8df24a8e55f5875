//! The stream hub: every live or recently finished stream, and the session taps.
//!
//! Owns the registry (request id → [`Stream`]), the capacity and duplicate checks (the
//! live memory budget among them), the retention of finished streams for resume, and
//! session following (a tap receives a
//! cursor on every stream of its session). It never encodes for a wire, never runs an
//! engine, and never blocks a producer on a subscriber.

mod compact;
mod log;

use std::collections::HashSet;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{mpsc, watch};

pub use log::{
    Backing, Batch, Cursor, Entry, LagPolicy, LiveBudget, LogStore, Stream, StreamBounds,
};

use crate::error::ApiError;
use crate::metrics::StreamMetrics;
use crate::request::{RequestId, Transport};
use crate::routes::Route;

/// Cursors a session tap may have waiting before it counts as too slow and is dropped.
const TAP_QUEUE: usize = 64;

/// Sizing of the hub, from the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub max_streams: usize,
    /// Most running streams per subject key; 0: no limit.
    pub max_streams_per_subject: usize,
    pub replay_max_bytes: usize,
    /// When a subscriber counts as not keeping up (and how long a producer waits for it).
    pub lag: LagPolicy,
    /// Most bytes of text one stream may accumulate (`limits.max_output_bytes`).
    pub max_output_bytes: usize,
    /// Memory all live streams together may hold (`limits.max_live_bytes`).
    pub max_live_bytes: u64,
    /// Approximate memory all finished streams together may hold for resume; past it
    /// the oldest are dropped before their retention ends.
    pub replay_max_total_bytes: u64,
    pub retention: Duration,
    /// How long a finished stream whose every subscriber was sent `end` is kept
    /// (`replay.delivered_retention_secs`; at most `retention`).
    pub delivered_retention: Duration,
}

impl HubConfig {
    /// How often the retained streams are looked at: often enough that a stream is
    /// released within a fifth of its retention of when it could be.
    fn sweep_every(&self) -> Duration {
        (self.delivered_retention.min(self.retention) / 5)
            .clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}

/// Finished streams kept for resume, each queue oldest first (by when they finished).
/// A stream is `fresh` until `delivered_retention` has passed: then it is dropped if every
/// subscriber was sent its `end`, else `kept` (compacted) until `retention` has passed.
#[derive(Default)]
struct Retained {
    fresh: VecDeque<(Instant, Arc<Stream>)>,
    kept: VecDeque<(Instant, Arc<Stream>)>,
    /// Whether the sweeper task runs (it stops when both queues are empty).
    sweeping: bool,
}

impl Retained {
    /// The oldest stream of either queue.
    fn pop_oldest(&mut self) -> Option<Arc<Stream>> {
        let fresh = self.fresh.front().map(|(at, _)| *at);
        let kept = self.kept.front().map(|(at, _)| *at);
        let queue = match (fresh, kept) {
            (Some(f), Some(k)) if k <= f => &mut self.kept,
            (Some(_), _) => &mut self.fresh,
            (None, _) => &mut self.kept,
        };
        queue.pop_front().map(|(_, s)| s)
    }
}

struct Tap {
    id: u64,
    tx: mpsc::Sender<Cursor>,
}

pub struct Hub {
    config: HubConfig,
    budget: Arc<LiveBudget>,
    streams: DashMap<RequestId, Arc<Stream>>,
    sessions: DashMap<Arc<str>, Vec<Tap>>,
    running: AtomicUsize,
    /// Running streams per subject key (only keys with at least one).
    per_subject: DashMap<Arc<str>, usize>,
    retained: std::sync::Mutex<Retained>,
    next_tap: AtomicU64,
    closed: watch::Sender<bool>,
    /// Where the logs of the streams started here are written.
    backing: Backing,
}

impl Hub {
    pub fn new(config: HubConfig) -> Arc<Hub> {
        Hub::with_backing(config, Backing::Local)
    }

    /// A hub whose streams' logs are written to `backing` (a cluster's store).
    pub fn with_backing(config: HubConfig, backing: Backing) -> Arc<Hub> {
        Arc::new(Hub {
            backing,
            budget: Arc::new(LiveBudget::new(config.max_live_bytes, config.max_streams)),
            config,
            streams: DashMap::new(),
            sessions: DashMap::new(),
            running: AtomicUsize::new(0),
            per_subject: DashMap::new(),
            retained: std::sync::Mutex::new(Retained::default()),
            next_tap: AtomicU64::new(0),
            closed: watch::channel(false).0,
        })
    }

    /// Registers a new stream and returns it with the requester's cursor (from seq 0), so
    /// the requester misses nothing. Session taps get their cursors at once too. `subject`
    /// is the key the per-subject limit counts under (`None`: anonymous, not counted).
    pub fn create(
        self: &Arc<Self>,
        id: RequestId,
        route: Arc<Route>,
        session_id: Option<Arc<str>>,
        subject: Option<Arc<str>>,
        origin: Transport,
        metrics: StreamMetrics,
    ) -> Result<(Arc<Stream>, Cursor), ApiError> {
        if self.budget.exhausted() {
            return Err(ApiError::OverBudget {
                limit: self.budget.max(),
            });
        }
        let max = self.config.max_streams;
        if self.running.fetch_add(1, Ordering::AcqRel) >= max {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::OverCapacity { limit: max });
        }
        // With no per-subject limit there is nothing to count (and nothing to give back).
        let subject = subject.filter(|_| self.config.max_streams_per_subject > 0);
        if let Some(key) = &subject
            && let Err(e) = self.take_subject_slot(key)
        {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        let stream = Arc::new_cyclic(|me| {
            Stream::new(
                id.clone(),
                route,
                session_id.clone(),
                subject,
                origin,
                self.bounds(self.backing.clone()),
                metrics.clone(),
                me.clone(),
            )
        });
        match self.streams.entry(id.clone()) {
            dashmap::Entry::Occupied(e) if !e.get().is_ended() => {
                self.release_slots(&stream);
                return Err(ApiError::DuplicateRequest(id.to_string()));
            }
            dashmap::Entry::Occupied(mut e) => {
                e.insert(stream.clone());
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(stream.clone());
            }
        }
        metrics.started();
        let cursor = stream.subscribe_from(0);
        if let Some(session) = &session_id {
            self.offer_to_taps(session, &stream);
        }
        Ok((stream, cursor))
    }

    fn bounds(&self, backing: Backing) -> StreamBounds {
        StreamBounds {
            max_bytes: self.config.replay_max_bytes as u64,
            lag: self.config.lag,
            max_output: self.config.max_output_bytes,
            budget: self.budget.clone(),
            backing,
        }
    }

    /// The local copy of a stream another node runs: the one already held, or a new empty
    /// mirror starting at `first` (fed with [`Stream::mirror_append`]; dropped
    /// [`Hub::mirror_finished`] retention after its end). Taps of its session get it.
    pub fn mirror(
        self: &Arc<Self>,
        id: RequestId,
        route: Arc<Route>,
        session_id: Option<Arc<str>>,
        first: crate::event::Seq,
        metrics: StreamMetrics,
    ) -> (Arc<Stream>, bool) {
        let mut created = false;
        let stream = self
            .streams
            .entry(id.clone())
            .or_insert_with(|| {
                created = true;
                let s = Arc::new_cyclic(|me| {
                    Stream::new(
                        id,
                        route,
                        session_id,
                        None,
                        Transport::Ndjson,
                        self.bounds(Backing::Mirror),
                        metrics,
                        me.clone(),
                    )
                });
                s.mirror_start_at(first);
                s
            })
            .clone();
        if created && let Some(session) = &stream.session_id {
            self.offer_to_taps(session, &stream);
        }
        (stream, created)
    }

    /// A mirror ended (or is given up): kept for resume for the retention time, then
    /// dropped like a finished stream.
    pub fn mirror_finished(self: &Arc<Self>, stream: &Arc<Stream>) {
        self.retain(stream);
    }

    /// Drops a mirror at once (nobody reads it and it will not be fed any more).
    pub fn drop_mirror(&self, stream: &Arc<Stream>) {
        stream.release_budget();
        self.streams
            .remove_if(&stream.id, |_, s| Arc::ptr_eq(s, stream));
    }

    fn take_subject_slot(&self, key: &Arc<str>) -> Result<(), ApiError> {
        let max = self.config.max_streams_per_subject;
        let mut count = self.per_subject.entry(key.clone()).or_insert(0);
        if *count >= max {
            return Err(ApiError::SubjectOverCapacity { limit: max });
        }
        *count += 1;
        Ok(())
    }

    /// Frees the running slot (and the subject's) of a stream that ended or never started.
    fn release_slots(&self, stream: &Stream) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = &stream.subject {
            if let Some(mut count) = self.per_subject.get_mut(key) {
                *count = count.saturating_sub(1);
            }
            self.per_subject.remove_if(key, |_, count| *count == 0);
        }
    }

    fn offer_to_taps(&self, session: &Arc<str>, stream: &Arc<Stream>) {
        if let Some(mut taps) = self.sessions.get_mut(session) {
            // A tap that cannot take one more cursor is too slow (or gone): drop it, which
            // ends its follower, rather than hold a stream back or queue without bound.
            taps.retain(|tap| {
                tap.tx
                    .try_send(stream.subscribe_from(stream.first_kept()))
                    .is_ok()
            });
        }
    }

    /// Called once by the producer when its stream has written `end`: frees its running
    /// slot and keeps it resumable for the retention time.
    pub fn finished(self: &Arc<Self>, stream: &Arc<Stream>) {
        self.release_slots(stream);
        self.retain(stream);
    }

    /// Keeps a finished stream for resume; one sweeper task (not a timer per stream)
    /// releases it when its time is up.
    fn retain(self: &Arc<Self>, stream: &Arc<Stream>) {
        stream.retire();
        let start_sweeper = {
            let mut q = self.retained_queue();
            q.fresh.push_back((Instant::now(), stream.clone()));
            !std::mem::replace(&mut q.sweeping, true)
        };
        self.sweep();
        if start_sweeper {
            let hub = Arc::downgrade(self);
            let every = self.config.sweep_every();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(hub) = hub.upgrade() else { return };
                    if !hub.sweep() {
                        return;
                    }
                }
            });
        }
    }

    fn retained_queue(&self) -> std::sync::MutexGuard<'_, Retained> {
        self.retained.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the finished streams whose time is up (see [`Retained`]), then the oldest
    /// while all of them together hold more than `replay_max_total_bytes`. Returns
    /// whether any is still kept (else the sweeper stops, under the same lock that a new
    /// retained stream checks, so none is missed).
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let delivered_after = self.config.delivered_retention.min(self.config.retention);
        let mut q = self.retained_queue();
        while let Some((at, _)) = q.fresh.front() {
            let at = *at;
            if now.duration_since(at) < delivered_after {
                break;
            }
            let Some((_, stream)) = q.fresh.pop_front() else {
                break;
            };
            if stream.delivered() {
                self.drop_retained(&stream);
            } else {
                stream.compact();
                q.kept.push_back((at, stream));
            }
        }
        while let Some((at, _)) = q.kept.front() {
            if now.duration_since(*at) < self.config.retention {
                break;
            }
            if let Some((_, stream)) = q.kept.pop_front() {
                self.drop_retained(&stream);
            }
        }
        while self.budget.finished() > self.config.replay_max_total_bytes {
            let Some(stream) = q.pop_oldest() else { break };
            self.drop_retained(&stream);
        }
        let any = !q.fresh.is_empty() || !q.kept.is_empty();
        q.sweeping = any;
        any
    }

    fn drop_retained(&self, stream: &Arc<Stream>) {
        stream.forget();
        self.streams
            .remove_if(&stream.id, |_, s| Arc::ptr_eq(s, stream));
    }

    /// Memory live streams hold (their logs and text), against `limits.max_live_bytes`.
    pub fn live_bytes(&self) -> u64 {
        self.budget.used()
    }

    /// Approximate memory held by finished streams kept for resume, in bytes.
    pub fn retained_bytes(&self) -> u64 {
        self.budget.finished()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Stream>> {
        let id = RequestId::parse(id).ok()?;
        self.streams.get(&id).map(|s| s.clone())
    }

    /// Streams still running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Mirrors held (copies of streams other nodes run).
    pub fn mirrors(&self) -> usize {
        self.streams.iter().filter(|s| s.is_mirror()).count()
    }

    /// Streams held (running or retained).
    pub fn held(&self) -> usize {
        self.streams.len()
    }

    pub fn live_streams(&self) -> Vec<Arc<Stream>> {
        self.streams
            .iter()
            .filter(|s| !s.is_ended() && !s.is_mirror())
            .map(|s| s.clone())
            .collect()
    }

    /// Follows a session: a cursor for every stream of the session that starts from now on,
    /// and for the ones already running (from their current head, as joining a room).
    pub fn follow_session(self: &Arc<Self>, session: Arc<str>) -> SessionFollow {
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let id = self.next_tap.fetch_add(1, Ordering::Relaxed);
        self.sessions
            .entry(session.clone())
            .or_default()
            .push(Tap { id, tx: tx.clone() });
        let pending: Vec<Cursor> = self
            .streams
            .iter()
            .filter(|s| !s.is_ended() && s.session_id.as_deref() == Some(&*session))
            .map(|s| s.subscribe_from_head())
            .collect();
        SessionFollow {
            hub: Arc::downgrade(self),
            session,
            id,
            rx,
            initial: pending.iter().map(|c| c.stream().id.clone()).collect(),
            pending,
            closed: self.closed.subscribe(),
            held: None,
        }
    }

    /// Ends every session follower (at shutdown, after the streams ended).
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.sessions.clear();
    }
}

/// A follower of one session. Yields a cursor per stream of the session; ends when the hub
/// closes or the follower was too slow to take its cursors.
pub struct SessionFollow {
    hub: std::sync::Weak<Hub>,
    session: Arc<str>,
    id: u64,
    rx: mpsc::Receiver<Cursor>,
    pending: Vec<Cursor>,
    /// Streams that were running at join time: a tap may offer them again (the join raced
    /// their start), and the second cursor is dropped.
    initial: HashSet<RequestId>,
    closed: watch::Receiver<bool>,
    /// Whatever must live as long as the follower (a cluster's watch of the session).
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl SessionFollow {
    pub fn session(&self) -> &Arc<str> {
        &self.session
    }

    /// Keeps `guard` alive as long as this follower.
    pub fn hold(&mut self, guard: Box<dyn std::any::Any + Send + Sync>) {
        self.held = Some(guard);
    }

    /// The next stream of the session, or `None` when following is over.
    pub async fn next(&mut self) -> Option<Cursor> {
        if let Some(c) = self.pending.pop() {
            return Some(c);
        }
        if *self.closed.borrow() {
            return None;
        }
        loop {
            let cursor = tokio::select! {
                c = self.rx.recv() => c?,
                _ = self.closed.wait_for(|closed| *closed) => return None,
            };
            if !self.initial.contains(&cursor.stream().id) {
                return Some(cursor);
            }
        }
    }
}

impl Drop for SessionFollow {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            let empty = match hub.sessions.get_mut(&self.session) {
                Some(mut taps) => {
                    taps.retain(|t| t.id != self.id);
                    taps.is_empty()
                }
                None => false,
            };
            if empty {
                hub.sessions
                    .remove_if(&self.session, |_, taps| taps.is_empty());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Sink;
    use crate::event::{EventKind, Finish};
    use crate::metrics::Metrics;
    use crate::routes::Routes;
    use serde_json::json;

    const ROUTES: &str =
        "[[route]]\nname = \"chat\"\nhttp = \"/chat\"\nengine = { kind = \"script\" }\n";

    fn finished_stream(hub: &Arc<Hub>, routes: &Routes, id: &str, subject: Option<&str>) {
        let route = routes.get("chat").unwrap().clone();
        let metrics = Metrics::new(routes);
        let (stream, _cursor) = hub
            .create(
                RequestId::parse(id).unwrap(),
                route.clone(),
                None,
                subject.map(Into::into),
                Transport::Ndjson,
                metrics.stream(&route.name, Transport::Ndjson),
            )
            .unwrap();
        stream.start();
        for _ in 0..10 {
            stream.emit(EventKind::Chunk, json!({"text": "0123456789abcdef"}));
        }
        stream.finish(Finish::Completed);
        hub.finished(&stream);
    }

    #[tokio::test]
    async fn finished_streams_past_the_total_budget_are_dropped_oldest_first() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let hub = Hub::new(HubConfig {
            replay_max_total_bytes: 5_000,
            ..test_config()
        });
        for i in 0..20 {
            finished_stream(&hub, &routes, &format!("s{i}"), None);
        }
        let kept = hub.held();
        assert!(kept > 0 && kept < 20, "kept {kept} of 20");
        assert!(hub.retained_bytes() <= 5_000);
        // The newest are the ones kept.
        assert!(hub.get("s19").is_some());
        assert!(hub.get("s0").is_none());
    }

    #[tokio::test]
    async fn per_subject_slots_are_taken_and_given_back() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let hub = Hub::new(HubConfig {
            max_streams_per_subject: 1,
            ..test_config()
        });
        let route = routes.get("chat").unwrap().clone();
        let metrics = Metrics::new(&routes);
        let open = |id: &str| {
            hub.create(
                RequestId::parse(id).unwrap(),
                route.clone(),
                None,
                Some("user:a".into()),
                Transport::Ndjson,
                metrics.stream(&route.name, Transport::Ndjson),
            )
        };
        let (first, _c) = open("a1").unwrap();
        assert!(matches!(
            open("a2"),
            Err(ApiError::SubjectOverCapacity { limit: 1 })
        ));
        // A duplicate id gives its slot back too.
        assert!(matches!(
            open("a1"),
            Err(ApiError::SubjectOverCapacity { .. })
        ));
        first.finish(Finish::Completed);
        hub.finished(&first);
        assert_eq!(hub.running(), 0);
        assert!(open("a3").is_ok());
    }

    /// An engine's events are stamped with the time its poll began (the clock is read once
    /// per poll, not per event); outside a poll, with the clock.
    #[test]
    fn an_engines_events_carry_the_time_its_poll_began() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let hub = Hub::new(test_config());
        let (stream, _reader) = open(&hub, &routes, "stamped");
        let mut engine = std::future::poll_fn(|_| {
            stream.emit_chunk("a");
            std::thread::sleep(Duration::from_millis(20));
            stream.emit_chunk("b");
            std::task::Poll::Ready(())
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(stream.poll_engine(&mut engine, &mut cx).is_ready());
        std::thread::sleep(Duration::from_millis(20));
        stream.emit_chunk("c");
        // status_update, a, b, c
        let at = stream.stamps();
        assert_eq!(at.len(), 4, "{at:?}");
        assert_eq!(at[1], at[2], "one poll, one time: {at:?}");
        assert!(at[3] >= at[2] + 40, "outside a poll, the clock: {at:?}");
    }

    /// A hub's settings for tests: roomy, with the default retention.
    fn test_config() -> HubConfig {
        HubConfig {
            max_streams: 100,
            max_streams_per_subject: 0,
            replay_max_bytes: 1 << 20,
            lag: LagPolicy::default(),
            max_output_bytes: 1 << 20,
            max_live_bytes: 1 << 30,
            replay_max_total_bytes: 1 << 30,
            retention: Duration::from_secs(60),
            delivered_retention: Duration::from_secs(5),
        }
    }

    fn small_hub(max_bytes: usize, stall: Duration) -> Arc<Hub> {
        Hub::new(HubConfig {
            replay_max_bytes: max_bytes,
            lag: LagPolicy {
                max_lag_bytes: 1024,
                stall,
            },
            ..test_config()
        })
    }

    /// Waits (polling, at most 5 s) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every event a cursor reads to the end: kind, seq and line.
    fn read_lines(cursor: &mut Cursor) -> Vec<(EventKind, u64, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(Batch::Events(es)) = cursor.try_batch(1000) {
            out.extend(
                es.iter()
                    .map(|e| (e.kind, e.seq, e.line.as_bytes().to_vec())),
            );
        }
        out
    }

    #[tokio::test]
    async fn a_stream_every_subscriber_read_to_the_end_is_released_early() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let hub = Hub::new(HubConfig {
            retention: Duration::from_secs(2),
            delivered_retention: Duration::from_millis(100),
            ..test_config()
        });
        // Read to its end, then gone.
        let (done, mut reader) = open(&hub, &routes, "delivered");
        done.emit_chunk("a");
        done.finish(Finish::Completed);
        hub.finished(&done);
        let read = read_lines(&mut reader);
        assert_eq!(read.last().map(|e| e.0), Some(EventKind::End));
        drop(reader);
        // Its reader left before `end`: kept for the whole retention, for its resume.
        let (left, early) = open(&hub, &routes, "left-early");
        drop(early);
        left.emit_chunk("a");
        left.finish(Finish::Completed);
        hub.finished(&left);
        let started = Instant::now();
        until("the delivered stream is released", || {
            hub.get("delivered").is_none()
        })
        .await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(
            hub.get("left-early").is_some(),
            "released before its retention"
        );
        until("the other one's retention is over", || {
            hub.get("left-early").is_none()
        })
        .await;
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(hub.retained_bytes(), 0);
    }

    #[tokio::test]
    async fn a_finished_log_is_compacted_and_replays_the_same_events() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let hub = Hub::new(test_config());
        let (stream, mut reader) = open(&hub, &routes, "packed");
        for i in 0..200 {
            assert!(stream.emit_chunk(&format!("{i:016}")));
        }
        stream.finish(Finish::Completed);
        hub.finished(&stream);
        let live = read_lines(&mut reader);
        let before = stream.retained_bytes();
        drop(reader);
        let after = stream.retained_bytes();
        // A retained event costs its line and a 12-byte index slot.
        let lines: u64 = live.iter().map(|e| e.2.len() as u64).sum();
        assert_eq!(after, lines + 12 * live.len() as u64, "was {before}");
        assert!(after * 2 < before, "{after} of {before}");
        assert_eq!(hub.retained_bytes(), after);
        // A resumer reads the same events, from the start or from the middle.
        assert_eq!(read_lines(&mut stream.subscribe_from(0)), live);
        let mut tail = stream.subscribe_from(150);
        assert_eq!(
            tail.lag_bytes(),
            live[150..].iter().map(|e| e.2.len() as u64).sum::<u64>()
        );
        assert_eq!(read_lines(&mut tail), live[150..]);
        assert!(matches!(tail.try_batch(10), Some(Batch::End)));
    }

    fn open(hub: &Arc<Hub>, routes: &Routes, id: &str) -> (Arc<Stream>, Cursor) {
        let route = routes.get("chat").unwrap().clone();
        let metrics = Metrics::new(routes);
        let (stream, cursor) = hub
            .create(
                RequestId::parse(id).unwrap(),
                route.clone(),
                None,
                None,
                Transport::Ndjson,
                metrics.stream(&route.name, Transport::Ndjson),
            )
            .unwrap();
        stream.start();
        (stream, cursor)
    }

    /// Writes chunks until the log asks the engine to wait; returns how many it took.
    fn fill(stream: &Stream) -> usize {
        let mut n = 0;
        while stream.writable().is_none() {
            assert!(stream.emit_chunk("0123456789abcdef"));
            n += 1;
            assert!(n < 100_000, "the log never fills");
        }
        n
    }

    fn read_all(cursor: &mut Cursor) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(batch) = cursor.try_batch(1000) {
            match batch {
                Batch::Events(es) => seqs.extend(es.iter().map(|e| e.seq)),
                Batch::Lagged => panic!("lagged after {seqs:?}"),
                Batch::End => break,
            }
        }
        seqs
    }

    #[tokio::test]
    async fn the_log_never_evicts_what_a_live_cursor_has_not_read() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let hub = small_hub(4096, Duration::from_secs(60));
        let (stream, mut cursor) = open(&hub, &routes, "pace");
        let written = fill(&stream);
        // Everything written is still there for the reader, from `started` on.
        let seqs = read_all(&mut cursor);
        assert_eq!(seqs, (0..=written as u64).collect::<Vec<_>>());
        // Read, it can go: the engine may write again.
        assert!(stream.writable().is_none());
        let more = fill(&stream);
        assert!(more > 0);
        assert_eq!(read_all(&mut cursor).len(), more);
        assert!(
            stream.retained_bytes() <= 4096 + 256,
            "{}",
            stream.retained_bytes()
        );
    }

    #[tokio::test]
    async fn a_stream_nobody_reads_pauses_until_a_subscriber_reads() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let hub = small_hub(4096, Duration::from_millis(1));
        let (stream, cursor) = open(&hub, &routes, "orphan");
        drop(cursor);
        fill(&stream);
        // No subscriber: no stall clock either, the engine just waits.
        let wait = stream.writable().expect("full");
        tokio::pin!(wait);
        assert!(futures_util::FutureExt::now_or_never(wait.as_mut()).is_none());
        assert!(stream.is_paused());
        assert_eq!(stream.idle_ms(), 0, "a paused engine is not idle");
        let mut resumer = stream.subscribe_from(stream.first_kept());
        assert_eq!(
            read_all(&mut resumer)[0],
            0,
            "nothing was evicted while paused"
        );
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("room once the resumer read");
        assert!(!stream.is_paused());
    }

    #[tokio::test]
    async fn a_cursor_that_stops_reading_is_cut_after_the_stall_time() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let hub = small_hub(4096, Duration::from_millis(50));
        let (stream, mut stalled) = open(&hub, &routes, "stall");
        let mut reader = stream.subscribe_from(0);
        let first = fill(&stream);
        read_all(&mut reader);
        // The engine waits for the stalled cursor, 50 ms at most, then goes on.
        tokio::time::timeout(Duration::from_secs(5), stream.writable().expect("full"))
            .await
            .expect("the wait is bounded");
        let second = fill(&stream);
        assert_eq!(
            read_all(&mut reader).len(),
            second,
            "the reader was not held"
        );
        assert!(matches!(stalled.try_batch(10), Some(Batch::Lagged)));
        assert!(first > 0);
    }

    /// A store that only records which streams have entries waiting.
    #[derive(Default)]
    struct Pending(std::sync::Mutex<Vec<Arc<Stream>>>);

    impl LogStore for Pending {
        fn dirty(&self, stream: Arc<Stream>) {
            self.0.lock().unwrap().push(stream);
        }
    }

    #[tokio::test]
    async fn a_written_through_log_shows_only_what_its_store_committed() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let store = Arc::new(Pending::default());
        let hub = Hub::with_backing(
            HubConfig {
                max_streams: 10,
                ..test_config()
            },
            Backing::WriteThrough(store.clone()),
        );
        let (stream, mut cursor) = open(&hub, &routes, "wt");
        assert!(stream.emit_chunk("a"));
        assert!(stream.emit_chunk("b"));
        assert!(cursor.try_batch(10).is_none(), "nothing committed yet");
        assert_eq!(store.0.lock().unwrap().len(), 1, "told once");
        let pending = stream.uncommitted();
        assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
        stream.commit(2);
        assert_eq!(read_all(&mut cursor), [0, 1]);
        stream.finish(Finish::Completed);
        assert!(stream.is_ended());
        assert_eq!(store.0.lock().unwrap().len(), 2, "told again after taking");
        let rest: Vec<_> = stream.uncommitted().iter().map(|e| e.seq).collect();
        assert_eq!(rest, [2, 3, 4]);
        assert!(cursor.try_batch(10).is_none());
        stream.commit(5);
        assert_eq!(read_all(&mut cursor), [2, 3, 4]);
        assert!(matches!(cursor.try_batch(10), Some(Batch::End)));
    }

    #[tokio::test]
    async fn a_mirror_takes_entries_in_order_only() {
        let routes = Routes::parse(ROUTES, "test").unwrap();
        let hub = small_hub(1 << 20, Duration::from_secs(60));
        let route = routes.get("chat").unwrap().clone();
        let metrics = Metrics::new(&routes);
        let (mirror, created) = hub.mirror(
            RequestId::parse("m1").unwrap(),
            route.clone(),
            None,
            5,
            metrics.stream(&route.name, Transport::Ndjson),
        );
        assert!(created && mirror.is_mirror());
        let mut scratch = crate::event::LineBuf::default();
        let line = |seq, s: &mut crate::event::LineBuf| crate::event::Line::chunk(seq, "x", s);
        assert!(!mirror.mirror_append(6, EventKind::Chunk, line(6, &mut scratch)));
        assert!(mirror.mirror_append(5, EventKind::Chunk, line(5, &mut scratch)));
        assert!(!mirror.mirror_append(5, EventKind::Chunk, line(5, &mut scratch)));
        assert!(mirror.mirror_append(6, EventKind::Chunk, line(6, &mut scratch)));
        let mut cursor = mirror.subscribe_from(5);
        assert_eq!(read_all(&mut cursor), [5, 6]);
        assert_eq!(hub.running(), 0, "a mirror takes no running slot");
        assert!(hub.live_streams().is_empty());
    }
}
