//! The figures of a run: a log-linear latency histogram (HDR-like, fixed memory), the
//! counters of one transport ([`Stats`]), and their JSON and text forms.
//!
//! Clients record once per stream, never per event, so a `Mutex<Stats>` per transport
//! costs nothing measurable.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde_json::{Value, json};

use crate::check::Failure;

/// When a stream started (request written), saw its first chunk, and ended.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub start: Instant,
    pub first_chunk: Option<Instant>,
    pub end: Instant,
}

impl Timing {
    pub fn first_chunk_us(&self) -> Option<u64> {
        self.first_chunk
            .map(|t| t.saturating_duration_since(self.start).as_micros() as u64)
    }

    pub fn stream_us(&self) -> u64 {
        self.end.saturating_duration_since(self.start).as_micros() as u64
    }
}

/// Sub-buckets per power of two (relative error under 1/64 ≈ 1.6 %).
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values below this are exact.
const LINEAR: u64 = 2 * SUB as u64;
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

/// A log-linear histogram of microseconds: exact below 128, then 64 buckets per power
/// of two. 30 kB whatever the number of samples.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram(n={}, max={})", self.total, self.max)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    shift as usize * SUB + (v >> shift) as usize
}

/// The highest value that falls in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    if (b as u64) < LINEAR {
        return b as u64;
    }
    let shift = (b / SUB - 1) as u32;
    let m = (b % SUB + SUB) as u64;
    ((m + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(bucket_of(v)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), as the highest value of its bucket (never
    /// above the maximum seen); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(b).min(self.max);
            }
        }
        self.max
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Count, p50, p99 and max, the microseconds recorded shown as milliseconds.
    pub fn json_ms(&self) -> Value {
        let ms = |us: u64| round(us as f64 / 1000.0, 3);
        json!({
            "count": self.count(),
            "p50": ms(self.quantile(0.50)),
            "p99": ms(self.quantile(0.99)),
            "max": ms(self.max),
        })
    }
}

/// How many failure reasons are kept verbatim.
pub const KEEP_REASONS: usize = 20;

/// The counters of one transport.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub streams_ok: u64,
    pub streams_failed: u64,
    /// Events of the stream accepted by the check (heartbeats excluded).
    pub events: u64,
    pub chunks: u64,
    /// Expected events that did not arrive intact (at least 1 per failed stream).
    pub lost: u64,
    /// Chunk text bytes of streams that checked out.
    pub text_bytes: u64,
    /// Every byte received from the server (HTTP heads and framing, WebSocket frames).
    pub wire_bytes: u64,
    /// Connections (TCP for HTTP, sockets for Socket.IO) opened.
    pub connections: u64,
    /// Keep-alive connections found closed when reused (the request was retried).
    pub reconnects: u64,
    /// Engine.IO pings answered.
    pub pongs: u64,
    /// Request sent → first chunk received, µs.
    pub first_chunk: Histogram,
    /// Request sent → last event of the stream received, µs.
    pub stream: Histogram,
    pub errors: BTreeMap<String, u64>,
    pub reasons: Vec<String>,
}

impl Stats {
    pub fn ok(
        &mut self,
        first_chunk_us: Option<u64>,
        stream_us: u64,
        events: u64,
        chunks: u64,
        text_bytes: u64,
    ) {
        self.streams_ok += 1;
        self.events += events;
        self.chunks += chunks;
        self.text_bytes += text_bytes;
        if let Some(us) = first_chunk_us {
            self.first_chunk.record(us);
        }
        self.stream.record(stream_us);
    }

    /// A failed stream: `valid` of its `expected` events had checked out.
    pub fn fail(&mut self, f: &Failure, valid: u64, expected: u64, label: &str) {
        self.streams_failed += 1;
        self.events += valid;
        self.lost += expected.saturating_sub(valid).max(1);
        *self.errors.entry(f.kind.to_string()).or_default() += 1;
        if self.reasons.len() < KEEP_REASONS {
            self.reasons.push(format!("{label}: {f}"));
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.streams_ok += o.streams_ok;
        self.streams_failed += o.streams_failed;
        self.events += o.events;
        self.chunks += o.chunks;
        self.lost += o.lost;
        self.text_bytes += o.text_bytes;
        self.wire_bytes += o.wire_bytes;
        self.connections += o.connections;
        self.reconnects += o.reconnects;
        self.pongs += o.pongs;
        self.first_chunk.merge(&o.first_chunk);
        self.stream.merge(&o.stream);
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for r in &o.reasons {
            if self.reasons.len() < KEEP_REASONS {
                self.reasons.push(r.clone());
            }
        }
    }

    pub fn json(&self, wall_secs: f64) -> Value {
        let rate = |n: u64| {
            if wall_secs > 0.0 {
                n as f64 / wall_secs
            } else {
                0.0
            }
        };
        json!({
            "streams_ok": self.streams_ok,
            "streams_failed": self.streams_failed,
            "events_delivered": self.events,
            "chunks_delivered": self.chunks,
            "events_lost": self.lost,
            "events_per_sec": round(rate(self.events), 1),
            "chunks_per_sec": round(rate(self.chunks), 1),
            "wire_bytes": self.wire_bytes,
            "mb_per_sec": round(rate(self.wire_bytes) / 1e6, 3),
            "text_mb_per_sec": round(rate(self.text_bytes) / 1e6, 3),
            "first_chunk_ms": self.first_chunk.json_ms(),
            "stream_ms": self.stream.json_ms(),
            "connections": self.connections,
            "stale_retries": self.reconnects,
            "pings_answered": self.pongs,
            "errors": self.errors,
            "reasons": self.reasons,
        })
    }
}

pub fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Microseconds as milliseconds for people.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// A table row: its label and how a column's cell is made.
type Row = (&'static str, Box<dyn Fn(&Stats) -> String>);

/// A table of labelled rows, one column per transport.
pub fn table(columns: &[(&str, &Stats)], wall_secs: f64) -> String {
    let rate = move |n: u64| {
        if wall_secs > 0.0 {
            n as f64 / wall_secs
        } else {
            0.0
        }
    };
    let rows: Vec<Row> = vec![
        ("streams ok", Box::new(|s: &Stats| s.streams_ok.to_string())),
        (
            "streams failed",
            Box::new(|s: &Stats| s.streams_failed.to_string()),
        ),
        (
            "events delivered",
            Box::new(|s: &Stats| s.events.to_string()),
        ),
        (
            "events lost/garbled",
            Box::new(|s: &Stats| s.lost.to_string()),
        ),
        (
            "events/s",
            Box::new(move |s: &Stats| format!("{:.0}", rate(s.events))),
        ),
        (
            "chunks/s",
            Box::new(move |s: &Stats| format!("{:.0}", rate(s.chunks))),
        ),
        (
            "wire MB/s",
            Box::new(move |s: &Stats| format!("{:.2}", rate(s.wire_bytes) / 1e6)),
        ),
        (
            "chunk text MB/s",
            Box::new(move |s: &Stats| format!("{:.2}", rate(s.text_bytes) / 1e6)),
        ),
        (
            "first chunk p50 ms",
            Box::new(|s: &Stats| ms(s.first_chunk.quantile(0.5))),
        ),
        (
            "first chunk p99 ms",
            Box::new(|s: &Stats| ms(s.first_chunk.quantile(0.99))),
        ),
        (
            "first chunk max ms",
            Box::new(|s: &Stats| ms(s.first_chunk.max())),
        ),
        (
            "stream p50 ms",
            Box::new(|s: &Stats| ms(s.stream.quantile(0.5))),
        ),
        (
            "stream p99 ms",
            Box::new(|s: &Stats| ms(s.stream.quantile(0.99))),
        ),
        ("stream max ms", Box::new(|s: &Stats| ms(s.stream.max()))),
        (
            "connections opened",
            Box::new(|s: &Stats| s.connections.to_string()),
        ),
        (
            "stale keep-alive retries",
            Box::new(|s: &Stats| s.reconnects.to_string()),
        ),
    ];
    let label_w = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, f)| columns.iter().map(|(_, s)| f(s)).collect())
        .collect();
    let col_w: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            cells
                .iter()
                .filter_map(|r| r.get(i).map(String::len))
                .chain([name.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:label_w$}", "");
    for ((name, _), w) in columns.iter().zip(&col_w) {
        let _ = write!(out, "  {name:>w$}");
    }
    out.push('\n');
    for ((label, _), row) in rows.iter().zip(&cells) {
        let _ = write!(out, "{label:label_w$}");
        for (cell, w) in row.iter().zip(&col_w) {
            let _ = write!(out, "  {cell:>w$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bounded() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(127), 127);
        assert_eq!(bucket_of(128), 128);
        let mut prev = 0;
        for v in (0..1_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= prev && b < BUCKETS, "v={v} b={b}");
            assert!(bucket_high(b) >= v, "v={v}");
            assert!(
                v < LINEAR || (bucket_high(b) - v) as f64 / v as f64 <= 1.0 / 64.0,
                "v={v}"
            );
            prev = b;
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in 1..=1000 {
            h.record(v * 10);
        }
        let p50 = h.quantile(0.5);
        assert!((5000..=5000 + 5000 / 64).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((9900..=9900 + 9900 / 64).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 10_000);
        let mut other = Histogram::default();
        other.record(50_000);
        h.merge(&other);
        assert_eq!(h.max(), 50_000);
        assert_eq!(h.count(), 1001);
    }

    #[test]
    fn failures_count_lost_events() {
        let mut s = Stats::default();
        s.fail(&Failure::garbled("x"), 5, 10, "ndjson");
        s.fail(&Failure::garbled("y"), 10, 10, "ndjson");
        assert_eq!(s.lost, 6);
        assert_eq!(s.errors["garbled"], 2);
        assert_eq!(s.reasons[0], "ndjson: garbled: x");
    }
}
