//! Neutral events and the stream rules (SPEC section 1).
//!
//! Owns the event vocabulary, the envelope, and [`StreamRules`]: the one place that stamps
//! `seq`, puts `started` first and exactly one `end` last, and fills `completion.output`.
//! It knows nothing of transports, engines or the hub's storage.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Position of an event in its stream. Starts at 0, grows by exactly 1 per event.
pub type Seq = u64;

/// The neutral event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Chunk,
    StatusUpdate,
    ToolEvent,
    Completion,
    Data,
    Error,
    Broker,
    Heartbeat,
    End,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Chunk,
        EventKind::StatusUpdate,
        EventKind::ToolEvent,
        EventKind::Completion,
        EventKind::Data,
        EventKind::Error,
        EventKind::Broker,
        EventKind::Heartbeat,
        EventKind::End,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Chunk => "chunk",
            EventKind::StatusUpdate => "status_update",
            EventKind::ToolEvent => "tool_event",
            EventKind::Completion => "completion",
            EventKind::Data => "data",
            EventKind::Error => "error",
            EventKind::Broker => "broker",
            EventKind::Heartbeat => "heartbeat",
            EventKind::End => "end",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Dense index, for per-kind lookup tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a stream ended: the `reason` of its `end` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Completed,
    Error,
    Cancelled,
    Shutdown,
    Timeout,
    SlowConsumer,
}

impl EndReason {
    pub const ALL: [EndReason; 6] = [
        EndReason::Completed,
        EndReason::Error,
        EndReason::Cancelled,
        EndReason::Shutdown,
        EndReason::Timeout,
        EndReason::SlowConsumer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::Error => "error",
            EndReason::Cancelled => "cancelled",
            EndReason::Shutdown => "shutdown",
            EndReason::Timeout => "timeout",
            EndReason::SlowConsumer => "slow_consumer",
        }
    }
}

/// One event: the envelope `{"event", "seq", "data"}`. Heartbeats carry no `seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    pub data: Value,
}

impl Event {
    pub fn heartbeat(now_ms: u64) -> Event {
        Event {
            event: EventKind::Heartbeat,
            seq: None,
            data: json!({ "timestamp": now_ms }),
        }
    }

    /// The `end` reason, when this is an `end` event.
    pub fn end_reason(&self) -> Option<&str> {
        match self.event {
            EventKind::End => self.data.get("reason").and_then(Value::as_str),
            _ => None,
        }
    }
}

/// How a stream finishes, as decided by the core (engine result, cancel, shutdown...).
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    /// The engine returned normally.
    Completed,
    /// The engine failed: an `error` event with this type and message.
    Failed { error_type: String, message: String },
    /// Stopped from outside: cancel, shutdown, timeout.
    Stopped(EndReason),
}

/// What happened to an event offered to [`StreamRules::push`].
#[derive(Debug, PartialEq)]
pub enum Pushed {
    Accepted(Event),
    /// The stream already has its terminal event (or `end`): nothing more is accepted.
    AfterTerminal,
    /// Engines may not write this kind themselves (`heartbeat`, `end`, `started`).
    Reserved,
    /// The chunk would take the stream's text past its bound: it is refused, and this
    /// `error {error_type: "output_too_large"}` ends the stream instead.
    Cut(Event),
}

/// The `error_type` of a stream whose text outgrew `limits.max_output_bytes`.
pub const OUTPUT_TOO_LARGE: &str = "output_too_large";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Fresh,
    Open,
    /// `completion` or `error` written; only `end` may follow.
    Terminal(EndReason),
    Ended,
}

/// An event's neutral NDJSON line (`{"event":…,"seq":…,"data":…}` and a newline): what
/// a stream's log stores, made once when the event is logged, and what every unmapped
/// wire is cut from (the data JSON is located, never parsed again to be copied).
#[derive(Debug, Clone)]
pub struct Line {
    bytes: Bytes,
    /// Where the event's `data` JSON starts (it ends before the final `}\n`).
    data_at: u32,
}

/// Where lines are written: a block that successive lines share (each line is a slice of
/// it), so a stream's lines cost one allocation per block instead of one each, and sit
/// side by side in memory. Blocks grow from 512 bytes to 16 KiB as the stream writes, so a
/// quiet stream pins little.
#[derive(Debug, Default)]
pub struct LineBuf {
    block: BytesMut,
    /// The size of the next block.
    next: usize,
    /// Where JSON is serialised before it is copied into the block (serde_json's writer
    /// for a `Vec` is compiled once, in serde_json); kept from line to line unless a long
    /// one made it large.
    json: Vec<u8>,
}

impl LineBuf {
    const FIRST_BLOCK: usize = 512;
    const LAST_BLOCK: usize = 16 * 1024;

    /// Makes room for a line of about `want` bytes (one known to be long).
    pub fn reserve(&mut self, want: usize) {
        self.with_room(want);
    }

    /// Lets `write` put JSON into the reused buffer and writes a line of `kind` whose
    /// `data` is that JSON (with `wrap` around it).
    fn line_of_json(
        &mut self,
        kind: EventKind,
        seq: Option<Seq>,
        write: impl FnOnce(&mut Vec<u8>),
        wrap: (&[u8], &[u8]),
    ) -> Line {
        let mut json = std::mem::take(&mut self.json);
        json.clear();
        write(&mut json);
        let want = 64 + wrap.0.len() + json.len() + wrap.1.len();
        let line = Line::encode(kind, seq, self.with_room(want), |out| {
            out.put_slice(wrap.0);
            out.put_slice(&json);
            out.put_slice(wrap.1);
        });
        if json.capacity() <= Self::LAST_BLOCK {
            self.json = json;
        }
        line
    }

    /// The block, with room for at least `want` more bytes (a line longer than guessed
    /// still fits: the block then grows on its own).
    fn with_room(&mut self, want: usize) -> &mut BytesMut {
        if self.block.capacity() - self.block.len() < want {
            self.next = (self.next * 2).clamp(Self::FIRST_BLOCK, Self::LAST_BLOCK);
            self.block = BytesMut::with_capacity(self.next.max(want));
        }
        &mut self.block
    }
}

/// Writes `value` as compact JSON: the bytes `serde_json::to_writer` writes, with strings
/// that need no escape copied as they are (serde_json looks at each byte of each string:
/// a completion carries the stream's whole text).
fn write_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_json(out, v);
            }
            out.push(b'}');
        }
        // Null, booleans and numbers: serde_json's own digits. Writing to a Vec cannot fail.
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// A JSON string: copied between quotes when it needs no escape, else escaped by serde_json.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether `s` goes into a JSON string as it is (no quote, backslash or control byte).
/// Checked 16 bytes at a time without an early exit inside, which the compiler vectorizes.
fn plain(s: &str) -> bool {
    s.as_bytes().chunks(16).all(|c| {
        c.iter()
            .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
    })
}

impl Line {
    /// Encodes `event` into `buf`'s current block.
    pub fn of(event: &Event, buf: &mut LineBuf) -> Line {
        buf.line_of_json(
            event.event,
            event.seq,
            |out| write_json(out, &event.data),
            (b"", b""),
        )
    }

    /// The line of `chunk {text}`: the same bytes as [`Line::of`] of that event, without
    /// building its JSON value (the per-token path).
    pub fn chunk(seq: Seq, text: &str, buf: &mut LineBuf) -> Line {
        // Most text needs no escape at all: copied as it is.
        if !plain(text) {
            return buf.line_of_json(
                EventKind::Chunk,
                Some(seq),
                // Known to need escapes: straight to serde_json.
                |out| {
                    let _ = serde_json::to_writer(&mut *out, text);
                },
                (b"{\"text\":", b"}"),
            );
        }
        let guess = 64 + text.len();
        Line::encode(EventKind::Chunk, Some(seq), buf.with_room(guess), |out| {
            out.put_slice(b"{\"text\":\"");
            out.put_slice(text.as_bytes());
            out.put_slice(b"\"}");
        })
    }

    /// Writes one line at the end of `block` (which holds nothing unsplit) and splits it off.
    fn encode(
        kind: EventKind,
        seq: Option<Seq>,
        block: &mut BytesMut,
        data: impl FnOnce(&mut BytesMut),
    ) -> Line {
        block.put_slice(b"{\"event\":\"");
        block.put_slice(kind.as_str().as_bytes());
        block.put_u8(b'"');
        if let Some(seq) = seq {
            block.put_slice(b",\"seq\":");
            put_u64(block, seq);
        }
        block.put_slice(b",\"data\":");
        let data_at = block.len();
        data(block);
        block.put_slice(b"}\n");
        Line {
            bytes: block.split().freeze(),
            data_at: u32::try_from(data_at).unwrap_or(u32::MAX),
        }
    }

    /// A line read back from its bytes (as [`Line::as_bytes`] gave them, newline
    /// included), with its kind and seq: `None` when the bytes are not such a line.
    pub fn parse(bytes: Bytes) -> Option<(EventKind, Seq, Line)> {
        let rest = bytes.strip_prefix(b"{\"event\":\"")?;
        let name_len = rest.iter().position(|&b| b == b'"')?;
        let kind = EventKind::parse(std::str::from_utf8(&rest[..name_len]).ok()?)?;
        let rest = rest[name_len..].strip_prefix(b"\",\"seq\":")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let seq: Seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        let rest = rest[digits..].strip_prefix(b",\"data\":")?;
        if !rest.ends_with(b"}\n") {
            return None;
        }
        let data_at = u32::try_from(bytes.len() - rest.len()).ok()?;
        Some((kind, seq, Line { bytes, data_at }))
    }

    /// Where the event's `data` starts in the line (see [`Line::from_parts`]).
    pub(crate) fn data_at(&self) -> u32 {
        self.data_at
    }

    /// A line again from its bytes and [`Line::data_at`], as a compacted log keeps them.
    pub(crate) fn from_parts(bytes: Bytes, data_at: u32) -> Line {
        Line { bytes, data_at }
    }

    /// The line's bytes, shared (no copy).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The whole line, newline included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The event's `data`, as JSON text.
    pub fn data_json(&self) -> &[u8] {
        let end = self.bytes.len().saturating_sub(2);
        self.bytes
            .get(self.data_at as usize..end)
            .unwrap_or(b"null")
    }

    /// The event again (its `data` parsed back), given its kind and seq.
    pub fn decode(&self, kind: EventKind, seq: Option<Seq>) -> Event {
        Event {
            event: kind,
            seq,
            data: serde_json::from_slice(self.data_json()).unwrap_or(Value::Null),
        }
    }
}

#[cfg(test)]
mod line_tests {
    use super::*;

    #[test]
    fn a_line_reads_back_from_its_bytes() {
        let mut scratch = LineBuf::default();
        let ev = Event {
            event: EventKind::Error,
            seq: Some(42),
            data: serde_json::json!({"error_type": "x", "message": "a \"b\"\n"}),
        };
        let line = Line::of(&ev, &mut scratch);
        let (kind, seq, back) = Line::parse(line.bytes().clone()).unwrap();
        assert_eq!((kind, seq), (EventKind::Error, 42));
        assert_eq!(back.data_json(), line.data_json());
        assert_eq!(back.decode(kind, Some(seq)), ev);
        let chunk = Line::chunk(7, "hi", &mut scratch);
        assert_eq!(Line::parse(chunk.bytes().clone()).unwrap().1, 7);
        for bad in [
            &b"{}\n"[..],
            b"{\"event\":\"nope\",\"seq\":1,\"data\":{}}\n",
        ] {
            assert!(Line::parse(Bytes::copy_from_slice(bad)).is_none());
        }
    }
}

/// Appends the decimal digits of `n` (as `itoa` would write them).
pub fn put_u64(out: &mut impl BufMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// The stream rules of SPEC section 1, as a small state machine. Every event of every
/// stream passes through one of these, whatever the engine.
#[derive(Debug)]
pub struct StreamRules {
    next_seq: Seq,
    phase: Phase,
    /// The text of the chunks so far, for `completion.output` (handed over to it).
    output: String,
    /// Most bytes `output` may reach; a chunk past it ends the stream with an error.
    max_output: usize,
}

impl Default for StreamRules {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamRules {
    pub fn new() -> Self {
        StreamRules {
            next_seq: 0,
            phase: Phase::Fresh,
            output: String::new(),
            max_output: usize::MAX,
        }
    }

    /// Rules whose stream text (the chunks' concatenation) may reach at most `max` bytes.
    pub fn with_max_output(max: usize) -> Self {
        StreamRules {
            max_output: max,
            ..StreamRules::new()
        }
    }

    /// Whether `text` still fits; if not, the stream's `error` (it is then terminal).
    fn take_text(&mut self, text: &str) -> Result<(), Event> {
        if self.output.len().saturating_add(text.len()) > self.max_output {
            self.phase = Phase::Terminal(EndReason::Error);
            let message = format!(
                "the stream's text outgrew its bound of {} bytes (limits.max_output_bytes); it was ended rather than cut short",
                self.max_output
            );
            return Err(self.stamp(
                EventKind::Error,
                json!({"error_type": OUTPUT_TOO_LARGE, "message": message}),
            ));
        }
        self.output.push_str(text);
        Ok(())
    }

    /// The first event: `status_update {status: "started", metadata: {request_id, route}}`.
    pub fn start(&mut self, request_id: &str, route: &str) -> Option<Event> {
        if self.phase != Phase::Fresh {
            return None;
        }
        self.phase = Phase::Open;
        Some(self.stamp(
            EventKind::StatusUpdate,
            json!({"status": "started", "metadata": {"request_id": request_id, "route": route}}),
        ))
    }

    /// Offers an engine event. `completion` and `error` become the terminal event.
    pub fn push(&mut self, kind: EventKind, mut data: Value) -> Pushed {
        match self.phase {
            Phase::Open => {}
            Phase::Fresh | Phase::Terminal(_) | Phase::Ended => return Pushed::AfterTerminal,
        }
        match kind {
            EventKind::Heartbeat | EventKind::End => return Pushed::Reserved,
            // `started` is the core's, written once by `start`: a second one would tell
            // clients a new stream began in the middle of this one.
            EventKind::StatusUpdate
                if data.get("status").and_then(Value::as_str) == Some("started") =>
            {
                return Pushed::Reserved;
            }
            EventKind::Chunk => {
                if let Some(text) = data.get("text").and_then(Value::as_str)
                    && let Err(error) = self.take_text(text)
                {
                    return Pushed::Cut(error);
                }
            }
            EventKind::Completion => {
                let mut obj = into_object(data);
                if obj.get("output").is_none_or(Value::is_null) {
                    // Terminal: no chunk follows, so the text moves into the event.
                    let text = std::mem::take(&mut self.output);
                    obj.insert("output".into(), Value::String(text));
                }
                if obj.get("status").is_none_or(Value::is_null) {
                    obj.insert("status".into(), Value::String("complete".into()));
                }
                data = Value::Object(obj);
                self.phase = Phase::Terminal(EndReason::Completed);
            }
            EventKind::Error => {
                data = Value::Object(into_object(data));
                self.phase = Phase::Terminal(EndReason::Error);
            }
            _ => {}
        }
        Pushed::Accepted(self.stamp(kind, data))
    }

    /// Offers `chunk {text}` by its text alone (what [`StreamRules::push`] does for that
    /// event, without its JSON value): the chunk's seq; `Err(None)` once the stream takes
    /// no more events; `Err(Some(error))` when the text outgrew its bound (see
    /// [`Pushed::Cut`]).
    pub fn push_text(&mut self, text: &str) -> Result<Seq, Option<Event>> {
        if self.phase != Phase::Open {
            return Err(None);
        }
        self.take_text(text).map_err(Some)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Closes the stream: the missing terminal event (if any) and the one `end`.
    /// Returns nothing once the stream has ended.
    pub fn finish(&mut self, how: Finish) -> Vec<Event> {
        let mut out = Vec::with_capacity(2);
        let reason = match self.phase {
            Phase::Ended => return out,
            Phase::Terminal(reason) => reason,
            Phase::Fresh | Phase::Open => {
                if self.phase == Phase::Fresh {
                    // A stream always starts before it ends; callers start first, this is
                    // only a guard so the rules can never be broken.
                    self.phase = Phase::Open;
                }
                let (kind, data, reason) = match how {
                    // Stopped "completed" is a normal completion, never an `error` event.
                    Finish::Completed | Finish::Stopped(EndReason::Completed) => (
                        EventKind::Completion,
                        json!({"status": "complete", "output": std::mem::take(&mut self.output)}),
                        EndReason::Completed,
                    ),
                    Finish::Failed {
                        error_type,
                        message,
                    } => (
                        EventKind::Error,
                        json!({"error_type": error_type, "message": message}),
                        EndReason::Error,
                    ),
                    Finish::Stopped(r @ (EndReason::Cancelled | EndReason::Shutdown)) => (
                        EventKind::Completion,
                        json!({"status": r.as_str(), "output": std::mem::take(&mut self.output)}),
                        r,
                    ),
                    Finish::Stopped(r) => (
                        EventKind::Error,
                        json!({"error_type": r.as_str(), "message": stop_message(r)}),
                        r,
                    ),
                };
                out.push(self.stamp(kind, data));
                reason
            }
        };
        self.phase = Phase::Ended;
        out.push(self.stamp(EventKind::End, json!({"reason": reason.as_str()})));
        out
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// The concatenated `chunk.text` so far (until a completion carries it away).
    pub fn output(&self) -> &str {
        &self.output
    }

    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    fn stamp(&mut self, kind: EventKind, data: Value) -> Event {
        let seq = self.next_seq;
        self.next_seq += 1;
        Event {
            event: kind,
            seq: Some(seq),
            data,
        }
    }
}

fn stop_message(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Timeout => "the engine produced nothing for too long",
        EndReason::SlowConsumer => "the subscriber fell too far behind the stream",
        _ => "the stream was stopped",
    }
}

/// Terminal events always carry an object; anything else is kept under `value`.
fn into_object(data: Value) -> Map<String, Value> {
    match data {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => {
            let mut map = Map::new();
            map.insert("value".into(), other);
            map
        }
    }
}

/// The two events a subscriber gets when it is cut off for lagging: `error` then `end`,
/// numbered right after the last event it received so its own view stays contiguous.
pub fn slow_consumer_events(next_seq: Seq) -> [Event; 2] {
    [
        Event {
            event: EventKind::Error,
            seq: Some(next_seq),
            data: json!({"error_type": "slow_consumer", "message": stop_message(EndReason::SlowConsumer)}),
        },
        Event {
            event: EventKind::End,
            seq: Some(next_seq + 1),
            data: json!({"reason": "slow_consumer"}),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq.unwrap()).collect()
    }

    #[test]
    fn started_first_then_contiguous_seq_and_one_end() {
        let mut r = StreamRules::new();
        let mut all = vec![r.start("r1", "chat").unwrap()];
        assert!(r.start("r1", "chat").is_none(), "started is written once");
        for w in ["a ", "b"] {
            match r.push(EventKind::Chunk, json!({"text": w})) {
                Pushed::Accepted(e) => all.push(e),
                other => panic!("{other:?}"),
            }
        }
        all.extend(r.finish(Finish::Completed));
        assert_eq!(seqs(&all), vec![0, 1, 2, 3, 4]);
        assert_eq!(all[0].data["status"], "started");
        assert_eq!(all[0].data["metadata"]["route"], "chat");
        assert_eq!(all[3].event, EventKind::Completion);
        assert_eq!(all[3].data["output"], "a b");
        assert_eq!(all[4].event, EventKind::End);
        assert_eq!(all[4].data["reason"], "completed");
        assert!(r.finish(Finish::Completed).is_empty(), "exactly one end");
        assert_eq!(
            r.push(EventKind::Chunk, json!({"text": "late"})),
            Pushed::AfterTerminal
        );
    }

    #[test]
    fn engine_completion_gets_output_filled_and_nothing_after_it() {
        let mut r = StreamRules::new();
        r.start("r", "x");
        r.push(EventKind::Chunk, json!({"text": "hi"}));
        let Pushed::Accepted(c) = r.push(EventKind::Completion, json!({"status": "complete"}))
        else {
            panic!()
        };
        assert_eq!(c.data["output"], "hi");
        assert_eq!(
            r.push(EventKind::Chunk, json!({"text": "x"})),
            Pushed::AfterTerminal
        );
        let end = r.finish(Finish::Failed {
            error_type: "e".into(),
            message: "m".into(),
        });
        assert_eq!(end.len(), 1, "the completion is already the terminal event");
        assert_eq!(end[0].data["reason"], "completed");
    }

    #[test]
    fn text_past_its_bound_ends_the_stream_with_an_error() {
        let mut r = StreamRules::with_max_output(5);
        r.start("r", "chat");
        assert_eq!(r.push_text("abc"), Ok(1));
        let Err(Some(e)) = r.push_text("def") else {
            panic!("the second chunk goes past 5 bytes");
        };
        assert_eq!(e.event, EventKind::Error);
        assert_eq!(e.seq, Some(2));
        assert_eq!(e.data["error_type"], OUTPUT_TOO_LARGE);
        assert_eq!(r.push_text("x"), Err(None));
        let end = r.finish(Finish::Completed);
        assert_eq!(end.len(), 1);
        assert_eq!(end[0].end_reason(), Some("error"));
        // The same through a chunk's JSON value.
        let mut r = StreamRules::with_max_output(2);
        r.start("r", "chat");
        assert!(matches!(
            r.push(EventKind::Chunk, json!({"text": "abc"})),
            Pushed::Cut(_)
        ));
        assert_eq!(
            r.push(EventKind::Chunk, json!({"text": "a"})),
            Pushed::AfterTerminal
        );
    }

    #[test]
    fn engine_output_is_kept_when_set() {
        let mut r = StreamRules::new();
        r.start("r", "x");
        r.push(EventKind::Chunk, json!({"text": "hi"}));
        let Pushed::Accepted(c) = r.push(EventKind::Completion, json!({"output": "own"})) else {
            panic!()
        };
        assert_eq!(c.data["output"], "own");
        assert_eq!(c.data["status"], "complete");
    }

    #[test]
    fn reserved_kinds_are_refused() {
        let mut r = StreamRules::new();
        r.start("r", "x");
        assert_eq!(r.push(EventKind::End, json!({})), Pushed::Reserved);
        assert_eq!(r.push(EventKind::Heartbeat, json!({})), Pushed::Reserved);
        assert_eq!(r.next_seq(), 1);
    }

    /// Found by the stream-rules property test: an engine's own `started` was stamped
    /// mid-stream, so the stream had two.
    #[test]
    fn an_engine_started_is_reserved() {
        let mut r = StreamRules::new();
        r.start("r", "x");
        assert_eq!(
            r.push(EventKind::StatusUpdate, json!({"status": "started"})),
            Pushed::Reserved
        );
        assert!(matches!(
            r.push(EventKind::StatusUpdate, json!({"status": "thinking"})),
            Pushed::Accepted(_)
        ));
        assert_eq!(r.next_seq(), 2);
    }

    #[test]
    fn every_finish_has_its_terminal_event() {
        let cases = [
            (
                Finish::Completed,
                EventKind::Completion,
                "completed",
                "complete",
            ),
            (
                Finish::Failed {
                    error_type: "upstream_error".into(),
                    message: "boom".into(),
                },
                EventKind::Error,
                "error",
                "upstream_error",
            ),
            (
                Finish::Stopped(EndReason::Cancelled),
                EventKind::Completion,
                "cancelled",
                "cancelled",
            ),
            (
                Finish::Stopped(EndReason::Shutdown),
                EventKind::Completion,
                "shutdown",
                "shutdown",
            ),
            (
                Finish::Stopped(EndReason::Timeout),
                EventKind::Error,
                "timeout",
                "timeout",
            ),
        ];
        for (how, kind, reason, status) in cases {
            let mut r = StreamRules::new();
            r.start("r", "x");
            r.push(EventKind::Chunk, json!({"text": "so far"}));
            let out = r.finish(how);
            assert_eq!(out.len(), 2);
            assert_eq!(out[0].event, kind);
            let got = out[0].data.get("status").or(out[0].data.get("error_type"));
            assert_eq!(got.unwrap(), status);
            if kind == EventKind::Completion {
                assert_eq!(out[0].data["output"], "so far");
            }
            assert_eq!(out[1].data["reason"], reason);
            assert_eq!(seqs(&out), vec![2, 3]);
        }
    }

    /// Found by the stream-rules property test: `Stopped(Completed)` wrote
    /// `error {error_type: "completed"}` before `end {reason: "completed"}`.
    #[test]
    fn stopped_completed_ends_with_a_completion() {
        let mut r = StreamRules::new();
        r.start("r", "x");
        r.push(EventKind::Chunk, json!({"text": "all"}));
        let out = r.finish(Finish::Stopped(EndReason::Completed));
        assert_eq!(out[0].event, EventKind::Completion);
        assert_eq!(out[0].data, json!({"status": "complete", "output": "all"}));
        assert_eq!(out[1].data["reason"], "completed");
    }

    #[test]
    fn error_data_that_is_not_an_object_is_wrapped() {
        let mut r = StreamRules::new();
        r.start("r", "x");
        let Pushed::Accepted(e) = r.push(EventKind::Error, json!("bad")) else {
            panic!()
        };
        assert_eq!(e.data, json!({"value": "bad"}));
    }

    /// Property tests: whatever an engine writes and however the stream finishes, the
    /// events that come out obey SPEC section 1.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One call on the rules, as the core (start) or an engine (push) makes it.
        #[derive(Clone, Debug)]
        enum Op {
            Start,
            Push(EventKind, Value),
        }

        fn kind() -> impl Strategy<Value = EventKind> {
            prop::sample::select(EventKind::ALL.to_vec())
        }

        fn end_reason() -> impl Strategy<Value = EndReason> {
            prop::sample::select(EndReason::ALL.to_vec())
        }

        /// Any JSON, biased towards the fields the rules read (`text`, `output`, `status`).
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "\\PC{0,8}".prop_map(Value::from),
                Just(Value::from("started")),
                Just(Value::from("complete")),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec(
                        (
                            prop_oneof![
                                Just("text".to_string()),
                                Just("output".to_string()),
                                Just("status".to_string()),
                                Just("error_type".to_string()),
                                "[a-z]{1,6}",
                            ],
                            inner
                        ),
                        0..4
                    )
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        /// Mostly well-formed payloads for each kind, sometimes anything at all.
        fn payload(kind: EventKind) -> BoxedStrategy<Value> {
            let typical = match kind {
                EventKind::Chunk => "\\PC{0,6}".prop_map(|t| json!({ "text": t })).boxed(),
                EventKind::StatusUpdate => prop_oneof![
                    Just(json!({"status": "started"})),
                    "[a-z]{1,8}".prop_map(|s| json!({ "status": s })),
                ]
                .boxed(),
                EventKind::Completion => prop_oneof![
                    Just(json!({"status": "complete"})),
                    Just(json!({})),
                    "\\PC{0,6}".prop_map(|o| json!({ "output": o })),
                    Just(json!({"output": null, "status": null})),
                ]
                .boxed(),
                EventKind::Error => "[a-z_]{1,12}"
                    .prop_map(|t| json!({"error_type": t, "message": "m"}))
                    .boxed(),
                _ => json().boxed(),
            };
            prop_oneof![3 => typical, 1 => json()].boxed()
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                1 => Just(Op::Start),
                12 => kind().prop_flat_map(|k| payload(k).prop_map(move |v| Op::Push(k, v))),
            ]
        }

        fn finish() -> impl Strategy<Value = Finish> {
            prop_oneof![
                Just(Finish::Completed),
                ("[a-z_]{0,12}", "\\PC{0,12}").prop_map(|(error_type, message)| {
                    Finish::Failed {
                        error_type,
                        message,
                    }
                }),
                end_reason().prop_map(Finish::Stopped),
            ]
        }

        fn is_terminal(kind: EventKind) -> bool {
            matches!(kind, EventKind::Completion | EventKind::Error)
        }

        fn is_started(e: &Event) -> bool {
            e.event == EventKind::StatusUpdate && e.data.get("status") == Some(&json!("started"))
        }

        /// Any text: `any::<String>()` is printable characters only, so control characters,
        /// quotes and backslashes come from a pattern of their own.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[\\x00-\\x1f\"\\\\a-z\\x7f-\\u{a0}é\\u{2028}]{0,40}",
            ]
        }

        /// Any JSON with any strings (control characters, quotes, backslashes, non-ASCII).
        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![json(), text().prop_map(Value::from)];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((text(), inner), 0..4)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// The line writer's JSON is byte for byte serde_json's.
            #[test]
            fn lines_carry_serde_jsons_bytes(v in any_json()) {
                let mut mine = Vec::new();
                write_json(&mut mine, &v);
                let theirs = serde_json::to_vec(&v).unwrap();
                prop_assert_eq!(String::from_utf8_lossy(&mine), String::from_utf8_lossy(&theirs));
            }

            /// Runs the core's calls (a `start` first, as the hub does, then any pushes,
            /// stray `start`s included, then any finish, twice) and checks every rule.
            #[test]
            fn every_stream_obeys_the_rules(
                ops in prop::collection::vec(op(), 0..24),
                how in finish(),
                again in finish(),
            ) {
                let mut r = StreamRules::new();
                let mut out: Vec<Event> = Vec::new();
                let mut chunks = String::new();
                let mut terminal_seen = false;
                let started = r.start("req-1", "chat");
                prop_assert!(started.is_some());
                out.extend(started);
                for op in ops {
                    match op {
                        Op::Start => prop_assert!(r.start("req-1", "chat").is_none()),
                        Op::Push(kind, data) => {
                            let pushed = r.push(kind, data.clone());
                            if terminal_seen {
                                prop_assert_eq!(pushed, Pushed::AfterTerminal);
                                continue;
                            }
                            match pushed {
                                Pushed::Accepted(e) => {
                                    prop_assert_eq!(e.event, kind);
                                    prop_assert!(
                                        !matches!(kind, EventKind::Heartbeat | EventKind::End),
                                        "reserved kind accepted: {:?}", e
                                    );
                                    if kind == EventKind::Chunk
                                        && let Some(t) = data.get("text").and_then(Value::as_str)
                                    {
                                        chunks.push_str(t);
                                    }
                                    if is_terminal(kind) {
                                        terminal_seen = true;
                                        prop_assert!(e.data.is_object(), "terminal data: {:?}", e.data);
                                    } else {
                                        // Non-terminal events pass through unchanged.
                                        prop_assert_eq!(&e.data, &data);
                                    }
                                    if kind == EventKind::Completion {
                                        let own = data.get("output").filter(|o| !o.is_null());
                                        let want = own.cloned().unwrap_or_else(|| json!(chunks));
                                        prop_assert_eq!(&e.data["output"], &want);
                                        prop_assert!(!e.data["status"].is_null());
                                    }
                                    out.push(e);
                                }
                                Pushed::Reserved => prop_assert!(
                                    matches!(kind, EventKind::Heartbeat | EventKind::End)
                                        || (kind == EventKind::StatusUpdate
                                            && data.get("status") == Some(&json!("started"))),
                                    "{:?} refused as reserved", kind
                                ),
                                Pushed::AfterTerminal => {
                                    prop_assert!(false, "refused an event while open: {:?}", kind)
                                }
                                Pushed::Cut(e) => {
                                    prop_assert!(false, "cut without a bound on the text: {:?}", e)
                                }
                            }
                        }
                    }
                    if !terminal_seen {
                        prop_assert_eq!(r.output(), chunks.as_str());
                    }
                }
                let closing = r.finish(how.clone());
                prop_assert_eq!(closing.len(), if terminal_seen { 1 } else { 2 });
                out.extend(closing);
                prop_assert!(r.is_ended());
                prop_assert!(r.finish(again).is_empty(), "a second end");
                prop_assert_eq!(r.push(EventKind::Chunk, json!({"text": "late"})), Pushed::AfterTerminal);
                prop_assert!(r.start("req-1", "chat").is_none());

                // seq 0, 1, 2, ... without gaps; no heartbeat in the sequence.
                for (i, e) in out.iter().enumerate() {
                    prop_assert_eq!(e.seq, Some(i as u64), "{:?}", out);
                    prop_assert!(e.event != EventKind::Heartbeat);
                }
                prop_assert_eq!(r.next_seq(), out.len() as u64);

                // `started` first, with its metadata, and only there.
                prop_assert!(is_started(&out[0]));
                prop_assert_eq!(
                    &out[0].data["metadata"],
                    &json!({"request_id": "req-1", "route": "chat"})
                );
                prop_assert_eq!(out.iter().filter(|e| is_started(e)).count(), 1, "{:?}", out);

                // Exactly one `end`, last; exactly one completion or error, right before it.
                let n = out.len();
                prop_assert!(n >= 3);
                prop_assert_eq!(out.iter().filter(|e| e.event == EventKind::End).count(), 1);
                let end = &out[n - 1];
                prop_assert_eq!(end.event, EventKind::End);
                prop_assert_eq!(out.iter().filter(|e| is_terminal(e.event)).count(), 1);
                let terminal = &out[n - 2];
                prop_assert!(is_terminal(terminal.event), "{:?}", out);
                prop_assert!(terminal.data.is_object());

                // The end reason agrees with the terminal event (SPEC section 9, "Ends").
                let reason = end.end_reason().unwrap_or_default().to_string();
                match reason.as_str() {
                    "completed" => prop_assert_eq!(terminal.event, EventKind::Completion, "{:?}", out),
                    "cancelled" | "shutdown" => {
                        prop_assert_eq!(terminal.event, EventKind::Completion, "{:?}", out);
                        prop_assert_eq!(&terminal.data["status"], &json!(reason));
                        prop_assert_eq!(&terminal.data["output"], &json!(chunks));
                    }
                    "error" => prop_assert_eq!(terminal.event, EventKind::Error, "{:?}", out),
                    "timeout" | "slow_consumer" => {
                        prop_assert_eq!(terminal.event, EventKind::Error, "{:?}", out);
                        prop_assert_eq!(&terminal.data["error_type"], &json!(reason));
                    }
                    other => prop_assert!(false, "unknown end reason {:?}", other),
                }

                // A terminal written by the finish itself follows the finish.
                if !terminal_seen {
                    match &how {
                        Finish::Completed => {
                            prop_assert_eq!(reason.as_str(), "completed");
                            prop_assert_eq!(&terminal.data["status"], &json!("complete"));
                        }
                        Finish::Failed { error_type, message } => {
                            prop_assert_eq!(reason.as_str(), "error");
                            prop_assert_eq!(&terminal.data["error_type"], &json!(error_type));
                            prop_assert_eq!(&terminal.data["message"], &json!(message));
                        }
                        Finish::Stopped(r) => prop_assert_eq!(reason.as_str(), r.as_str()),
                    }
                }
                // A completion always carries the whole text when the engine set none.
                if terminal.event == EventKind::Completion && !terminal_seen {
                    prop_assert_eq!(&terminal.data["output"], &json!(chunks));
                }
            }

            /// A stream finished without ever being started still starts with `started`
            /// (the guard in `finish`), or at least never breaks seq or `end`.
            #[test]
            fn finish_without_start_keeps_seq_and_one_end(how in finish()) {
                let mut r = StreamRules::new();
                prop_assert_eq!(r.push(EventKind::Chunk, json!({"text": "x"})), Pushed::AfterTerminal);
                let out = r.finish(how);
                prop_assert_eq!(out.len(), 2);
                prop_assert_eq!(out[0].seq, Some(0));
                prop_assert_eq!(out[1].seq, Some(1));
                prop_assert_eq!(out[1].event, EventKind::End);
                prop_assert!(r.finish(Finish::Completed).is_empty());
            }

            /// A heartbeat is outside the sequence: no `seq`, none in its envelope.
            #[test]
            fn heartbeats_carry_no_seq(ms in any::<u64>()) {
                let hb = Event::heartbeat(ms);
                prop_assert_eq!(hb.seq, None);
                prop_assert_eq!(hb.end_reason(), None);
                let wire = serde_json::to_value(&hb).unwrap();
                prop_assert_eq!(wire, json!({"event": "heartbeat", "data": {"timestamp": ms}}));
            }

            /// The slow-consumer pair continues the subscriber's own numbering.
            #[test]
            fn slow_consumer_pair_is_contiguous(next in 0u64..u64::MAX - 1) {
                let [err, end] = slow_consumer_events(next);
                prop_assert_eq!(err.event, EventKind::Error);
                prop_assert_eq!(err.seq, Some(next));
                prop_assert_eq!(&err.data["error_type"], &json!("slow_consumer"));
                prop_assert_eq!(end.seq, Some(next + 1));
                prop_assert_eq!(end.end_reason(), Some("slow_consumer"));
            }
        }
    }

    #[test]
    fn envelope_shape() {
        let e = Event {
            event: EventKind::Chunk,
            seq: Some(3),
            data: json!({"text": "Hel"}),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"chunk","seq":3,"data":{"text":"Hel"}}"#
        );
        let hb = Event::heartbeat(5);
        assert_eq!(
            serde_json::to_string(&hb).unwrap(),
            r#"{"event":"heartbeat","data":{"timestamp":5}}"#
        );
    }
}
