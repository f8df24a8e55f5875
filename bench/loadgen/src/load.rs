//! The load: C clients, each running streams one after another on its own connection
//! (HTTP keep-alive, one WebSocket, or one long-polling session), every stream checked
//! by `check.rs`; then the figures of the run, with the server's CPU and memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit, oneshot};
use tokio::task::JoinSet;

use crate::check::{Data, Envelope, Expect, Failure, Kind, NeutralCheck, SioCheck, Step};
use crate::frames::{FrameError, Lines, SseFrame, SseParser};
use crate::http::{HttpConn, HttpError};
use crate::net::Target;
use crate::procfs;
use crate::sio::{SioPolling, SioSocket};
use crate::stats::{self, Stats, Timing};

/// Longest NDJSON line or SSE line accepted (a completion of 100 000 × 64 kB chunks
/// would not fit; the load generator is for benchmark sizes).
pub const MAX_LINE: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Ndjson,
    Sse,
    Socketio,
    SocketioPolling,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::Ndjson,
        Transport::Sse,
        Transport::Socketio,
        Transport::SocketioPolling,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Transport::Ndjson => "ndjson",
            Transport::Sse => "sse",
            Transport::Socketio => "socketio",
            Transport::SocketioPolling => "socketio-polling",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn expected_events(self, e: &Expect) -> u64 {
        match self {
            Transport::Ndjson | Transport::Sse => e.http_events(),
            Transport::Socketio | Transport::SocketioPolling => e.sio_events(),
        }
    }
}

/// When a client stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this many streams.
    Requests(u64),
    /// When a stream ends after this instant.
    Deadline(Instant),
}

/// Everything the clients share, prepared once.
#[derive(Debug)]
pub struct Plan {
    pub target: Target,
    pub expect: Expect,
    /// The whole NDJSON request (head and body).
    pub ndjson_request: Vec<u8>,
    /// The whole SSE request.
    pub sse_request: Vec<u8>,
    /// The Socket.IO event arguments: `["chat_message",{"options":{…}}]`.
    pub sio_args: String,
    pub stream_timeout: Duration,
    pub until: Until,
    /// Bounds connections being opened at once (a SYN flood would only measure the
    /// listen backlog).
    pub connect_gate: Semaphore,
}

impl Plan {
    fn more(&self, done: u64) -> bool {
        match self.until {
            Until::Requests(r) => done < r,
            Until::Deadline(d) => Instant::now() < d,
        }
    }

    /// After a failed connect: in a timed run, do not spin on a refusing server.
    async fn pause_after_connect_error(&self) {
        if let Until::Deadline(_) = self.until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The per-transport counters, recorded once per stream.
#[derive(Debug, Default)]
pub struct Recorder {
    per: [Mutex<Stats>; 4],
}

impl Recorder {
    fn with(&self, t: Transport, f: impl FnOnce(&mut Stats)) {
        if let Some(m) = self.per.get(t.index()) {
            let mut guard = m.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard);
        }
    }

    fn ok(&self, t: Transport, timing: &Timing, events: u64, expect: &Expect, wire: u64) {
        self.with(t, |s| {
            s.ok(
                timing.first_chunk_us(),
                timing.stream_us(),
                events,
                expect.chunks,
                expect.text_bytes(),
            );
            s.wire_bytes += wire;
        });
    }

    fn fail(&self, t: Transport, f: &Failure, valid: u64, expect: &Expect, wire: u64) {
        self.with(t, |s| {
            s.fail(f, valid, t.expected_events(expect), t.label());
            s.wire_bytes += wire;
        });
    }

    pub fn snapshot(&self, t: Transport) -> Stats {
        self.per
            .get(t.index())
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }
}

/// Runs one client to the end of the plan.
pub async fn client(plan: Arc<Plan>, t: Transport, rec: Arc<Recorder>) {
    match t {
        Transport::Ndjson | Transport::Sse => http_client(&plan, t, &rec).await,
        Transport::Socketio | Transport::SocketioPolling => sio_client(&plan, t, &rec).await,
    }
}

enum StreamError {
    /// A reused keep-alive connection was found closed before any response byte.
    Stale,
    Failed(Failure),
}

impl From<Failure> for StreamError {
    fn from(f: Failure) -> Self {
        StreamError::Failed(f)
    }
}

impl From<FrameError> for StreamError {
    fn from(e: FrameError) -> Self {
        StreamError::Failed(Failure::garbled(e.0))
    }
}

fn http_error(e: HttpError) -> StreamError {
    match e {
        HttpError::Closed {
            before_response: true,
        } => StreamError::Stale,
        HttpError::Closed { .. } => StreamError::Failed(Failure::new(Kind::Closed, e.to_string())),
        HttpError::Io(_) => StreamError::Failed(Failure::new(Kind::Io, e.to_string())),
        HttpError::Protocol(_) => StreamError::Failed(Failure::new(Kind::Protocol, e.to_string())),
    }
}

fn preview(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.chars().count() > 80 {
        format!("{:?}…", s.chars().take(80).collect::<String>())
    } else {
        format!("{s:?}")
    }
}

/// Checks one NDJSON line.
fn ndjson_line(line: &[u8], check: &mut NeutralCheck<'_>) -> Result<Step, Failure> {
    if line.is_empty() {
        return Ok(Step::Ignored);
    }
    let env: Envelope = serde_json::from_slice(line)
        .map_err(|e| Failure::garbled(format!("line {}: {e}", preview(line))))?;
    check.on_event(&env.event, env.seq, &env.data)
}

/// Checks one SSE frame: `id: <seq>` (or `<request_id>:<seq>`), `event: <type>`,
/// `data: <data>`; a frame without `event:` carries a whole envelope in its data.
fn sse_frame(f: &SseFrame<'_>, check: &mut NeutralCheck<'_>) -> Result<Step, Failure> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Failure::garbled(format!("SSE {what}: {e}"));
    if f.event.is_empty() {
        let env: Envelope = serde_json::from_slice(f.data).map_err(|e| bad("data", &e))?;
        return check.on_event(&env.event, env.seq, &env.data);
    }
    let event = std::str::from_utf8(f.event).map_err(|e| bad("event", &e))?;
    let seq = match f.id {
        None => None,
        Some(id) => {
            let id = std::str::from_utf8(id).map_err(|e| bad("id", &e))?;
            let seq = id.rsplit(':').next().unwrap_or(id);
            Some(seq.parse::<u64>().map_err(|e| bad("id", &e))?)
        }
    };
    let data: Data = serde_json::from_slice(f.data)
        .map_err(|e| Failure::garbled(format!("SSE data {}: {e}", preview(f.data))))?;
    check.on_event(event, seq, &data)
}

/// One HTTP stream on `conn`: request, head, body to its end (the `end` event and the
/// body terminator; anything after `end` is garbled).
async fn http_stream(
    conn: &mut HttpConn,
    request: &[u8],
    sse: bool,
    check: &mut NeutralCheck<'_>,
    lines: &mut Lines,
    frames: &mut SseParser,
    permit: &mut Option<SemaphorePermit<'_>>,
) -> Result<Timing, StreamError> {
    let start = Instant::now();
    conn.send(request).await.map_err(http_error)?;
    let head = conn.read_head().await.map_err(http_error)?;
    // The server has accepted the connection: the next one may be opened.
    permit.take();
    if head.status != 200 {
        let mut body = Vec::new();
        let _ = conn.read_body_to_end(&mut body, 64 * 1024).await;
        return Err(Failure::new(
            Kind::Http(head.status),
            String::from_utf8_lossy(&body).into_owned(),
        )
        .into());
    }
    let mut first_chunk = None;
    let mut end = None;
    loop {
        let buf = if sse {
            frames.buf_for_append()
        } else {
            lines.buf_for_append()
        };
        let more = match conn.read_body(buf).await {
            Ok(more) => more,
            Err(HttpError::Closed { .. }) => {
                return Err(Failure::new(
                    Kind::Closed,
                    format!(
                        "connection closed after {} events, before `end`",
                        check.valid
                    ),
                )
                .into());
            }
            Err(e) => return Err(http_error(e)),
        };
        loop {
            let step = if sse {
                match frames.next_frame()? {
                    Some(f) => sse_frame(&f, check)?,
                    None => break,
                }
            } else {
                match lines.next_line()? {
                    Some(line) => ndjson_line(line, check)?,
                    None => break,
                }
            };
            match step {
                Step::FirstChunk => first_chunk = Some(Instant::now()),
                Step::Done => end = Some(Instant::now()),
                Step::Accepted | Step::Ignored => {}
            }
        }
        if !more {
            break;
        }
    }
    let Some(end) = end else {
        return Err(Failure::new(
            Kind::Closed,
            format!("response ended after {} events, before `end`", check.valid),
        )
        .into());
    };
    if (sse && frames.pending()) || (!sse && !lines.pending().is_empty()) {
        return Err(Failure::garbled("an unfinished line after `end`").into());
    }
    Ok(Timing {
        start,
        first_chunk,
        end,
    })
}

async fn http_client(plan: &Plan, t: Transport, rec: &Recorder) {
    let sse = t == Transport::Sse;
    let request = if sse {
        &plan.sse_request
    } else {
        &plan.ndjson_request
    };
    let mut conn: Option<HttpConn> = None;
    let mut lines = Lines::new(MAX_LINE);
    let mut frames = SseParser::new(MAX_LINE);
    let mut done = 0;
    while plan.more(done) {
        done += 1;
        let mut retried = false;
        loop {
            let reused = conn.is_some();
            // Held until the first response head: a finished TCP handshake only means
            // the connection waits in the server's accept queue.
            let mut permit = None;
            let c = match conn.as_mut() {
                Some(c) => c,
                None => {
                    permit = plan.connect_gate.acquire().await.ok();
                    let connected = HttpConn::connect(&plan.target).await;
                    match connected {
                        Ok(c) => {
                            rec.with(t, |s| s.connections += 1);
                            conn.insert(c)
                        }
                        Err(e) => {
                            rec.fail(
                                t,
                                &Failure::new(Kind::Connect, e.to_string()),
                                0,
                                &plan.expect,
                                0,
                            );
                            plan.pause_after_connect_error().await;
                            break;
                        }
                    }
                }
            };
            lines.reset();
            frames.reset();
            let mut check = NeutralCheck::new(&plan.expect);
            let result = tokio::time::timeout(
                plan.stream_timeout,
                http_stream(
                    c,
                    request,
                    sse,
                    &mut check,
                    &mut lines,
                    &mut frames,
                    &mut permit,
                ),
            )
            .await;
            let wire = c.take_read();
            let keep = c.reusable();
            match result {
                Ok(Ok(timing)) => {
                    rec.ok(t, &timing, check.valid, &plan.expect, wire);
                    if !keep {
                        conn = None;
                    }
                }
                Ok(Err(StreamError::Stale)) if reused && !retried => {
                    rec.with(t, |s| {
                        s.reconnects += 1;
                        s.wire_bytes += wire;
                    });
                    conn = None;
                    retried = true;
                    continue;
                }
                Ok(Err(StreamError::Stale)) => {
                    let f = Failure::new(Kind::Closed, "connection closed before the response");
                    rec.fail(t, &f, check.valid, &plan.expect, wire);
                    conn = None;
                }
                Ok(Err(StreamError::Failed(f))) => {
                    rec.fail(t, &f, check.valid, &plan.expect, wire);
                    conn = None;
                }
                Err(_) => {
                    let f = Failure::new(
                        Kind::Timeout,
                        format!(
                            "no `end` within {:?} ({} events)",
                            plan.stream_timeout, check.valid
                        ),
                    );
                    rec.fail(t, &f, check.valid, &plan.expect, wire);
                    conn = None;
                }
            }
            break;
        }
    }
}

enum Socket {
    Ws(SioSocket),
    Polling(SioPolling),
}

impl Socket {
    async fn connect(t: Transport, target: &Target) -> Result<Socket, Failure> {
        match t {
            Transport::SocketioPolling => SioPolling::connect(target).await.map(Socket::Polling),
            _ => SioSocket::connect(target).await.map(Socket::Ws),
        }
    }

    async fn stream(&mut self, args: &str, check: &mut SioCheck<'_>) -> Result<Timing, Failure> {
        match self {
            Socket::Ws(s) => s.stream(args, check).await,
            Socket::Polling(s) => s.stream(args, check).await,
        }
    }

    /// Bytes received and pings answered since the last call.
    fn take_counts(&mut self) -> (u64, u64) {
        match self {
            Socket::Ws(s) => (s.take_read(), std::mem::take(&mut s.pongs)),
            Socket::Polling(s) => (s.take_read(), std::mem::take(&mut s.pongs)),
        }
    }
}

async fn sio_client(plan: &Plan, t: Transport, rec: &Recorder) {
    let mut socket: Option<Socket> = None;
    // Streams run on the current socket (a lost first emit points at the server's
    // connect handling, see README).
    let mut on_socket = 0u64;
    let mut done = 0;
    while plan.more(done) {
        done += 1;
        let s = match socket.as_mut() {
            Some(s) => s,
            None => {
                let connected = {
                    let _permit = plan.connect_gate.acquire().await;
                    tokio::time::timeout(plan.stream_timeout, Socket::connect(t, &plan.target))
                        .await
                };
                match connected {
                    Ok(Ok(s)) => {
                        rec.with(t, |st| st.connections += 1);
                        on_socket = 0;
                        socket.insert(s)
                    }
                    Ok(Err(f)) => {
                        rec.fail(t, &f, 0, &plan.expect, 0);
                        plan.pause_after_connect_error().await;
                        continue;
                    }
                    Err(_) => {
                        let f = Failure::new(
                            Kind::Handshake,
                            "no Socket.IO connect within the timeout",
                        );
                        rec.fail(t, &f, 0, &plan.expect, 0);
                        continue;
                    }
                }
            }
        };
        on_socket += 1;
        let mut check = SioCheck::new(&plan.expect);
        let result =
            tokio::time::timeout(plan.stream_timeout, s.stream(&plan.sio_args, &mut check)).await;
        let (wire, pongs) = s.take_counts();
        rec.with(t, |st| st.pongs += pongs);
        match result {
            Ok(Ok(timing)) => rec.ok(t, &timing, check.valid, &plan.expect, wire),
            Ok(Err(f)) => {
                rec.fail(t, &f, check.valid, &plan.expect, wire);
                socket = None;
            }
            Err(_) => {
                let f = Failure::new(
                    Kind::Timeout,
                    format!(
                        "no {} within {:?} ({} events, ack {}, stream {on_socket} on its socket)",
                        crate::check::SIO_COMPLETE,
                        plan.stream_timeout,
                        check.valid,
                        if check.acked() {
                            "received"
                        } else {
                            "not received"
                        }
                    ),
                );
                rec.fail(t, &f, check.valid, &plan.expect, wire);
                socket = None;
            }
        }
    }
}

/// The server's figures over a run.
#[derive(Debug, Clone)]
pub struct ServerFigures {
    pub pid: u32,
    pub before: procfs::Sample,
    pub after: procfs::Sample,
    pub rss_peak_sampled_kb: u64,
}

impl ServerFigures {
    pub fn cpu_secs(&self) -> f64 {
        (self.after.cpu_secs - self.before.cpu_secs).max(0.0)
    }

    pub fn json(&self, wall: f64, events: u64) -> Value {
        let cpu = self.cpu_secs();
        json!({
            "pid": self.pid,
            "cpu_secs": stats::round(cpu, 3),
            "cpu_percent_of_one_core": stats::round(if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 }, 1),
            "cpu_us_per_event": if events > 0 { stats::round(cpu * 1e6 / events as f64, 3) } else { 0.0 },
            "rss_start_kib": self.before.rss_kb,
            "rss_end_kib": self.after.rss_kb,
            "peak_rss_kib": self.rss_peak_sampled_kb,
            "vm_hwm_kib": self.after.hwm_kb,
        })
    }
}

/// Everything a load run measured.
pub struct Outcome {
    pub wall: Duration,
    pub per: Vec<(Transport, Stats)>,
    pub server: Option<ServerFigures>,
    pub loadgen_cpu_secs: f64,
    /// System-wide listen queue overflows during the run (None: not readable).
    pub listen_overflows: Option<u64>,
}

impl Outcome {
    pub fn total(&self) -> Stats {
        let mut all = Stats::default();
        for (_, s) in &self.per {
            all.merge(s);
        }
        all
    }
}

/// Polls the server's VmRSS every 100 ms until told to stop; the peak seen.
fn spawn_rss_sampler(pid: u32) -> (oneshot::Sender<()>, tokio::task::JoinHandle<u64>) {
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let pid = pid.to_string();
        let mut peak = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => peak = peak.max(procfs::rss_kb(&pid).unwrap_or(0)),
                _ = &mut stop_rx => break,
            }
        }
        peak.max(procfs::rss_kb(&pid).unwrap_or(0))
    });
    (stop_tx, handle)
}

/// Prints progress to stderr every `every` until stopped.
fn spawn_progress(rec: Arc<Recorder>, mix: Vec<Transport>, every: Duration) -> oneshot::Sender<()> {
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let mut all = Stats::default();
                    for t in &mix {
                        all.merge(&rec.snapshot(*t));
                    }
                    eprintln!(
                        "[{:>6.0} s] streams ok {} failed {}, events {}, lost/garbled {}",
                        start.elapsed().as_secs_f64(), all.streams_ok, all.streams_failed, all.events, all.lost
                    );
                }
                _ = &mut stop_rx => break,
            }
        }
    });
    stop_tx
}

/// Runs `clients` clients (transports assigned round-robin from `mix`) to the end of
/// the plan.
pub async fn run(
    plan: Arc<Plan>,
    mix: &[Transport],
    clients: usize,
    server_pid: Option<u32>,
    progress: Option<Duration>,
) -> Result<Outcome, String> {
    let server_before = match server_pid {
        Some(pid) => Some(procfs::sample(&pid.to_string())?),
        None => None,
    };
    let self_before = procfs::sample("self").unwrap_or_default();
    let overflows_before = procfs::listen_overflows();
    let rec = Arc::new(Recorder::default());
    let sampler = server_pid.map(spawn_rss_sampler);
    let progress = progress.map(|every| spawn_progress(rec.clone(), mix.to_vec(), every));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..clients {
        let t = mix
            .get(i % mix.len().max(1))
            .copied()
            .unwrap_or(Transport::Ndjson);
        set.spawn(client(plan.clone(), t, rec.clone()));
    }
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined {
            // A client task that panicked is a bug in the load generator: report it.
            let f = Failure::new(Kind::Io, format!("client task failed: {e}"));
            rec.fail(
                mix.first().copied().unwrap_or(Transport::Ndjson),
                &f,
                0,
                &plan.expect,
                0,
            );
        }
    }
    let wall = start.elapsed();
    if let Some(stop) = progress {
        let _ = stop.send(());
    }
    let rss_peak = match sampler {
        Some((stop, handle)) => {
            let _ = stop.send(());
            handle.await.unwrap_or(0)
        }
        None => 0,
    };
    let server = match (server_pid, server_before) {
        (Some(pid), Some(before)) => {
            let after = procfs::sample(&pid.to_string())
                .map_err(|e| format!("the server went away during the run: {e}"))?;
            Some(ServerFigures {
                pid,
                before,
                after,
                rss_peak_sampled_kb: rss_peak.max(after.rss_kb),
            })
        }
        _ => None,
    };
    let self_after = procfs::sample("self").unwrap_or_default();
    let mut per = Vec::new();
    for t in Transport::ALL {
        if mix.contains(&t) {
            per.push((t, rec.snapshot(t)));
        }
    }
    Ok(Outcome {
        wall,
        per,
        server,
        loadgen_cpu_secs: (self_after.cpu_secs - self_before.cpu_secs).max(0.0),
        listen_overflows: match (overflows_before, procfs::listen_overflows()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
    })
}
