//! A finished log, compacted: every line back to back in one buffer and a small index, so
//! a stream kept for resume costs its bytes and a few more per event (not an entry, an
//! allocation and the wire encodings per event, as a live log holds).
//!
//! Owns only that representation; when to compact and who may read is the log's business
//! (`log.rs`). Entries are rebuilt on demand for a reader, sharing the buffer (no copy).

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use super::log::Entry;
use crate::event::{EventKind, Line, Seq};

/// What the index keeps per event (12 bytes).
#[derive(Clone, Copy)]
struct Slot {
    /// Where the event's line ends in the buffer.
    end: u32,
    /// Milliseconds after the stream's creation when it was logged.
    at_ms: u32,
    /// Where its `data` starts, from the start of its line.
    data_at: u16,
    kind: EventKind,
}

/// Bytes one event costs in a compacted log beyond its line.
pub const PER_EVENT: u64 = std::mem::size_of::<Slot>() as u64;

/// A compacted log (see the module doc).
pub struct Compact {
    bytes: Bytes,
    index: Box<[Slot]>,
    /// `offset` of the first entry (bytes the stream had written before it).
    base_offset: u64,
}

impl Compact {
    /// Packs the entries of a finished log, oldest first: `base_offset` is the first one's
    /// offset and `total` their lines' bytes together (the log knows both, so each entry
    /// is visited once, as it is dropped). Gives the entries back untouched when they do
    /// not fit the index (a log over 4 GiB).
    pub fn pack(
        entries: VecDeque<Arc<Entry>>,
        base_offset: u64,
        total: u64,
    ) -> Result<Compact, VecDeque<Arc<Entry>>> {
        if u32::try_from(total).is_err() {
            return Err(entries);
        }
        let mut bytes = BytesMut::with_capacity(total as usize);
        let mut index = Vec::with_capacity(entries.len());
        for e in entries {
            bytes.extend_from_slice(e.line.as_bytes());
            index.push(Slot {
                end: bytes.len() as u32,
                at_ms: e.at_ms,
                // `data` starts after `{"event":"<kind>","seq":<u64>,"data":`: under 64.
                data_at: e.line.data_at() as u16,
                kind: e.kind,
            });
        }
        Ok(Compact {
            bytes: bytes.freeze(),
            index: index.into_boxed_slice(),
            base_offset,
        })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Memory it holds: the lines and the index.
    pub fn cost(&self) -> u64 {
        self.bytes.len() as u64 + PER_EVENT * self.index.len() as u64
    }

    fn start(&self, idx: usize) -> usize {
        idx.checked_sub(1)
            .and_then(|i| self.index.get(i))
            .map_or(0, |s| s.end as usize)
    }

    /// Bytes the stream had written before entry `idx`.
    pub fn offset(&self, idx: usize) -> Option<u64> {
        self.index.get(idx)?;
        Some(self.base_offset + self.start(idx) as u64)
    }

    /// Milliseconds after the stream's creation when entry `idx` was logged.
    pub fn at_ms(&self, idx: usize) -> Option<u32> {
        self.index.get(idx).map(|s| s.at_ms)
    }

    /// Entry `idx` again, with seq `seq` (its line shares the buffer).
    pub fn entry(&self, idx: usize, seq: Seq) -> Option<Arc<Entry>> {
        let slot = self.index.get(idx)?;
        let start = self.start(idx);
        let line = Line::from_parts(
            self.bytes.slice(start..slot.end as usize),
            u32::from(slot.data_at),
        );
        Some(Arc::new(Entry::rebuilt(
            slot.kind,
            slot.at_ms,
            seq,
            self.base_offset + start as u64,
            line,
        )))
    }
}

impl Entry {
    fn rebuilt(kind: EventKind, at_ms: u32, seq: Seq, offset: u64, line: Line) -> Entry {
        Entry {
            kind,
            at_ms,
            seq,
            offset,
            line,
            cache: OnceLock::new(),
        }
    }
}
