//! Neutral events and the stream rules (SPEC section 1).
//!
//! Owns the event vocabulary, the envelope, and [`StreamRules`]: the one place that stamps
//! `seq`, puts `started` first and exactly one `end` last, and fills `completion.output`.
//! It knows nothing of transports, engines or the hub's storage.

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Fresh,
    Open,
    /// `completion` or `error` written; only `end` may follow.
    Terminal(EndReason),
    Ended,
}

/// The stream rules of SPEC section 1, as a small state machine. Every event of every
/// stream passes through one of these, whatever the engine.
#[derive(Debug)]
pub struct StreamRules {
    next_seq: Seq,
    phase: Phase,
    output: String,
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
        }
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
            EventKind::Chunk => {
                if let Some(text) = data.get("text").and_then(Value::as_str) {
                    self.output.push_str(text);
                }
            }
            EventKind::Completion => {
                let mut obj = into_object(data);
                if obj.get("output").is_none_or(Value::is_null) {
                    obj.insert("output".into(), Value::String(self.output.clone()));
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
                    Finish::Completed => (
                        EventKind::Completion,
                        json!({"status": "complete", "output": self.output}),
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
                        json!({"status": r.as_str(), "output": self.output}),
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

    /// The concatenated `chunk.text` so far.
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

    #[test]
    fn error_data_that_is_not_an_object_is_wrapped() {
        let mut r = StreamRules::new();
        r.start("r", "x");
        let Pushed::Accepted(e) = r.push(EventKind::Error, json!("bad")) else {
            panic!()
        };
        assert_eq!(e.data, json!({"value": "bad"}));
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
