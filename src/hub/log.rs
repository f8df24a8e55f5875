//! One stream's append-only log, which is also its replay buffer, and the cursors that
//! read it.
//!
//! The producer (the engine through [`Sink`], then the core's finish) appends under a
//! short lock that is never held across an await; each reader has its own [`Cursor`]
//! and is woken only when it waits (a burst of appends with no reader waiting notifies
//! nobody). The log keeps at most `replay.max_bytes` of events,
//! evicting the oldest; a cursor whose next event was evicted gets [`Batch::Lagged`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::Sink;
use crate::event::{EndReason, Event, EventKind, Finish, Pushed, Seq, StreamRules};
use crate::metrics::StreamMetrics;
use crate::request::{RequestId, Transport};
use crate::routes::Route;
use crate::transport::encode::Frames;

/// Bytes an entry holds beyond its neutral line: the entry itself, its slot in the log,
/// the box of mapped encodings and the allocator's headers.
const ENTRY_OVERHEAD: u64 = std::mem::size_of::<Entry>() as u64 + 96;

/// One logged event: its neutral line and the wire encodings made from it, made once and
/// shared by every subscriber.
pub struct Entry {
    pub kind: EventKind,
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

    /// Memory the log counts for it: the line, room for one mapped encoding of about the
    /// same size (a legacy payload, typically), and the fixed overhead.
    fn retained(&self) -> u64 {
        2 * self.size() + ENTRY_OVERHEAD
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
    /// Wakes waiting cursors; `waiting` says whether any cursor waits.
    appended: Notify,
    waiting: AtomicBool,
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
        max_bytes: usize,
        metrics: StreamMetrics,
    ) -> Stream {
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
            }),
            max_bytes: max_bytes as u64,
            appended: Notify::new(),
            waiting: AtomicBool::new(false),
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
            self.append(&mut log, ev);
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
        for ev in events {
            self.append(&mut log, ev);
        }
        drop(log);
        self.publish();
        if let Some(reason) = &reason {
            self.metrics
                .finished(reason, self.created.elapsed().as_secs_f64());
        }
        reason
    }

    fn append(&self, log: &mut Log, event: Event) {
        let frames = Frames::new(&event, &mut log.scratch);
        let seq = event.seq.unwrap_or(log.rules.next_seq().saturating_sub(1));
        self.append_frames(log, event.event, seq, frames);
    }

    fn append_frames(&self, log: &mut Log, kind: EventKind, seq: Seq, frames: Frames) {
        let entry = Arc::new(Entry {
            kind,
            seq,
            offset: log.total,
            frames,
        });
        log.total += entry.size();
        // Memory held counts the entry itself too, so many tiny events stay bounded.
        log.retained += entry.retained();
        log.entries.push_back(entry);
        while log.retained > self.max_bytes && log.entries.len() > 1 {
            if let Some(old) = log.entries.pop_front() {
                log.retained -= old.retained();
                log.first_seq += 1;
            }
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

    /// Milliseconds since the last event the engine wrote (or since creation).
    pub fn idle_ms(&self) -> u64 {
        let now = self.created.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_event_ms.load(Ordering::Relaxed))
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
        let delivered = {
            let log = self.log();
            let idx = seq.saturating_sub(log.first_seq) as usize;
            match log.entries.get(idx) {
                Some(e) => e.offset,
                None => log.total,
            }
        };
        self.subscribers.fetch_add(1, Ordering::AcqRel);
        Cursor {
            stream: self.clone(),
            next: seq,
            delivered,
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
        let mut log = self.log();
        let accepted = match log.rules.push(kind, data) {
            Pushed::Accepted(ev) => {
                if kind == EventKind::Chunk {
                    self.first_chunk(&mut log);
                }
                self.append(&mut log, ev);
                true
            }
            Pushed::Reserved => {
                tracing::warn!(request_id = %self.id, event = kind.as_str(), "engine wrote a reserved event; ignored");
                return true;
            }
            Pushed::AfterTerminal => false,
        };
        drop(log);
        self.engine_wrote();
        accepted
    }

    fn emit_chunk(&self, text: &str) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let mut log = self.log();
        let Some(seq) = log.rules.push_text(text) else {
            return false;
        };
        self.first_chunk(&mut log);
        let frames = Frames::chunk(seq, text, &mut log.scratch);
        self.append_frames(&mut log, EventKind::Chunk, seq, frames);
        drop(log);
        self.engine_wrote();
        true
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
    fn engine_wrote(&self) {
        self.last_event_ms
            .store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
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
    delivered: u64,
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
        self.stream.log().total.saturating_sub(self.delivered)
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
        let log = self.stream.log();
        if self.next < log.first_seq {
            return Some(Batch::Lagged);
        }
        let idx = (self.next - log.first_seq) as usize;
        if idx < log.entries.len() {
            let take = (log.entries.len() - idx).min(max.max(1));
            let batch: Vec<Arc<Entry>> = log.entries.range(idx..idx + take).cloned().collect();
            drop(log);
            self.next += take as u64;
            if let Some(last) = batch.last() {
                self.delivered = last.end();
            }
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
        if self.stream.subscribers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.stream.orphaned.notify_one();
        }
    }
}
