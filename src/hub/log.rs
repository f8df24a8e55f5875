//! One stream's append-only log, which is also its replay buffer, and the cursors that
//! read it.
//!
//! The producer (the engine through [`Sink`], then the core's finish) appends under a
//! short lock that is never held across an await; each reader has its own [`Cursor`]
//! and is woken only when it waits (a burst of appends with no reader waiting notifies
//! nobody).
//!
//! The log holds at most `replay.max_bytes` (what its entries really cost in memory).
//! Past that it evicts its oldest entries, but never one that a live cursor has not read
//! yet: the producer waits instead ([`Sink::writable`]), as a Node stream's writer waits
//! at its high-water mark, and so does an engine whose stream has no subscriber at all.
//! The wait is bounded by the [`LagPolicy`]: an entry that a cursor has left unread for
//! `stall` is evicted anyway, and that cursor gets [`Batch::Lagged`] (its `slow_consumer`
//! end). A cursor that keeps reading is never cut, whatever the producer's bursts; one more
//! than `max_lag_bytes` behind whose next event has waited `stall` for it is, even while
//! memory allows more.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::Sink;
use crate::event::{EndReason, Event, EventKind, Finish, Pushed, Seq, StreamRules};
use crate::metrics::StreamMetrics;
use crate::request::{RequestId, Transport};
use crate::routes::Route;
use crate::transport::encode::Frames;

/// Bytes an entry holds beyond its line(s): the entry and its reference counts (one
/// allocation), the line's allocation, its slot in the log, and the allocator's header of
/// each allocation.
const ENTRY_OVERHEAD: u64 = std::mem::size_of::<Entry>() as u64 + 16 + 8 + 2 * 16;

/// When a subscriber counts as not keeping up, and how long a producer waits for one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagPolicy {
    /// Bytes (of neutral lines) a subscriber may be behind the head without any question.
    pub max_lag_bytes: u64,
    /// How long a subscriber's next event may wait for it, while it is more than
    /// `max_lag_bytes` behind (or while the log is full), before the subscriber is cut.
    pub stall: Duration,
}

impl Default for LagPolicy {
    fn default() -> Self {
        LagPolicy {
            max_lag_bytes: 1 << 20,
            stall: Duration::from_secs(10),
        }
    }
}

/// One logged event: its neutral line and the wire encodings made from it, made once and
/// shared by every subscriber.
pub struct Entry {
    pub kind: EventKind,
    /// Milliseconds after the stream's creation when the entry was logged (saturating).
    at_ms: u32,
    pub seq: Seq,
    /// Bytes appended to the stream before this entry.
    pub offset: u64,
    pub frames: Frames,
}

impl Entry {
    /// This entry's encoded size (its neutral NDJSON line): what lag is measured in.
    pub fn size(&self) -> u64 {
        self.frames.neutral_len() as u64
    }

    pub fn end(&self) -> u64 {
        self.offset + self.size()
    }

    /// Memory the log counts for it: the line, once more the line's size when the route
    /// has mapped encodings (a legacy payload or an HTTP dialect is about as long), and
    /// the fixed overhead.
    fn retained(&self, mapped: bool) -> u64 {
        (1 + u64::from(mapped)) * self.size() + ENTRY_OVERHEAD
    }
}

struct Log {
    rules: StreamRules,
    entries: VecDeque<Arc<Entry>>,
    /// Seq of `entries[0]`.
    first_seq: Seq,
    retained: u64,
    total: u64,
    /// Whether a chunk was written yet (first-event latency).
    chunked: bool,
    /// Where neutral lines are encoded before being stored at their exact size.
    scratch: Vec<u8>,
    /// The next seq of each live cursor, by slot (`None`: a free slot).
    positions: Vec<Option<Seq>>,
    /// A lower bound of the positions of the cursors that are not lagged: while the
    /// oldest entry's seq is below it, no cursor needs that entry.
    min_position: Seq,
}

impl Log {
    /// Whether some live cursor has not read the oldest entry yet (cursors already past
    /// eviction are lagged and wait for nobody).
    fn front_needed(&mut self) -> bool {
        let front = self.first_seq;
        if front < self.min_position {
            return false;
        }
        self.min_position = self
            .positions
            .iter()
            .flatten()
            .copied()
            .filter(|&p| p >= front)
            .min()
            .unwrap_or(Seq::MAX);
        self.min_position == front
    }
}

/// A stream: identity, log, subscribers, stop signal.
pub struct Stream {
    pub id: RequestId,
    pub route: Arc<Route>,
    pub session_id: Option<Arc<str>>,
    /// The key the per-subject stream limit counts this stream under.
    pub subject: Option<Arc<str>>,
    pub origin: Transport,
    pub created: Instant,
    log: Mutex<Log>,
    max_bytes: u64,
    lag: LagPolicy,
    /// Whether entries count room for a mapped encoding (the route has one).
    mapped: bool,
    /// Wakes waiting cursors; `waiting` says whether any cursor waits.
    appended: Notify,
    waiting: AtomicBool,
    /// Wakes a producer waiting for room; `producer_waiting` says whether it waits.
    room: Notify,
    producer_waiting: AtomicBool,
    /// The producer waits for room (the engine is paused, not idle).
    paused: AtomicBool,
    subscribers: AtomicUsize,
    orphaned: Notify,
    stop: CancellationToken,
    stop_reason: Mutex<Option<EndReason>>,
    /// Milliseconds since `created` of the last engine event (idle detection).
    last_event_ms: AtomicU64,
    metrics: StreamMetrics,
}

impl Stream {
    pub(super) fn new(
        id: RequestId,
        route: Arc<Route>,
        session_id: Option<Arc<str>>,
        subject: Option<Arc<str>>,
        origin: Transport,
        (max_bytes, lag): (usize, LagPolicy),
        metrics: StreamMetrics,
    ) -> Stream {
        let mapped = route.socketio.is_some() || route.http.emit.is_mapped();
        Stream {
            id,
            route,
            session_id,
            subject,
            origin,
            created: Instant::now(),
            log: Mutex::new(Log {
                rules: StreamRules::new(),
                entries: VecDeque::new(),
                first_seq: 0,
                retained: 0,
                total: 0,
                chunked: false,
                scratch: Vec::new(),
                positions: Vec::new(),
                min_position: 0,
            }),
            max_bytes: max_bytes as u64,
            lag,
            mapped,
            appended: Notify::new(),
            waiting: AtomicBool::new(false),
            room: Notify::new(),
            producer_waiting: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            subscribers: AtomicUsize::new(0),
            orphaned: Notify::new(),
            stop: CancellationToken::new(),
            stop_reason: Mutex::new(None),
            last_event_ms: AtomicU64::new(0),
            metrics,
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        // A poisoned lock only means a panic elsewhere while holding it; the log itself
        // is always left consistent (every mutation is a single push/pop), so go on.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the `started` event. Called once, by the core, before the engine runs.
    pub fn start(&self) {
        let mut log = self.log();
        if let Some(ev) = log.rules.start(self.id.as_str(), &self.route.name) {
            self.append(&mut log, ev, self.now_ms());
        }
        drop(log);
        self.publish();
    }

    /// Writes the terminal event (if the engine did not) and `end`; returns the end reason
    /// (`None` if the stream had already ended).
    pub fn finish(&self, how: Finish) -> Option<String> {
        let mut log = self.log();
        let events = log.rules.finish(how);
        let reason = events
            .last()
            .and_then(Event::end_reason)
            .map(str::to_string);
        let now = self.now_ms();
        for ev in events {
            let frames = Frames::new(&ev, &mut log.scratch);
            let seq = ev.seq.unwrap_or(log.rules.next_seq().saturating_sub(1));
            // The last two events never cut a reader: they end the stream, so what the log
            // holds beyond `max_bytes` is theirs alone and goes with the stream.
            self.push_entry(&mut log, ev.event, seq, frames, now);
            self.evict(&mut log, now, false);
        }
        drop(log);
        self.publish();
        if let Some(reason) = &reason {
            self.metrics
                .finished(reason, self.created.elapsed().as_secs_f64());
        }
        reason
    }

    fn append(&self, log: &mut Log, event: Event, now_ms: u64) {
        let frames = Frames::new(&event, &mut log.scratch);
        let seq = event.seq.unwrap_or(log.rules.next_seq().saturating_sub(1));
        self.append_frames(log, event.event, seq, frames, now_ms);
    }

    fn append_frames(&self, log: &mut Log, kind: EventKind, seq: Seq, frames: Frames, now_ms: u64) {
        self.push_entry(log, kind, seq, frames, now_ms);
        self.evict(log, now_ms, true);
    }

    fn push_entry(&self, log: &mut Log, kind: EventKind, seq: Seq, frames: Frames, now_ms: u64) {
        let entry = Arc::new(Entry {
            kind,
            at_ms: u32::try_from(now_ms).unwrap_or(u32::MAX),
            seq,
            offset: log.total,
            frames,
        });
        log.total += entry.size();
        // Memory held counts the entry itself too, so many tiny events stay bounded.
        log.retained += entry.retained(self.mapped);
        log.entries.push_back(entry);
    }

    /// Evicts the oldest entries while the log is over `max_bytes`: freely those every
    /// cursor has read; one a cursor still needs only once it has waited `stall` for that
    /// cursor (which is then lagged), or when the log is twice over (an engine that did
    /// not wait for room) and `hard` is set. Returns whether the log is within `max_bytes`.
    fn evict(&self, log: &mut Log, now_ms: u64, hard: bool) -> bool {
        while log.retained > self.max_bytes && log.entries.len() > 1 {
            let Some(front) = log.entries.front() else {
                break;
            };
            let stale = self.subscribers() > 0
                && now_ms.saturating_sub(u64::from(front.at_ms)) >= self.stall_ms();
            // With no subscriber at all the log is kept for a resumer: the producer waits.
            let needed = self.subscribers() == 0 || log.front_needed();
            if needed && !stale && (!hard || log.retained <= 2 * self.max_bytes) {
                return false;
            }
            if let Some(old) = log.entries.pop_front() {
                log.retained -= old.retained(self.mapped);
                log.first_seq += 1;
            }
        }
        true
    }

    fn stall_ms(&self) -> u64 {
        self.lag.stall.as_millis() as u64
    }

    /// Milliseconds since the stream was created.
    fn now_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    /// Waits until the log has room for more events (see the module doc): returns at once
    /// when it has; otherwise until cursors read, a subscriber arrives, or the oldest entry
    /// has waited `stall` for its readers.
    async fn wait_room(&self) {
        loop {
            let deadline = {
                let mut log = self.log();
                if self.evict(&mut log, self.now_ms(), true) {
                    self.paused.store(false, Ordering::Release);
                    return;
                }
                // Set under the log lock: a cursor that reads after this sees it.
                self.producer_waiting.store(true, Ordering::SeqCst);
                self.paused.store(true, Ordering::Release);
                let front_at = log.entries.front().map_or(0, |e| u64::from(e.at_ms));
                (self.subscribers() > 0)
                    .then(|| self.created + Duration::from_millis(front_at + self.stall_ms() + 1))
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        _ = self.room.notified() => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => self.room.notified().await,
            }
        }
    }

    /// Wakes the producer if it waits for room.
    fn wake_producer(&self) {
        if self.producer_waiting.swap(false, Ordering::SeqCst) {
            self.room.notify_one();
        }
    }

    /// Wakes the cursors waiting for events (none are woken when none wait).
    fn publish(&self) {
        if self.waiting.swap(false, Ordering::SeqCst) {
            self.appended.notify_waiters();
        }
    }

    pub fn is_ended(&self) -> bool {
        self.log().rules.is_ended()
    }

    /// Asks the producer to stop; the first reason given wins. Returns false if the
    /// stream had already ended.
    pub fn stop(&self, reason: EndReason) -> bool {
        if self.is_ended() {
            return false;
        }
        let mut r = self.stop_reason.lock().unwrap_or_else(|p| p.into_inner());
        r.get_or_insert(reason);
        drop(r);
        self.stop.cancel();
        true
    }

    /// Resolves when [`Stream::stop`] was called, with the reason.
    pub async fn stopped(&self) -> EndReason {
        self.stop.cancelled().await;
        self.stop_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(EndReason::Cancelled)
    }

    /// Resolves when the last subscriber leaves (possibly before this call).
    pub async fn orphaned(&self) {
        loop {
            let notified = self.orphaned.notified();
            if self.subscribers.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// Milliseconds since the last event the engine wrote (or since creation); 0 while
    /// the engine is paused for room (it is not idle, its readers are).
    pub fn idle_ms(&self) -> u64 {
        if self.paused.load(Ordering::Acquire) {
            return 0;
        }
        let now = self.created.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_event_ms.load(Ordering::Relaxed))
    }

    /// Whether the engine waits for room (its readers are behind and the log is full).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Approximate memory held by the events still in the log, in bytes.
    pub fn retained_bytes(&self) -> u64 {
        self.log().retained
    }

    /// The seq of the oldest event still held.
    pub fn first_kept(&self) -> Seq {
        self.log().first_seq
    }

    /// The seq the next event will get (= number of events written).
    pub fn next_seq(&self) -> Seq {
        self.log().rules.next_seq()
    }

    /// A cursor that reads from `seq` on (it may be evicted already: the cursor then
    /// reports [`Batch::Lagged`]).
    pub fn subscribe_from(self: &Arc<Self>, seq: Seq) -> Cursor {
        let slot = {
            let mut log = self.log();
            self.subscribers.fetch_add(1, Ordering::AcqRel);
            log.min_position = log.min_position.min(seq);
            match log.positions.iter().position(Option::is_none) {
                Some(free) => {
                    log.positions[free] = Some(seq);
                    free
                }
                None => {
                    log.positions.push(Some(seq));
                    log.positions.len() - 1
                }
            }
        };
        // A producer paused on a stream nobody read may go on now.
        self.wake_producer();
        Cursor {
            stream: self.clone(),
            next: seq,
            slot,
        }
    }

    /// A cursor from the next event on.
    pub fn subscribe_from_head(self: &Arc<Self>) -> Cursor {
        let next = self.next_seq();
        self.subscribe_from(next)
    }
}

impl Sink for Stream {
    fn emit(&self, kind: EventKind, data: Value) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let now = self.now_ms();
        let mut log = self.log();
        let accepted = match log.rules.push(kind, data) {
            Pushed::Accepted(ev) => {
                if kind == EventKind::Chunk {
                    self.first_chunk(&mut log);
                }
                self.append(&mut log, ev, now);
                true
            }
            Pushed::Reserved => {
                tracing::warn!(request_id = %self.id, event = kind.as_str(), "engine wrote a reserved event; ignored");
                return true;
            }
            Pushed::AfterTerminal => false,
        };
        drop(log);
        self.engine_wrote(now);
        accepted
    }

    fn emit_chunk(&self, text: &str) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let now = self.now_ms();
        let mut log = self.log();
        let Some(seq) = log.rules.push_text(text) else {
            return false;
        };
        self.first_chunk(&mut log);
        let frames = Frames::chunk(seq, text, &mut log.scratch);
        self.append_frames(&mut log, EventKind::Chunk, seq, frames, now);
        drop(log);
        self.engine_wrote(now);
        true
    }

    fn writable(&self) -> Option<BoxFuture<'_, ()>> {
        let mut log = self.log();
        // Over budget: what the readers have read since the last write can go first.
        let full = log.retained > self.max_bytes && !self.evict(&mut log, self.now_ms(), true);
        drop(log);
        full.then(|| self.wait_room().boxed())
    }
}

impl Stream {
    fn first_chunk(&self, log: &mut Log) {
        if !log.chunked {
            log.chunked = true;
            self.metrics
                .first_chunk(self.created.elapsed().as_secs_f64());
        }
    }

    /// After an engine event was logged: idle clock, then wake the readers.
    fn engine_wrote(&self, now_ms: u64) {
        self.last_event_ms.store(now_ms, Ordering::Relaxed);
        self.publish();
    }
}

/// What a cursor read.
pub enum Batch {
    /// The next events, in order (at least one).
    Events(Vec<Arc<Entry>>),
    /// The next event was evicted before this cursor read it.
    Lagged,
    /// The stream has ended and everything was read.
    End,
}

/// One subscriber's position in a stream. Dropping it unsubscribes.
pub struct Cursor {
    stream: Arc<Stream>,
    next: Seq,
    /// This cursor's place in the log's table of positions.
    slot: usize,
}

impl Cursor {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// The seq of the next event this cursor will read.
    pub fn next_seq(&self) -> Seq {
        self.next
    }

    /// Bytes written to the stream that this cursor has not read yet.
    pub fn lag_bytes(&self) -> u64 {
        let log = self.stream.log();
        let idx = self.next.saturating_sub(log.first_seq) as usize;
        let delivered = log.entries.get(idx).map_or(log.total, |e| e.offset);
        log.total.saturating_sub(delivered)
    }

    /// Whether a subscriber whose next unsent event is `entry` has stopped keeping up
    /// (see [`LagPolicy`]): more than `max_lag_bytes` behind, and `entry` has waited for
    /// it for `stall`. For a subscriber that took `entry` from the log but could not pass
    /// it on yet (a full Socket.IO queue).
    pub fn stalled_at(&self, entry: &Entry) -> bool {
        let s = &self.stream;
        let waited = s.now_ms().saturating_sub(u64::from(entry.at_ms));
        waited >= s.stall_ms() && s.log().total.saturating_sub(entry.offset) > s.lag.max_lag_bytes
    }

    /// Up to `max` next events, waiting for the producer when there are none.
    pub async fn next_batch(&mut self, max: usize) -> Batch {
        loop {
            if let Some(batch) = self.try_batch(max) {
                return batch;
            }
            let stream = self.stream.clone();
            let appended = stream.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            // Set after enabling, read again after setting: an append that did not see
            // the flag is seen by this second read.
            stream.waiting.store(true, Ordering::SeqCst);
            if let Some(batch) = self.try_batch(max) {
                return batch;
            }
            appended.await;
        }
    }

    /// Like [`Cursor::next_batch`] without waiting: `None` when nothing is ready.
    pub fn try_batch(&mut self, max: usize) -> Option<Batch> {
        let stream = &self.stream;
        let mut log = stream.log();
        if self.next < log.first_seq {
            return Some(Batch::Lagged);
        }
        let idx = (self.next - log.first_seq) as usize;
        if let Some(first) = log.entries.get(idx) {
            let lag = log.total - first.offset;
            if lag > stream.lag.max_lag_bytes
                && stream.now_ms().saturating_sub(u64::from(first.at_ms)) >= stream.stall_ms()
            {
                return Some(Batch::Lagged);
            }
            let take = (log.entries.len() - idx).min(max.max(1));
            let batch: Vec<Arc<Entry>> = log.entries.range(idx..idx + take).cloned().collect();
            self.next += take as u64;
            if let Some(p) = log.positions.get_mut(self.slot) {
                *p = Some(self.next);
            }
            drop(log);
            stream.wake_producer();
            return Some(Batch::Events(batch));
        }
        if log.rules.is_ended() {
            return Some(Batch::End);
        }
        None
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        {
            let mut log = self.stream.log();
            if let Some(p) = log.positions.get_mut(self.slot) {
                *p = None;
            }
            if self.stream.subscribers.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.stream.orphaned.notify_one();
            }
        }
        self.stream.wake_producer();
    }
}
