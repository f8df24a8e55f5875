//! What a correct stream looks like, and the failures the report counts.
//!
//! The workload is the script engine's `{"options": {"chunks": N, "chunk_bytes": S}}`:
//! chunk `i` is S letters, letter `j` being `'a' + (i + j) % 26` (`generated_chunk` in
//! the server's `src/engine/script.rs`). [`NeutralCheck`] holds an HTTP stream (NDJSON
//! envelopes or SSE frames) to SPEC sections 1 and 3; [`SioCheck`] holds a Socket.IO
//! stream to the legacy `chat` vocabulary (ack, `chat_chunk`s, `chat_complete`). Both
//! compare texts in place against one precomputed alphabet run: no allocation per event.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

/// How a stream that did not check out failed; the report's "errors by kind".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// TCP connect failed or timed out.
    Connect,
    /// WebSocket or Engine.IO/Socket.IO handshake failed.
    Handshake,
    Io,
    /// The server closed the connection before the stream ended.
    Closed,
    /// The stream did not end within `--timeout`.
    Timeout,
    /// A response status other than 200.
    Http(u16),
    /// Bytes that are not HTTP, SSE, WebSocket or Engine.IO as expected.
    Protocol,
    /// Events out of order, missing, with the wrong text, or after the end.
    Garbled,
    /// The server sent an `error` event.
    ErrorEvent,
    /// The Socket.IO ack carried `{error}`.
    AckError,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Connect => f.write_str("connect"),
            Kind::Handshake => f.write_str("handshake"),
            Kind::Io => f.write_str("io"),
            Kind::Closed => f.write_str("closed"),
            Kind::Timeout => f.write_str("timeout"),
            Kind::Http(status) => write!(f, "http_{status}"),
            Kind::Protocol => f.write_str("protocol"),
            Kind::Garbled => f.write_str("garbled"),
            Kind::ErrorEvent => f.write_str("error_event"),
            Kind::AckError => f.write_str("ack_error"),
        }
    }
}

/// Why a stream did not check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
        }
    }

    pub fn garbled(detail: impl Into<String>) -> Failure {
        Failure::new(Kind::Garbled, detail)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// The stream every request asks for.
#[derive(Debug, Clone)]
pub struct Expect {
    pub chunks: u64,
    pub chunk_bytes: usize,
    /// `abc…zabc…`, `chunk_bytes + 26` long: chunk `i` is the window at `i % 26`.
    run: Vec<u8>,
}

impl Expect {
    pub fn new(chunks: u64, chunk_bytes: usize) -> Expect {
        Expect {
            chunks,
            chunk_bytes,
            run: (0..chunk_bytes + 26)
                .map(|j| b'a' + (j % 26) as u8)
                .collect(),
        }
    }

    /// The text of chunk `i`.
    pub fn chunk(&self, i: u64) -> &[u8] {
        let at = (i % 26) as usize;
        self.run.get(at..at + self.chunk_bytes).unwrap_or_default()
    }

    /// Whether `output` is the concatenation of all chunks.
    pub fn is_output(&self, output: &[u8]) -> bool {
        if self.chunk_bytes == 0 {
            return output.is_empty();
        }
        output.len() as u64 == self.text_bytes()
            && output
                .chunks(self.chunk_bytes)
                .zip(0..)
                .all(|(piece, i)| piece == self.chunk(i))
    }

    /// Chunk text bytes in one stream.
    pub fn text_bytes(&self) -> u64 {
        self.chunks.saturating_mul(self.chunk_bytes as u64)
    }

    /// Events of a correct HTTP stream: started, N chunks, completion, end.
    pub fn http_events(&self) -> u64 {
        self.chunks + 3
    }

    /// Events of a correct Socket.IO stream: N `chat_chunk`, one `chat_complete`.
    pub fn sio_events(&self) -> u64 {
        self.chunks + 1
    }
}

/// The fields of an event's `data` the checks read (others are skipped unparsed).
#[derive(Debug, Default, Deserialize)]
pub struct Data<'a> {
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub output: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub error_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
}

/// A neutral envelope (one NDJSON line): `{"event", "seq", "data"}`.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(borrow, default)]
    pub data: Data<'a>,
}

/// What an accepted event meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A heartbeat: allowed, not part of the stream.
    Ignored,
    Accepted,
    /// The first chunk (for the first-chunk latency).
    FirstChunk,
    /// The stream is complete and correct.
    Done,
}

/// Shows the start of a text for a failure reason.
fn preview(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.chars().count() > 24 {
        format!("{:?}…", s.chars().take(24).collect::<String>())
    } else {
        format!("{s:?}")
    }
}

fn chunk_mismatch(i: u64, want: &[u8], got: Option<&str>) -> Failure {
    match got {
        None => Failure::garbled(format!("chunk {i}: no text")),
        Some(got) => Failure::garbled(format!(
            "chunk {i}: expected {} ({} bytes), got {} ({} bytes)",
            preview(want),
            want.len(),
            preview(got.as_bytes()),
            got.len()
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Chunks,
    End,
    Ended,
}

/// An HTTP stream held to the stream rules: `status_update` started first, `seq` from 0
/// up by one, exactly N chunks with the right texts, `completion` complete with their
/// concatenation, `end` completed, nothing after.
#[derive(Debug)]
pub struct NeutralCheck<'e> {
    expect: &'e Expect,
    phase: Phase,
    next_seq: u64,
    chunks: u64,
    /// Events accepted so far (heartbeats excluded).
    pub valid: u64,
}

impl<'e> NeutralCheck<'e> {
    pub fn new(expect: &'e Expect) -> NeutralCheck<'e> {
        NeutralCheck {
            expect,
            phase: Phase::Start,
            next_seq: 0,
            chunks: 0,
            valid: 0,
        }
    }

    pub fn on_event(
        &mut self,
        event: &str,
        seq: Option<u64>,
        data: &Data<'_>,
    ) -> Result<Step, Failure> {
        if self.phase == Phase::Ended {
            return Err(Failure::garbled(format!("`{event}` after `end`")));
        }
        if event == "heartbeat" {
            return Ok(Step::Ignored);
        }
        if seq != Some(self.next_seq) {
            return Err(Failure::garbled(format!(
                "`{event}` has seq {}, expected {}",
                seq.map_or("none".to_string(), |s| s.to_string()),
                self.next_seq
            )));
        }
        if event == "error" {
            return Err(Failure::new(
                Kind::ErrorEvent,
                format!(
                    "after {} chunks: {}: {}",
                    self.chunks,
                    data.error_type.as_deref().unwrap_or("?"),
                    data.message.as_deref().unwrap_or("")
                ),
            ));
        }
        let step = match (self.phase, event) {
            (Phase::Start, "status_update") => {
                if data.status.as_deref() != Some("started") {
                    return Err(Failure::garbled(format!(
                        "first status_update is {:?}, not started",
                        data.status
                    )));
                }
                self.phase = Phase::Chunks;
                Step::Accepted
            }
            (Phase::Start, _) => {
                return Err(Failure::garbled(format!(
                    "first event is `{event}`, not status_update"
                )));
            }
            (Phase::Chunks, "chunk") => {
                if self.chunks >= self.expect.chunks {
                    return Err(Failure::garbled(format!(
                        "more than {} chunks",
                        self.expect.chunks
                    )));
                }
                let want = self.expect.chunk(self.chunks);
                if data.text.as_deref().map(str::as_bytes) != Some(want) {
                    return Err(chunk_mismatch(self.chunks, want, data.text.as_deref()));
                }
                self.chunks += 1;
                if self.chunks == 1 {
                    Step::FirstChunk
                } else {
                    Step::Accepted
                }
            }
            (Phase::Chunks, "completion") => {
                if self.chunks != self.expect.chunks {
                    return Err(Failure::garbled(format!(
                        "completion after {} chunks, expected {}",
                        self.chunks, self.expect.chunks
                    )));
                }
                if data.status.as_deref() != Some("complete") {
                    return Err(Failure::garbled(format!(
                        "completion status {:?}, not complete",
                        data.status
                    )));
                }
                match data.output.as_deref() {
                    Some(out) if self.expect.is_output(out.as_bytes()) => {}
                    Some(out) => {
                        return Err(Failure::garbled(format!(
                            "completion output is not the chunks' concatenation ({} bytes, expected {})",
                            out.len(),
                            self.expect.text_bytes()
                        )));
                    }
                    None => return Err(Failure::garbled("completion without output")),
                }
                self.phase = Phase::End;
                Step::Accepted
            }
            (Phase::End, "end") => {
                if data.reason.as_deref() != Some("completed") {
                    return Err(Failure::garbled(format!(
                        "end reason {:?}, not completed",
                        data.reason
                    )));
                }
                self.phase = Phase::Ended;
                Step::Done
            }
            (_, "end") => {
                return Err(Failure::garbled(format!(
                    "`end` ({}) after {} chunks, before a completion",
                    data.reason.as_deref().unwrap_or("?"),
                    self.chunks
                )));
            }
            (_, other) => {
                return Err(Failure::garbled(format!(
                    "unexpected `{other}` after {} chunks",
                    self.chunks
                )));
            }
        };
        self.next_seq += 1;
        self.valid += 1;
        Ok(step)
    }
}

/// The payload fields of the legacy `chat` events the checks read.
#[derive(Debug, Default, Deserialize)]
pub struct SioPayload<'a> {
    #[serde(borrow, default)]
    pub chunk: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub full_response: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub error_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
}

/// The arguments of a Socket.IO event packet: `["name", {payload}]`.
#[derive(Debug, Deserialize)]
pub struct SioEvent<'a>(
    #[serde(borrow)] pub Cow<'a, str>,
    #[serde(borrow)] pub SioPayload<'a>,
);

/// The legacy event names of the `chat` route.
pub const SIO_CHUNK: &str = "chat_chunk";
pub const SIO_COMPLETE: &str = "chat_complete";
pub const SIO_ERROR: &str = "error";

/// A Socket.IO stream held to the `chat` vocabulary: the ack `{request_id}`, N
/// `chat_chunk` with the right texts in order, one `chat_complete` with their
/// concatenation. Done once both the ack and `chat_complete` arrived.
#[derive(Debug)]
pub struct SioCheck<'e> {
    expect: &'e Expect,
    chunks: u64,
    acked: bool,
    completed: bool,
    pub valid: u64,
}

impl<'e> SioCheck<'e> {
    pub fn new(expect: &'e Expect) -> SioCheck<'e> {
        SioCheck {
            expect,
            chunks: 0,
            acked: false,
            completed: false,
            valid: 0,
        }
    }

    pub fn acked(&self) -> bool {
        self.acked
    }

    /// The ack's arguments (a JSON array).
    pub fn on_ack(&mut self, args: &str) -> Result<Step, Failure> {
        let parsed: Result<Vec<serde_json::Value>, _> = serde_json::from_str(args);
        let first = match parsed {
            Ok(v) => v.into_iter().next(),
            Err(e) => return Err(Failure::new(Kind::Protocol, format!("ack {args:?}: {e}"))),
        };
        match first {
            Some(v) if v.get("request_id").is_some() => {}
            Some(v) if v.get("error").is_some() => {
                let e = &v["error"];
                return Err(Failure::new(
                    Kind::AckError,
                    format!(
                        "{}: {}",
                        e.get("error_type").and_then(|t| t.as_str()).unwrap_or("?"),
                        e.get("message").and_then(|t| t.as_str()).unwrap_or("")
                    ),
                ));
            }
            _ => {
                return Err(Failure::new(
                    Kind::Protocol,
                    format!("unexpected ack {args}"),
                ));
            }
        }
        if self.acked {
            return Err(Failure::new(Kind::Protocol, "a second ack"));
        }
        self.acked = true;
        Ok(if self.completed {
            Step::Done
        } else {
            Step::Accepted
        })
    }

    pub fn on_event(&mut self, name: &str, p: &SioPayload<'_>) -> Result<Step, Failure> {
        if self.completed {
            return Err(Failure::garbled(format!("`{name}` after {SIO_COMPLETE}")));
        }
        match name {
            SIO_CHUNK => {
                if self.chunks >= self.expect.chunks {
                    return Err(Failure::garbled(format!(
                        "more than {} {SIO_CHUNK}",
                        self.expect.chunks
                    )));
                }
                let want = self.expect.chunk(self.chunks);
                if p.chunk.as_deref().map(str::as_bytes) != Some(want) {
                    return Err(chunk_mismatch(self.chunks, want, p.chunk.as_deref()));
                }
                self.chunks += 1;
                self.valid += 1;
                Ok(if self.chunks == 1 {
                    Step::FirstChunk
                } else {
                    Step::Accepted
                })
            }
            SIO_COMPLETE => {
                if self.chunks != self.expect.chunks {
                    return Err(Failure::garbled(format!(
                        "{SIO_COMPLETE} after {} chunks, expected {}",
                        self.chunks, self.expect.chunks
                    )));
                }
                match p.full_response.as_deref() {
                    Some(full) if self.expect.is_output(full.as_bytes()) => {}
                    Some(full) => {
                        return Err(Failure::garbled(format!(
                            "full_response is not the chunks' concatenation ({} bytes, expected {})",
                            full.len(),
                            self.expect.text_bytes()
                        )));
                    }
                    None => {
                        return Err(Failure::garbled(format!(
                            "{SIO_COMPLETE} without full_response"
                        )));
                    }
                }
                self.completed = true;
                self.valid += 1;
                Ok(if self.acked {
                    Step::Done
                } else {
                    Step::Accepted
                })
            }
            SIO_ERROR => Err(Failure::new(
                Kind::ErrorEvent,
                format!(
                    "after {} chunks: {}: {}",
                    self.chunks,
                    p.error_type.as_deref().unwrap_or("?"),
                    p.message.as_deref().unwrap_or("")
                ),
            )),
            other => Err(Failure::garbled(format!(
                "unexpected event `{other}` after {} chunks",
                self.chunks
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's `generated_chunk`, copied from src/engine/script.rs.
    fn generated_chunk(i: u64, len: u64) -> String {
        (0..len)
            .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
            .collect()
    }

    #[test]
    fn chunk_texts_match_the_script_engine() {
        for s in [1usize, 3, 16, 26, 27, 100] {
            let e = Expect::new(60, s);
            let mut all = String::new();
            for i in 0..60 {
                assert_eq!(
                    e.chunk(i),
                    generated_chunk(i, s as u64).as_bytes(),
                    "i={i} s={s}"
                );
                all.push_str(&generated_chunk(i, s as u64));
            }
            assert!(e.is_output(all.as_bytes()));
            all.pop();
            assert!(!e.is_output(all.as_bytes()));
        }
    }

    fn lines(n: u64, s: u64) -> Vec<String> {
        let mut v = vec![r#"{"event":"status_update","seq":0,"data":{"status":"started","metadata":{"request_id":"r","route":"chat"}}}"#.to_string()];
        let mut out = String::new();
        for i in 0..n {
            let t = generated_chunk(i, s);
            out.push_str(&t);
            v.push(format!(
                r#"{{"event":"chunk","seq":{},"data":{{"text":"{t}"}}}}"#,
                i + 1
            ));
        }
        v.push(format!(
            r#"{{"event":"completion","seq":{},"data":{{"status":"complete","output":"{out}"}}}}"#,
            n + 1
        ));
        v.push(format!(
            r#"{{"event":"end","seq":{},"data":{{"reason":"completed"}}}}"#,
            n + 2
        ));
        v
    }

    fn run(expect: &Expect, lines: &[String]) -> Result<Vec<Step>, Failure> {
        let mut c = NeutralCheck::new(expect);
        let mut steps = Vec::new();
        for l in lines {
            let env: Envelope =
                serde_json::from_str(l).map_err(|e| Failure::garbled(e.to_string()))?;
            steps.push(c.on_event(&env.event, env.seq, &env.data)?);
        }
        Ok(steps)
    }

    #[test]
    fn a_correct_stream_checks_out() {
        let e = Expect::new(3, 5);
        let mut l = lines(3, 5);
        l.insert(2, r#"{"event":"heartbeat","data":{"timestamp":1}}"#.into());
        let steps = run(&e, &l).unwrap();
        use Step::*;
        assert_eq!(
            steps,
            [
                Accepted, FirstChunk, Ignored, Accepted, Accepted, Accepted, Done
            ]
        );
        // other key orders and spacing (Python's json.dumps) parse the same
        let spaced = r#"{"seq": 0, "data": {"metadata": {}, "status": "started"}, "event": "status_update"}"#;
        let mut l2 = lines(3, 5);
        l2[0] = spaced.into();
        assert!(run(&e, &l2).is_ok());
    }

    #[test]
    fn every_kind_of_damage_is_caught() {
        let e = Expect::new(3, 5);
        let good = lines(3, 5);
        let fails = |l: Vec<String>| run(&e, &l).unwrap_err();
        // a lost chunk
        let mut l = good.clone();
        l.remove(2);
        assert_eq!(fails(l).kind, Kind::Garbled);
        // a garbled chunk text
        let mut l = good.clone();
        l[2] = l[2].replace("bcdef", "bcdeX");
        assert!(fails(l).detail.contains("chunk 1"));
        // wrong size
        assert!(run(&Expect::new(3, 4), &good).is_err());
        assert!(run(&Expect::new(4, 5), &good).is_err());
        assert!(run(&Expect::new(2, 5), &good).is_err());
        // swapped chunks (seq order)
        let mut l = good.clone();
        l.swap(1, 2);
        assert_eq!(fails(l).kind, Kind::Garbled);
        // something after end
        let mut l = good.clone();
        l.push(good[1].clone());
        assert!(fails(l).detail.contains("after `end`"));
        // an error event
        let mut l = good[..2].to_vec();
        l.push(
            r#"{"event":"error","seq":2,"data":{"error_type":"engine_error","message":"boom"}}"#
                .into(),
        );
        let f = fails(l);
        assert_eq!(f.kind, Kind::ErrorEvent);
        assert!(f.detail.contains("engine_error: boom"));
        // completion output altered
        let mut l = good.clone();
        l[4] = l[4].replace("abcde", "abcdf");
        assert!(fails(l).detail.contains("concatenation"));
        // not started first
        assert_eq!(fails(good[1..].to_vec()).kind, Kind::Garbled);
        let mut l = good.clone();
        l[0] = r#"{"event":"chunk","seq":0,"data":{"text":"abcde"}}"#.into();
        assert!(fails(l).detail.contains("first event"));
    }

    fn sio(name: &str, field: &str, text: &str) -> String {
        format!(
            r#"["{name}",{{"{field}":"{text}","session_id":null,"timestamp":"2026-01-01T00:00:00Z"}}]"#
        )
    }

    #[test]
    fn socketio_streams() {
        let e = Expect::new(2, 3);
        let mut c = SioCheck::new(&e);
        let step = |c: &mut SioCheck, raw: &str| {
            let ev: SioEvent = serde_json::from_str(raw).unwrap();
            c.on_event(&ev.0, &ev.1)
        };
        assert_eq!(c.on_ack(r#"[{"request_id":"x"}]"#), Ok(Step::Accepted));
        assert_eq!(
            step(&mut c, &sio("chat_chunk", "chunk", "abc")),
            Ok(Step::FirstChunk)
        );
        assert_eq!(
            step(&mut c, &sio("chat_chunk", "chunk", "bcd")),
            Ok(Step::Accepted)
        );
        assert_eq!(
            step(&mut c, &sio("chat_complete", "full_response", "abcbcd")),
            Ok(Step::Done)
        );
        assert_eq!(c.valid, 3);
        // events before the ack: done only once the ack is in
        let mut c = SioCheck::new(&e);
        step(&mut c, &sio("chat_chunk", "chunk", "abc")).unwrap();
        step(&mut c, &sio("chat_chunk", "chunk", "bcd")).unwrap();
        assert_eq!(
            step(&mut c, &sio("chat_complete", "full_response", "abcbcd")),
            Ok(Step::Accepted)
        );
        assert_eq!(c.on_ack(r#"[{"request_id":"x"}]"#), Ok(Step::Done));
        // failures
        let mut c = SioCheck::new(&e);
        assert_eq!(
            c.on_ack(r#"[{"error":{"error_type":"over_capacity","message":"m"}}]"#)
                .unwrap_err()
                .kind,
            Kind::AckError
        );
        let mut c = SioCheck::new(&e);
        assert_eq!(
            step(&mut c, &sio("chat_chunk", "chunk", "abd"))
                .unwrap_err()
                .kind,
            Kind::Garbled
        );
        let mut c = SioCheck::new(&e);
        step(&mut c, &sio("chat_chunk", "chunk", "abc")).unwrap();
        assert!(step(&mut c, &sio("chat_complete", "full_response", "abc")).is_err());
        let mut c = SioCheck::new(&e);
        let err = r#"["error",{"error_type":"engine_error","message":"failed","session_id":null}]"#;
        assert_eq!(step(&mut c, err).unwrap_err().kind, Kind::ErrorEvent);
    }
}
