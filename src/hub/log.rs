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
//!
//! Each stream charges what it holds (its log and the text kept for its completion) to
//! the hub's [`LiveBudget`] as it changes, and releases it when it finishes.
//!
//! Where a log lives is its [`Backing`], the hub's one seam for storage: `Local` (memory
//! only: an entry is visible to cursors once appended), `WriteThrough` (the owner's log,
//! also written to a [`LogStore`]: an entry is visible once the store has committed it,
//! so no cursor holds an event the store could lose), or `Mirror` (a copy of a log
//! another process writes, fed entry by entry with [`Stream::mirror_append`]). Cursors,
//! eviction, resume and the slow-consumer rule are the same code for all three: they read
//! up to the `committed` watermark, which a local log keeps equal to its head.

use std::any::Any;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::compact::Compact;
use crate::engine::Sink;
use crate::event::{EndReason, Event, EventKind, Finish, Line, LineBuf, Pushed, Seq, StreamRules};
use crate::metrics::StreamMetrics;
use crate::request::{RequestId, StreamDesc, Transport};
use crate::routes::Route;

/// What a stream's charge to the live budget may lag behind what it holds (so the shared
/// counter is touched once per this many bytes, not once per event).
const CHARGE_STEP: u64 = 4096;

/// `Stream::poll_ms` when the engine is not being polled.
const NO_POLL: u64 = u64::MAX;

/// How often a stream paused for the live budget looks whether memory was freed.
const BUDGET_RECHECK: Duration = Duration::from_millis(50);

/// Bytes an entry holds beyond its line(s): the entry and its reference counts (one
/// allocation), its line's share of a block, its slot in the log, and the allocator's
/// rounding (a compacted log costs [`super::compact::PER_EVENT`] instead).
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

/// Memory all live streams hold together (their logs and their accumulated text), against
/// `limits.max_live_bytes`. Past three quarters of it, a stream holding more than its
/// share (the budget over `limits.max_streams`) stops growing and the logs keep only what
/// some subscriber has not read, so new streams still fit; at the whole of it, new
/// streams are refused.
#[derive(Debug)]
pub struct LiveBudget {
    used: AtomicU64,
    max: u64,
    share: u64,
    /// Memory finished streams kept for resume hold (`replay.max_total_bytes` bounds it).
    finished: AtomicU64,
}

impl LiveBudget {
    pub fn new(max: u64, streams: usize) -> LiveBudget {
        LiveBudget {
            used: AtomicU64::new(0),
            max,
            share: max / streams.max(1) as u64,
            finished: AtomicU64::new(0),
        }
    }

    /// Bytes live streams hold now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether new streams must be refused.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.max
    }

    /// Whether the budget is under pressure (past three quarters).
    fn pressed(&self) -> bool {
        self.used() > self.max / 4 * 3
    }

    fn charge(&self, from: u64, to: u64) {
        move_counter(&self.used, from, to);
    }

    /// Bytes finished streams kept for resume hold now.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }
}

/// Changes what `counter` holds for one stream from `from` to `to`.
fn move_counter(counter: &AtomicU64, from: u64, to: u64) {
    if to > from {
        counter.fetch_add(to - from, Ordering::Relaxed);
    } else {
        counter.fetch_sub(from - to, Ordering::Relaxed);
    }
}

/// Where a stream's log is written (see the module doc).
#[derive(Clone, Default)]
pub enum Backing {
    #[default]
    Local,
    WriteThrough(Arc<dyn LogStore>),
    Mirror,
}

/// A store a written-through log is committed to. `dirty` is called (outside the log's
/// lock, at most once until the store took the pending entries with
/// [`Stream::uncommitted`]) when entries past the committed watermark are waiting; the
/// store then calls [`Stream::commit`] once it holds them. Must not block.
pub trait LogStore: Send + Sync + 'static {
    fn dirty(&self, stream: Arc<Stream>);
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backing::Local => "Local",
            Backing::WriteThrough(_) => "WriteThrough",
            Backing::Mirror => "Mirror",
        })
    }
}

/// What bounds one stream, from the configuration.
#[derive(Debug, Clone)]
pub struct StreamBounds {
    /// `replay.max_bytes`: memory its log may hold.
    pub max_bytes: u64,
    pub lag: LagPolicy,
    /// `limits.max_output_bytes`: most bytes of text (the chunks' concatenation).
    pub max_output: usize,
    pub budget: Arc<LiveBudget>,
    pub backing: Backing,
}

/// One logged event: its neutral line and the wire encodings made from it, made once and
/// shared by every subscriber.
pub struct Entry {
    pub kind: EventKind,
    /// Milliseconds after the stream's creation when the entry was logged (saturating).
    pub(super) at_ms: u32,
    pub seq: Seq,
    /// Bytes appended to the stream before this entry.
    pub offset: u64,
    /// The event's neutral line: what the log stores.
    pub line: Line,
    /// Whatever the adapters make from the line once and share (mapped encodings): opaque
    /// to the hub, filled on first use.
    pub(super) cache: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Entry {
    /// This entry's encoded size (its neutral NDJSON line): what lag is measured in.
    pub fn size(&self) -> u64 {
        self.line.len() as u64
    }

    /// The logged event, decoded from its line (for the encodings made from it).
    pub fn event(&self) -> Event {
        self.line.decode(self.kind, Some(self.seq))
    }

    /// The adapters' per-entry cache (see the field).
    pub fn cache(&self) -> &OnceLock<Box<dyn Any + Send + Sync>> {
        &self.cache
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
    /// The entries of a live log; empty once the log is `compact`.
    entries: VecDeque<Arc<Entry>>,
    /// A finished log packed for resume (see `compact.rs`): the entries, compactly.
    compact: Option<Compact>,
    /// Seq of `entries[0]`.
    first_seq: Seq,
    retained: u64,
    total: u64,
    /// Whether a chunk was written yet (first-event latency).
    chunked: bool,
    /// The blocks its neutral lines are written into (each line a slice of one).
    lines: LineBuf,
    /// Each cursor's state, by slot.
    positions: Vec<Slot>,
    /// A lower bound of the positions of the live cursors: while the oldest entry's seq
    /// is below it, no cursor needs that entry.
    min_position: Seq,
    /// What this stream counts in the live budget now (its log and its text).
    charged: u64,
    /// Finished and handed over to the hub's retention: no longer counted as live.
    released: bool,
    /// Entries below this seq are visible to cursors (a local log: all of them).
    committed: Seq,
    /// Entries below this seq are in the store (a local log: all of them).
    stored: Seq,
    /// The seq of the `end` entry, once logged.
    end_seq: Option<Seq>,
    /// Some subscriber left (or was cut) before it was sent `end`: it may resume, so the
    /// stream is kept the whole retention time.
    left_early: bool,
    /// Counted in the budget's `finished` bytes (from [`Stream::retire`] to
    /// [`Stream::forget`]).
    counted: bool,
}

/// A cursor's place in the log.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Slot {
    Free,
    /// Reading; the seq of the next event it will read.
    Live(Seq),
    /// Cut for not keeping up: no longer a subscriber, it reads only its `Lagged`.
    Cut,
}

impl Log {
    /// The seq the next entry gets.
    fn head(&self) -> Seq {
        self.first_seq + self.len() as u64
    }

    /// Entries held.
    fn len(&self) -> usize {
        self.compact
            .as_ref()
            .map_or(self.entries.len(), Compact::len)
    }

    /// Bytes written before entry `idx` (counted from `first_seq`), and when it was logged.
    fn offset_and_time(&self, idx: usize) -> Option<(u64, u32)> {
        match &self.compact {
            Some(c) => Some((c.offset(idx)?, c.at_ms(idx)?)),
            None => self.entries.get(idx).map(|e| (e.offset, e.at_ms)),
        }
    }

    /// Entries `idx..idx + take` (counted from `first_seq`).
    fn range(&self, idx: usize, take: usize) -> Vec<Arc<Entry>> {
        match &self.compact {
            Some(c) => (idx..idx + take)
                .filter_map(|i| c.entry(i, self.first_seq + i as u64))
                .collect(),
            None => self.entries.range(idx..idx + take).cloned().collect(),
        }
    }

    /// Whether every entry up to `end` is visible: nothing more will come.
    fn ended_visible(&self) -> bool {
        self.end_seq.is_some_and(|e| e < self.committed)
    }

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
            .filter_map(|s| match s {
                Slot::Live(p) => Some(*p),
                _ => None,
            })
            .filter(|&p| p >= front)
            .min()
            .unwrap_or(Seq::MAX);
        self.min_position == front
    }

    /// Cuts the live cursors whose next event is gone; returns how many.
    fn cut_lagged(&mut self) -> usize {
        let first = self.first_seq;
        let mut cut = 0;
        for slot in &mut self.positions {
            if matches!(slot, Slot::Live(p) if *p < first) {
                *slot = Slot::Cut;
                cut += 1;
            }
        }
        if cut > 0 {
            self.left_early = true;
        }
        cut
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
    budget: Arc<LiveBudget>,
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
    /// Why the stream was aborted from outside with an error (`error_type`, `message`).
    failure: Mutex<Option<(String, String)>>,
    /// Subscribers on other nodes, as the store last saw them (they keep the stream from
    /// being orphaned).
    remote_readers: AtomicUsize,
    /// Milliseconds since `created` of the last engine event (idle detection).
    last_event_ms: AtomicU64,
    /// While the engine is polled: milliseconds since `created` at the start of the poll,
    /// the time its events are stamped with (one clock read per poll rather than per
    /// event); [`NO_POLL`] otherwise.
    poll_ms: AtomicU64,
    metrics: StreamMetrics,
    backing: Backing,
    /// A written-through log's store was told of pending entries it has not taken yet.
    queued: AtomicBool,
    /// A written-through log its store may no longer write: local from now on.
    local_only: AtomicBool,
    /// A written-through log shown before its store holds it (see `commit_eagerly`).
    eager: AtomicBool,
    me: std::sync::Weak<Stream>,
}

impl Stream {
    /// Built inside `Arc::new_cyclic` (`me`: its own handle, given to a write-through store).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: RequestId,
        route: Arc<Route>,
        session_id: Option<Arc<str>>,
        subject: Option<Arc<str>>,
        origin: Transport,
        bounds: StreamBounds,
        metrics: StreamMetrics,
        me: std::sync::Weak<Stream>,
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
                rules: StreamRules::with_max_output(bounds.max_output),
                entries: VecDeque::new(),
                compact: None,
                first_seq: 0,
                retained: 0,
                total: 0,
                chunked: false,
                lines: LineBuf::default(),
                positions: Vec::new(),
                min_position: 0,
                charged: 0,
                released: false,
                committed: 0,
                stored: 0,
                end_seq: None,
                left_early: false,
                counted: false,
            }),
            max_bytes: bounds.max_bytes,
            lag: bounds.lag,
            budget: bounds.budget,
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
            failure: Mutex::new(None),
            remote_readers: AtomicUsize::new(0),
            last_event_ms: AtomicU64::new(0),
            poll_ms: AtomicU64::new(NO_POLL),
            metrics,
            backing: bounds.backing,
            queued: AtomicBool::new(false),
            local_only: AtomicBool::new(false),
            eager: AtomicBool::new(false),
            me,
        }
    }

    /// Whether this is a copy of a log another process writes.
    pub fn is_mirror(&self) -> bool {
        matches!(self.backing, Backing::Mirror)
    }

    /// Sets the seq of the first entry of an empty mirror (its copy starts there).
    pub fn mirror_start_at(&self, seq: Seq) {
        let mut log = self.log();
        if log.entries.is_empty() {
            log.first_seq = seq;
            log.committed = seq;
            log.stored = seq;
            log.min_position = log.min_position.min(seq);
        }
    }

    /// Appends an entry copied from the log this one mirrors: only the next one in order
    /// (`seq` = the head) is taken; returns whether it was.
    pub fn mirror_append(&self, seq: Seq, kind: EventKind, line: Line) -> bool {
        let now = self.now_ms();
        let mut log = self.log();
        if seq != log.head() || log.end_seq.is_some() {
            return false;
        }
        self.push_entry(&mut log, kind, seq, line, now);
        self.evict(&mut log, now, false);
        drop(log);
        self.publish();
        true
    }

    /// The entries the store does not hold yet (oldest first), for it to write.
    pub fn uncommitted(&self) -> Vec<Arc<Entry>> {
        self.queued.store(false, Ordering::SeqCst);
        let log = self.log();
        let from = log.stored.saturating_sub(log.first_seq) as usize;
        log.entries.iter().skip(from).cloned().collect()
    }

    /// The store holds every entry below `upto`: cursors may read them.
    pub fn commit(&self, upto: Seq) {
        let mut log = self.log();
        let upto = upto.min(log.head());
        if upto <= log.stored {
            return;
        }
        log.stored = upto;
        log.committed = log.committed.max(upto);
        let now = self.now_ms();
        self.evict(&mut log, now, false);
        drop(log);
        self.publish();
        self.wake_producer();
    }

    /// A written-through log whose store may no longer write it (fenced, or unreachable
    /// past its bound): everything it holds is shown now, and every later entry at once.
    pub fn commit_locally(&self) {
        self.local_only.store(true, Ordering::SeqCst);
        let mut log = self.log();
        let head = log.head();
        log.stored = head;
        log.committed = head;
        drop(log);
        self.publish();
        self.wake_producer();
    }

    /// A written-through log whose store is unreachable past its bound: everything it
    /// holds is shown now, and every later entry at once; the store still writes them
    /// when it can (so what other nodes read later is what these subscribers read).
    pub fn commit_eagerly(&self) {
        self.eager.store(true, Ordering::SeqCst);
        let mut log = self.log();
        log.committed = log.head();
        drop(log);
        self.publish();
        self.wake_producer();
    }

    fn writes_through(&self) -> bool {
        matches!(self.backing, Backing::WriteThrough(_)) && !self.local_only.load(Ordering::Relaxed)
    }

    /// The seq below which entries are visible to cursors.
    pub fn committed(&self) -> Seq {
        self.log().committed
    }

    /// After an append: a local or mirrored entry is visible at once; a written-through
    /// one once its store commits it (the store is told, once until it takes them).
    fn appended(&self) {
        if let Backing::WriteThrough(store) = &self.backing
            && !self.local_only.load(Ordering::Relaxed)
            && !self.queued.swap(true, Ordering::SeqCst)
            && let Some(me) = self.me.upgrade()
        {
            store.dirty(me);
        }
    }

    /// What an encoder may know of this stream.
    pub fn describe(&self) -> StreamDesc<'_> {
        StreamDesc {
            id: &self.id,
            route: &self.route,
            session_id: self.session_id.as_deref(),
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
        self.appended();
    }

    /// Writes the terminal event (if the engine did not) and `end`; returns the end reason
    /// (`None` if the stream had already ended).
    pub fn finish(&self, how: Finish) -> Option<String> {
        let mut log = self.log();
        // The completion carries the whole text: room for it at once, not by doublings.
        let room = log.rules.output().len() + 256;
        log.lines.reserve(room);
        let events = log.rules.finish(how);
        let reason = events
            .last()
            .and_then(Event::end_reason)
            .map(str::to_string);
        let now = self.now_ms();
        for ev in events {
            let frames = Line::of(&ev, &mut log.lines);
            let seq = ev.seq.unwrap_or(log.rules.next_seq().saturating_sub(1));
            // The last two events never cut a reader: they end the stream, so what the log
            // holds beyond `max_bytes` is theirs alone and goes with the stream.
            self.push_entry(&mut log, ev.event, seq, frames, now);
            self.evict(&mut log, now, false);
        }
        drop(log);
        self.publish();
        self.appended();
        if let Some(reason) = &reason {
            self.metrics
                .finished(reason, self.created.elapsed().as_secs_f64());
        }
        reason
    }

    fn append(&self, log: &mut Log, event: Event, now_ms: u64) {
        let frames = Line::of(&event, &mut log.lines);
        let seq = event.seq.unwrap_or(log.rules.next_seq().saturating_sub(1));
        self.append_frames(log, event.event, seq, frames, now_ms);
    }

    fn append_frames(&self, log: &mut Log, kind: EventKind, seq: Seq, frames: Line, now_ms: u64) {
        self.push_entry(log, kind, seq, frames, now_ms);
        self.evict(log, now_ms, true);
    }

    fn push_entry(&self, log: &mut Log, kind: EventKind, seq: Seq, line: Line, now_ms: u64) {
        let entry = Arc::new(Entry {
            kind,
            at_ms: u32::try_from(now_ms).unwrap_or(u32::MAX),
            seq,
            offset: log.total,
            line,
            cache: OnceLock::new(),
        });
        log.total += entry.size();
        // Memory held counts the entry itself too, so many tiny events stay bounded.
        log.retained += entry.retained(self.mapped);
        log.entries.push_back(entry);
        if kind == EventKind::End {
            log.end_seq = Some(seq);
        }
        if !self.writes_through() {
            log.committed = seq + 1;
            log.stored = seq + 1;
        } else if self.eager.load(Ordering::Relaxed) {
            log.committed = seq + 1;
        }
    }

    /// Evicts the oldest entries while the log is over `max_bytes`: freely those every
    /// cursor has read; one a cursor still needs only once it has waited `stall` for that
    /// cursor (which is then lagged), or when the log is twice over (an engine that did
    /// not wait for room) and `hard` is set. Returns whether the log is within `max_bytes`.
    fn evict(&self, log: &mut Log, now_ms: u64, hard: bool) -> bool {
        // Under memory pressure a log keeps only what some subscriber has not read yet.
        let target = if self.budget.pressed() {
            0
        } else {
            self.max_bytes
        };
        while log.retained > target
            && log.entries.len() > 1
            && log.first_seq < log.committed.min(log.stored)
        {
            let Some(front_at) = log.entries.front().map(|e| u64::from(e.at_ms)) else {
                break;
            };
            // With no subscriber at all the log is kept for a resumer: the producer waits.
            let needed = self.subscribers() == 0 || log.front_needed();
            if needed {
                let over = log.retained > self.max_bytes;
                let stale =
                    self.subscribers() > 0 && now_ms.saturating_sub(front_at) >= self.stall_ms();
                let forced = hard && log.retained > 2 * self.max_bytes;
                if !(forced || stale && (over || self.budget.pressed())) {
                    break;
                }
            }
            if let Some(old) = log.entries.pop_front() {
                log.retained -= old.retained(self.mapped);
                log.first_seq += 1;
            }
            if needed {
                self.cut(log);
            }
        }
        self.charge(log);
        log.retained <= self.max_bytes
    }

    /// The cursors whose next event was just evicted stop being subscribers: the stream
    /// no longer waits for them, and one left with none is orphaned.
    fn cut(&self, log: &mut Log) {
        let cut = log.cut_lagged();
        if cut > 0 && self.subscribers.fetch_sub(cut, Ordering::AcqRel) == cut {
            self.orphaned.notify_one();
        }
    }

    /// Brings what this stream counts in the live budget up to date, in steps of
    /// [`CHARGE_STEP`]: the budget is shared by every stream, so it is not touched on
    /// every event.
    fn charge(&self, log: &mut Log) {
        if log.released {
            return;
        }
        let now = log.retained + log.rules.output().len() as u64;
        if now.abs_diff(log.charged) >= CHARGE_STEP {
            self.budget.charge(log.charged, now);
            log.charged = now;
        }
    }

    /// The stream has finished: it no longer counts in the live budget.
    pub fn release_budget(&self) {
        let mut log = self.log();
        self.release(&mut log);
    }

    fn release(&self, log: &mut Log) {
        self.budget.charge(log.charged, 0);
        log.charged = 0;
        log.released = true;
    }

    /// The stream has finished and is kept for resume: it no longer counts in the live
    /// budget but in the finished bytes, and is compacted at once when nobody reads it.
    pub fn retire(&self) {
        let mut log = self.log();
        self.release(&mut log);
        if !log.counted {
            log.counted = true;
            move_counter(&self.budget.finished, 0, log.retained);
        }
        if self.subscribers() == 0 {
            self.compact_log(&mut log);
        }
    }

    /// The hub dropped the stream: it no longer counts in the finished bytes.
    pub fn forget(&self) {
        let mut log = self.log();
        if log.counted {
            log.counted = false;
            move_counter(&self.budget.finished, log.retained, 0);
        }
    }

    /// Every subscriber was sent `end` and none is left: the stream may be released
    /// before its retention ends (SPEC section 3).
    pub fn delivered(&self) -> bool {
        let log = self.log();
        !log.left_early && self.subscribers() == 0
    }

    /// Packs the log for resume (see `compact.rs`), if it is finished, released and all in
    /// its store.
    pub fn compact(&self) {
        let mut log = self.log();
        self.compact_log(&mut log);
    }

    fn compact_log(&self, log: &mut Log) {
        let head = log.head();
        if log.compact.is_some()
            || log.end_seq.is_none()
            || !log.released
            || log.committed < head
            || log.stored < head
        {
            return;
        }
        let Some(base) = log.entries.front().map(|e| e.offset) else {
            return;
        };
        let entries = std::mem::take(&mut log.entries);
        let packed = match Compact::pack(entries, base, log.total - base) {
            Ok(packed) => packed,
            Err(entries) => {
                log.entries = entries;
                return;
            }
        };
        let before = log.retained;
        log.retained = packed.cost();
        log.compact = Some(packed);
        log.lines = LineBuf::default();
        if log.counted {
            move_counter(&self.budget.finished, before, log.retained);
        }
    }

    /// Under memory pressure, a stream holding more than its share stops growing.
    fn over_share(&self, log: &Log) -> bool {
        self.budget.pressed() && log.charged > self.budget.share
    }

    fn stall_ms(&self) -> u64 {
        self.lag.stall.as_millis() as u64
    }

    /// Milliseconds since the stream was created.
    fn now_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    /// The times the log's entries were stamped with (ms after `created`).
    #[cfg(test)]
    pub(super) fn stamps(&self) -> Vec<u32> {
        self.log().entries.iter().map(|e| e.at_ms).collect()
    }

    /// The time an engine's event is stamped with: its poll's start, else the clock.
    fn engine_now(&self) -> u64 {
        match self.poll_ms.load(Ordering::Relaxed) {
            NO_POLL => self.now_ms(),
            at => at,
        }
    }

    /// Polls the engine's future `run` with this stream's clock read once for the poll.
    pub fn poll_engine<F: Future + Unpin>(
        &self,
        run: &mut F,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        /// Back to the clock when the poll returns or unwinds.
        struct Polling<'a>(&'a AtomicU64);
        impl Drop for Polling<'_> {
            fn drop(&mut self) {
                self.0.store(NO_POLL, Ordering::Relaxed);
            }
        }
        self.poll_ms.store(self.now_ms(), Ordering::Relaxed);
        let _polling = Polling(&self.poll_ms);
        Pin::new(run).poll(cx)
    }

    /// Waits until the log has room for more events (see the module doc): returns at once
    /// when it has; otherwise until cursors read, a subscriber arrives, or the oldest entry
    /// has waited `stall` for its readers.
    async fn wait_room(&self) {
        loop {
            let deadline = {
                let mut log = self.log();
                let room = self.evict(&mut log, self.now_ms(), true);
                let pressed = self.over_share(&log);
                if room && !pressed {
                    self.paused.store(false, Ordering::Release);
                    return;
                }
                // Set under the log lock: a cursor that reads after this sees it.
                self.producer_waiting.store(true, Ordering::SeqCst);
                self.paused.store(true, Ordering::Release);
                let front_at = log.entries.front().map_or(0, |e| u64::from(e.at_ms));
                let stall = (self.subscribers() > 0)
                    .then(|| self.created + Duration::from_millis(front_at + self.stall_ms() + 1));
                // Memory elsewhere is freed without telling this stream: look again soon.
                let budget = pressed.then(|| Instant::now() + BUDGET_RECHECK);
                stall.into_iter().chain(budget).min()
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

    /// Whether `end` is in the log (for a written-through log: even before its commit).
    pub fn is_ended(&self) -> bool {
        self.log().end_seq.is_some()
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

    /// Stops the producer with an error from outside the engine (the cluster lost this
    /// stream): it ends with `error {error_type, message}` + `end {reason: "error"}`.
    pub fn abort(&self, error_type: &str, message: &str) -> bool {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert_with(|| (error_type.to_string(), message.to_string()));
        drop(f);
        self.stop(EndReason::Error)
    }

    /// The error of [`Stream::abort`], if the stream was aborted.
    pub fn failure(&self) -> Option<(String, String)> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Subscribers on other nodes (see the field).
    pub fn set_remote_readers(&self, n: usize) {
        self.remote_readers.store(n, Ordering::Relaxed);
    }

    pub fn remote_readers(&self) -> usize {
        self.remote_readers.load(Ordering::Relaxed)
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
        self.log().head()
    }

    /// A cursor that reads from `seq` on (it may be evicted already: the cursor then
    /// reports [`Batch::Lagged`]).
    pub fn subscribe_from(self: &Arc<Self>, seq: Seq) -> Cursor {
        let slot = {
            let mut log = self.log();
            self.subscribers.fetch_add(1, Ordering::AcqRel);
            log.min_position = log.min_position.min(seq);
            match log.positions.iter().position(|s| *s == Slot::Free) {
                Some(free) => {
                    log.positions[free] = Slot::Live(seq);
                    free
                }
                None => {
                    log.positions.push(Slot::Live(seq));
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
        let now = self.engine_now();
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
            Pushed::Cut(error) => {
                self.append(&mut log, error, now);
                false
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
        let now = self.engine_now();
        let mut log = self.log();
        let seq = match log.rules.push_text(text) {
            Ok(seq) => seq,
            Err(None) => return false,
            Err(Some(error)) => {
                self.append(&mut log, error, now);
                drop(log);
                self.engine_wrote(now);
                return false;
            }
        };
        self.first_chunk(&mut log);
        let frames = Line::chunk(seq, text, &mut log.lines);
        self.append_frames(&mut log, EventKind::Chunk, seq, frames, now);
        drop(log);
        self.engine_wrote(now);
        true
    }

    fn writable(&self) -> Option<BoxFuture<'_, ()>> {
        let mut log = self.log();
        // Over budget: what the readers have read since the last write can go first.
        let full = log.retained > self.max_bytes && !self.evict(&mut log, self.now_ms(), true);
        let wait = full || self.over_share(&log);
        drop(log);
        wait.then(|| self.wait_room().boxed())
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
        self.appended();
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
        let delivered = log
            .offset_and_time(idx)
            .map_or(log.total, |(offset, _)| offset);
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
            self.cut(&mut log);
            return Some(Batch::Lagged);
        }
        let idx = (self.next - log.first_seq) as usize;
        let visible = (log.committed - log.first_seq) as usize;
        if let Some((offset, at_ms)) = log.offset_and_time(idx).filter(|_| idx < visible) {
            let lag = log.total - offset;
            if lag > stream.lag.max_lag_bytes
                && stream.now_ms().saturating_sub(u64::from(at_ms)) >= stream.stall_ms()
            {
                self.cut(&mut log);
                return Some(Batch::Lagged);
            }
            let take = (visible - idx).min(max.max(1));
            let batch = log.range(idx, take);
            self.next += take as u64;
            if let Some(p @ Slot::Live(_)) = log.positions.get_mut(self.slot) {
                *p = Slot::Live(self.next);
            }
            drop(log);
            stream.wake_producer();
            return Some(Batch::Events(batch));
        }
        if log.ended_visible() {
            return Some(Batch::End);
        }
        None
    }
}

impl Cursor {
    /// This subscriber stops keeping up: it is no longer counted (once).
    fn cut(&self, log: &mut Log) {
        if log.end_seq.is_none_or(|end| self.next <= end) {
            log.left_early = true;
        }
        if let Some(slot) = log.positions.get_mut(self.slot)
            && matches!(slot, Slot::Live(_))
        {
            *slot = Slot::Cut;
            if self.stream.subscribers.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.stream.orphaned.notify_one();
            }
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        {
            let mut log = self.stream.log();
            self.cut(&mut log);
            if let Some(slot) = log.positions.get_mut(self.slot) {
                *slot = Slot::Free;
            }
            // The last reader of a finished stream is gone: keep only its bytes.
            if self.stream.subscribers() == 0 {
                self.stream.compact_log(&mut log);
            }
        }
        self.stream.wake_producer();
    }
}
