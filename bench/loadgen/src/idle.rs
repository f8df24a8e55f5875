//! Idle connections: opens K of them (Socket.IO sockets that answer pings, SSE streams
//! of a long slow stream, or SSE session followers that only get heartbeats), holds
//! them, and reads the server's resident memory before, with them open, and after they
//! are closed: the memory one idle connection costs the server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::check::{Data, Failure, Kind};
use crate::frames::SseParser;
use crate::http::{self, HttpConn, HttpError};
use crate::net::Target;
use crate::procfs;
use crate::sio::SioSocket;
use crate::stats::KEEP_REASONS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdleTransport {
    /// Connected Socket.IO sockets over WebSocket, answering pings.
    Socketio,
    /// SSE responses of a stream that emits a chunk every `--idle-interval-ms`.
    Sse,
    /// SSE `GET /api/sessions/<id>/events` followers: no stream, heartbeats only.
    SseFollow,
}

impl IdleTransport {
    pub fn label(self) -> &'static str {
        match self {
            IdleTransport::Socketio => "socketio",
            IdleTransport::Sse => "sse",
            IdleTransport::SseFollow => "sse-follow",
        }
    }
}

#[derive(Debug)]
pub struct IdlePlan {
    pub target: Target,
    pub connections: usize,
    pub transport: IdleTransport,
    pub hold: Duration,
    pub route_path: String,
    /// Interval between the chunks of the `sse` idle stream.
    pub interval_ms: u64,
    /// How long the server gets to settle before memory is read.
    pub settle: Duration,
    pub connect_timeout: Duration,
    pub connect_gate: Semaphore,
    /// Failure reasons printed in the text report.
    pub show_reasons: usize,
}

/// What an idle connection saw while held.
#[derive(Debug, Default)]
struct Seen {
    pings: AtomicU64,
    heartbeats: AtomicU64,
    chunks: AtomicU64,
}

/// A connection's life: established or not, then (maybe) dropped while held.
enum Report {
    Up,
    Failed(Failure),
    Dropped(Failure),
}

/// An idle SSE response, read and checked loosely until closed.
async fn sse_open(plan: &IdlePlan, i: usize) -> Result<(HttpConn, SseParser), Failure> {
    let mut conn = HttpConn::connect(&plan.target)
        .await
        .map_err(|e| Failure::new(Kind::Connect, e.to_string()))?;
    let request = match plan.transport {
        IdleTransport::SseFollow => http::request(
            "GET",
            &format!(
                "/api/sessions/loadgen-idle-{}-{i}/events",
                std::process::id()
            ),
            &plan.target.authority,
            &[("Accept", "text/event-stream")],
            b"",
        ),
        _ => {
            let chunks = plan.hold.as_millis() as u64 / plan.interval_ms.max(1) + 120;
            let body = json!({"options": {"chunks": chunks, "chunk_bytes": 16, "interval_ms": plan.interval_ms}});
            http::request(
                "POST",
                &plan.route_path,
                &plan.target.authority,
                &[
                    ("Accept", "text/event-stream"),
                    ("Content-Type", "application/json"),
                ],
                body.to_string().as_bytes(),
            )
        }
    };
    let io = |e: HttpError| Failure::new(Kind::Io, e.to_string());
    conn.send(&request).await.map_err(io)?;
    let head = conn.read_head().await.map_err(io)?;
    if head.status != 200 {
        let mut body = Vec::new();
        let _ = conn.read_body_to_end(&mut body, 64 * 1024).await;
        return Err(Failure::new(
            Kind::Http(head.status),
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    let mut parser = SseParser::new(1 << 20);
    if plan.transport == IdleTransport::Sse {
        // Established once the stream's first event (status_update) arrived.
        loop {
            if !conn.read_body(parser.buf_for_append()).await.map_err(io)? {
                return Err(Failure::new(Kind::Closed, "the idle stream ended at once"));
            }
            if parser
                .next_frame()
                .map_err(|e| Failure::garbled(e.0))?
                .is_some()
            {
                break;
            }
        }
    }
    Ok((conn, parser))
}

/// Reads an idle SSE response until it fails; only heartbeats and chunks may come.
async fn sse_hold(conn: &mut HttpConn, parser: &mut SseParser, seen: &Seen) -> Failure {
    loop {
        match conn.read_body(parser.buf_for_append()).await {
            Ok(true) => {}
            Ok(false) => return Failure::new(Kind::Closed, "the server ended the idle response"),
            Err(e) => return Failure::new(Kind::Io, e.to_string()),
        }
        loop {
            match parser.next_frame() {
                Ok(None) => break,
                Err(e) => return Failure::garbled(e.0),
                Ok(Some(f)) => match f.event {
                    b"heartbeat" => {
                        seen.heartbeats.fetch_add(1, Ordering::Relaxed);
                    }
                    b"chunk" => {
                        seen.chunks.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        let data: Data = serde_json::from_slice(f.data).unwrap_or_default();
                        return Failure::new(
                            Kind::Closed,
                            format!(
                                "`{}` while idle ({})",
                                String::from_utf8_lossy(other),
                                data.error_type.or(data.reason).unwrap_or_default()
                            ),
                        );
                    }
                },
            }
        }
        seen.heartbeats
            .fetch_add(std::mem::take(&mut parser.comments), Ordering::Relaxed);
    }
}

async fn idle_connection(
    plan: Arc<IdlePlan>,
    i: usize,
    seen: Arc<Seen>,
    report: mpsc::UnboundedSender<Report>,
    mut close: watch::Receiver<bool>,
) {
    let open = async {
        let _permit = plan.connect_gate.acquire().await;
        match plan.transport {
            IdleTransport::Socketio => SioSocket::connect(&plan.target).await.map(Ok),
            _ => sse_open(&plan, i).await.map(Err),
        }
    };
    let opened = match tokio::time::timeout(plan.connect_timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new(
            Kind::Timeout,
            "not established within the connect timeout",
        )),
    };
    let mut conn = match opened {
        Ok(c) => c,
        Err(f) => {
            let _ = report.send(Report::Failed(f));
            return;
        }
    };
    let _ = report.send(Report::Up);
    let held = async {
        match &mut conn {
            Ok(sock) => sock
                .idle()
                .await
                .err()
                .unwrap_or_else(|| Failure::new(Kind::Closed, "socket ended")),
            Err((http, parser)) => sse_hold(http, parser, &seen).await,
        }
    };
    tokio::select! {
        f = held => { let _ = report.send(Report::Dropped(f)); }
        _ = close.wait_for(|c| *c) => {}
    }
    if let Ok(sock) = &conn {
        seen.pings.fetch_add(sock.pongs, Ordering::Relaxed);
    }
}

fn sample(pid: Option<u32>) -> Option<procfs::Sample> {
    pid.and_then(|p| procfs::sample(&p.to_string()).ok())
}

/// The figures of an idle run.
pub struct IdleOutcome {
    pub json: Value,
    pub text: String,
    pub ok: bool,
}

pub async fn run(plan: IdlePlan, server_pid: Option<u32>) -> IdleOutcome {
    let plan = Arc::new(plan);
    let k = plan.connections;
    let before = sample(server_pid);
    let seen = Arc::new(Seen::default());
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    let (close_tx, close_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let start = Instant::now();
    for i in 0..k {
        set.spawn(idle_connection(
            plan.clone(),
            i,
            seen.clone(),
            report_tx.clone(),
            close_rx.clone(),
        ));
    }
    drop(report_tx);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut note = |f: &Failure, when: &str| {
        *errors.entry(f.kind.to_string()).or_default() += 1;
        if reasons.len() < KEEP_REASONS {
            reasons.push(format!("{when}: {f}"));
        }
    };
    let (mut up, mut failed, mut dropped) = (0u64, 0u64, 0u64);
    while up + failed < k as u64 {
        match report_rx.recv().await {
            Some(Report::Up) => up += 1,
            Some(Report::Failed(f)) => {
                failed += 1;
                note(&f, "open");
            }
            Some(Report::Dropped(f)) => {
                dropped += 1;
                note(&f, "held");
            }
            None => break,
        }
    }
    let open_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(plan.settle).await;
    let opened = sample(server_pid);
    // Hold, counting connections the server drops meanwhile.
    let hold_end = tokio::time::Instant::now() + plan.hold;
    loop {
        tokio::select! {
            r = report_rx.recv() => match r {
                Some(Report::Dropped(f)) => { dropped += 1; note(&f, "held"); }
                Some(_) => {}
                None => { tokio::time::sleep_until(hold_end).await; break; }
            },
            _ = tokio::time::sleep_until(hold_end) => break,
        }
    }
    let held = sample(server_pid);
    let _ = close_tx.send(true);
    while set.join_next().await.is_some() {}
    while let Ok(r) = report_rx.try_recv() {
        if let Report::Dropped(f) = r {
            dropped += 1;
            note(&f, "held");
        }
    }
    tokio::time::sleep(plan.settle).await;
    let closed = sample(server_pid);

    let per_conn = |a: Option<procfs::Sample>| match (before, a) {
        (Some(b), Some(a)) if up > 0 => Some((a.rss_kb as f64 - b.rss_kb as f64) / up as f64),
        _ => None,
    };
    let hold_cpu = match (opened, held) {
        (Some(o), Some(h)) => Some(h.cpu_secs - o.cpu_secs),
        _ => None,
    };
    let rss = |s: Option<procfs::Sample>| s.map(|s| s.rss_kb);
    let json = json!({
        "mode": "idle",
        "idle_transport": plan.transport.label(),
        "connections": k,
        "connections_open": up,
        "failed": failed,
        "dropped_while_held": dropped,
        "open_secs": crate::stats::round(open_secs, 3),
        "hold_secs": plan.hold.as_secs_f64(),
        "pings_answered": seen.pings.load(Ordering::Relaxed),
        "heartbeats_seen": seen.heartbeats.load(Ordering::Relaxed),
        "chunks_seen": seen.chunks.load(Ordering::Relaxed),
        "server_pid": server_pid,
        "rss_before_kib": rss(before),
        "rss_open_kib": rss(opened),
        "rss_after_hold_kib": rss(held),
        "rss_after_close_kib": rss(closed),
        "vm_hwm_kib": closed.map(|s| s.hwm_kb),
        "per_connection_kib": per_conn(opened).map(|v| crate::stats::round(v, 2)),
        "per_connection_after_hold_kib": per_conn(held).map(|v| crate::stats::round(v, 2)),
        "server_cpu_secs_while_held": hold_cpu.map(|v| crate::stats::round(v, 3)),
        "errors": errors,
        "reasons": reasons,
    });
    let mut text = format!(
        "idle {}: {up} of {k} connections established in {open_secs:.2} s, {failed} failed, {dropped} dropped while held {:.0} s\n",
        plan.transport.label(),
        plan.hold.as_secs_f64()
    );
    text.push_str(&format!(
        "pings answered {}, heartbeats seen {}, chunks seen {}\n",
        seen.pings.load(Ordering::Relaxed),
        seen.heartbeats.load(Ordering::Relaxed),
        seen.chunks.load(Ordering::Relaxed)
    ));
    match (server_pid, before, opened, held, closed) {
        (Some(pid), Some(b), Some(o), Some(h), Some(c)) => {
            let mb = |kb: u64| kb as f64 / 1024.0;
            text.push_str(&format!(
                "server pid {pid}: rss before {:.1} MiB, open {:.1} MiB, after hold {:.1} MiB, after close {:.1} MiB (VmHWM {:.1} MiB)\n",
                mb(b.rss_kb), mb(o.rss_kb), mb(h.rss_kb), mb(c.rss_kb), mb(c.hwm_kb)
            ));
            text.push_str(&format!(
                "rss per connection: {:.1} KiB open, {:.1} KiB after hold; server cpu while held {:.3} s\n",
                per_conn(Some(o)).unwrap_or(0.0),
                per_conn(Some(h)).unwrap_or(0.0),
                hold_cpu.unwrap_or(0.0)
            ));
        }
        (Some(pid), ..) => text.push_str(&format!("server pid {pid}: /proc not readable\n")),
        _ => text.push_str("no --server-pid: no memory figures\n"),
    }
    if !errors.is_empty() {
        text.push_str(&format!("errors: {errors:?}\n"));
        for r in reasons.iter().take(plan.show_reasons) {
            text.push_str(&format!("  {r}\n"));
        }
    }
    IdleOutcome {
        json,
        text,
        ok: failed == 0 && dropped == 0,
    }
}
