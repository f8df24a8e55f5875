//! `switchyard-loadgen`: drives Switchyard (or a benchmark peer serving the same
//! workload) with C concurrent clients over NDJSON, SSE or Socket.IO, checks every event
//! of every stream, and reports throughput, latency, failures and the server's CPU and
//! memory. Exit code 0: every stream checked out; 1: a stream failed or an event was
//! lost or garbled; 2: usage error.
//!
//! Modules: `net` (target, connections, byte counting), `http` (the HTTP/1.1 client and
//! chunked decoding), `frames` (NDJSON lines, SSE frames), `sio` (the Engine.IO /
//! Socket.IO client), `check` (what a correct stream is), `stats` (histograms, counters,
//! tables), `procfs` (CPU and memory from /proc), `load` (the load run), `idle` (idle
//! connections and their memory), all in the library (`lib.rs`), which the bridge's
//! tests use too. This file parses arguments and prints the report.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use switchyard_loadgen::check::Expect;
use switchyard_loadgen::idle::{IdlePlan, IdleTransport};
use switchyard_loadgen::load::{self, Plan, Transport, Until};
use switchyard_loadgen::net::Target;
use switchyard_loadgen::{http, idle, procfs, stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Ndjson,
    Sse,
    Socketio,
    SocketioPolling,
    /// Clients spread round-robin over ndjson, sse, socketio and socketio-polling.
    Mixed,
}

/// Load generator for Switchyard: C clients × R streams of N chunks of S bytes over
/// NDJSON, SSE or Socket.IO, every event checked.
#[derive(Debug, Parser)]
#[command(name = "switchyard-loadgen", version, about, long_about = None)]
struct Cli {
    /// The server: http://host:port (no path).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// ndjson | sse | socketio | socketio-polling | mixed.
    #[arg(short = 't', long, value_enum, default_value = "ndjson")]
    transport: TransportArg,
    /// Concurrent clients.
    #[arg(short = 'c', long = "clients", default_value_t = 10)]
    clients: usize,
    /// Streams per client, one after another.
    #[arg(short = 'r', long = "requests", default_value_t = 10)]
    requests: u64,
    /// Instead of -r: each client runs streams until this many seconds have passed.
    #[arg(long, value_name = "SECS", conflicts_with = "requests")]
    duration: Option<f64>,
    /// Chunks per stream (script engine option `chunks`).
    #[arg(short = 'n', long = "chunks", default_value_t = 100)]
    chunks: u64,
    /// Bytes per chunk (script engine option `chunk_bytes`).
    #[arg(short = 's', long = "chunk-bytes", default_value_t = 16)]
    chunk_bytes: u64,
    /// Server process to measure (CPU from /proc/PID/stat, memory from /proc/PID/status).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// HTTP path of the route.
    #[arg(long, default_value = "/api/ai/chat/unified")]
    route_path: String,
    /// Socket.IO request event.
    #[arg(long, default_value = "chat_message")]
    event: String,
    /// Milliseconds between chunks (script engine option `interval_ms`; 0: as fast as
    /// the server goes).
    #[arg(long, value_name = "MS")]
    interval_ms: Option<u64>,
    /// A JSON object merged into the request's `options` after chunks/chunk_bytes (the
    /// check still expects -n and -s: use it to break streams on purpose, e.g.
    /// '{"fail_after":5}', or to add '{"interval_ms":10}').
    #[arg(long, value_name = "JSON")]
    options: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Runtime worker threads: 1 = a current-thread runtime (fastest when pinned to one
    /// core), more = a multi-thread runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds a stream (or a Socket.IO connect) may take before it counts as timed out.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    timeout: f64,
    /// Seconds a TCP connect may take.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    connect_timeout: f64,
    /// Connections being opened at once, at most (TCP connect up to the first response
    /// or the Socket.IO handshake). Keep it under the server's listen backlog (128 with
    /// tokio's TcpListener::bind), or a burst overflows the accept queue and the dropped
    /// SYNs are retried after 1 s.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.N (avoids ephemeral port
    /// exhaustion with tens of thousands of connections; loopback targets only).
    #[arg(long, value_name = "N", default_value_t = 1)]
    source_ips: u8,
    /// Failure reasons printed (the JSON keeps up to 20).
    #[arg(long, default_value_t = 5)]
    show_reasons: usize,
    /// Seconds between progress lines on stderr (default: every 10 s in --duration runs).
    #[arg(long, value_name = "SECS")]
    progress: Option<f64>,
    /// Idle mode: open this many idle connections, hold them, report server memory per
    /// connection.
    #[arg(long, value_name = "K")]
    idle: Option<usize>,
    /// Idle connections: socketio | sse (a slow stream) | sse-follow (session follower).
    #[arg(long, value_enum, default_value = "socketio")]
    idle_transport: IdleTransport,
    /// Seconds the idle connections are held.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    hold: f64,
    /// Chunk interval of the `sse` idle stream, ms.
    #[arg(long, default_value_t = 20_000)]
    idle_interval_ms: u64,
    /// Seconds the server gets to settle before its memory is read (idle mode).
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    settle: f64,
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("switchyard-loadgen: {message}");
    ExitCode::from(2)
}

fn secs(name: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!(
            "{name} must be a positive number of seconds, not {v}"
        ))
    }
}

/// The `options` of every request: chunks, chunk_bytes, then `--options` merged over.
fn request_options(cli: &Cli) -> Result<Value, String> {
    let mut options = Map::new();
    options.insert("chunks".into(), json!(cli.chunks));
    options.insert("chunk_bytes".into(), json!(cli.chunk_bytes));
    if let Some(ms) = cli.interval_ms {
        options.insert("interval_ms".into(), json!(ms));
    }
    if let Some(extra) = &cli.options {
        match serde_json::from_str::<Value>(extra) {
            Ok(Value::Object(extra)) => options.extend(extra),
            Ok(_) => return Err("--options must be a JSON object".into()),
            Err(e) => return Err(format!("--options is not JSON: {e}")),
        }
    }
    Ok(Value::Object(options))
}

fn warn_fd_limit(connections: usize, server_pid: Option<u32>) {
    if let Some(limit) = procfs::open_files_limit("self")
        && connections as u64 + 64 > limit
    {
        eprintln!(
            "switchyard-loadgen: warning: {connections} connections but an open-files limit of {limit}; raise it (ulimit -n)"
        );
    }
    if let Some(pid) = server_pid
        && let Some(limit) = procfs::open_files_limit(&pid.to_string())
        && connections as u64 + 64 > limit
    {
        eprintln!(
            "switchyard-loadgen: warning: the server (pid {pid}) has an open-files limit of {limit}, under {connections} connections"
        );
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let timeouts = secs("--timeout", cli.timeout)
        .and_then(|t| Ok((t, secs("--connect-timeout", cli.connect_timeout)?)));
    let (stream_timeout, connect_timeout) = match timeouts {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let target = match Target::parse(&cli.url, cli.source_ips, connect_timeout) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    if !cli.route_path.starts_with('/') {
        return usage("--route-path must start with /");
    }
    if cli.threads == 0 || cli.connect_concurrency == 0 {
        return usage("--threads and --connect-concurrency must be at least 1");
    }
    let runtime = if cli.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard-loadgen: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(k) = cli.idle {
        return idle_main(
            &cli,
            k,
            target,
            connect_timeout.max(stream_timeout),
            &runtime,
        );
    }
    if cli.clients == 0 {
        return usage("-c must be at least 1");
    }
    if cli.chunk_bytes == 0 {
        return usage("-s must be at least 1");
    }
    let until = match cli.duration {
        Some(d) => match secs("--duration", d) {
            Ok(d) => Until::Deadline(Instant::now() + d),
            Err(e) => return usage(e),
        },
        None => Until::Requests(cli.requests),
    };
    let progress = match (cli.progress, cli.duration) {
        (Some(p), _) => match secs("--progress", p) {
            Ok(p) => Some(p),
            Err(e) => return usage(e),
        },
        (None, Some(_)) => Some(Duration::from_secs(10)),
        (None, None) => None,
    };
    let options = match request_options(&cli) {
        Ok(o) => o,
        Err(e) => return usage(e),
    };
    let body = json!({ "options": options }).to_string();
    let json_headers = [("Content-Type", "application/json")];
    let sse_headers = [
        ("Content-Type", "application/json"),
        ("Accept", "text/event-stream"),
    ];
    let plan = Plan {
        ndjson_request: http::request(
            "POST",
            &cli.route_path,
            &target.authority,
            &json_headers,
            body.as_bytes(),
        ),
        sse_request: http::request(
            "POST",
            &cli.route_path,
            &target.authority,
            &sse_headers,
            body.as_bytes(),
        ),
        sio_args: json!([cli.event, { "options": options }]).to_string(),
        target,
        expect: Expect::new(cli.chunks, cli.chunk_bytes as usize),
        stream_timeout,
        until,
        connect_gate: Semaphore::new(cli.connect_concurrency),
    };
    let mix: Vec<Transport> = match cli.transport {
        TransportArg::Ndjson => vec![Transport::Ndjson],
        TransportArg::Sse => vec![Transport::Sse],
        TransportArg::Socketio => vec![Transport::Socketio],
        TransportArg::SocketioPolling => vec![Transport::SocketioPolling],
        TransportArg::Mixed => Transport::ALL.to_vec(),
    };
    warn_fd_limit(cli.clients, cli.server_pid);
    let outcome = runtime.block_on(load::run(
        Arc::new(plan),
        &mix,
        cli.clients,
        cli.server_pid,
        progress,
    ));
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("switchyard-loadgen: {e}");
            return ExitCode::from(1);
        }
    };
    let total = outcome.total();
    if cli.json {
        println!("{}", report_json(&cli, &outcome, &total));
    } else {
        print!("{}", report_text(&cli, &outcome, &total));
    }
    if total.streams_failed == 0 && total.lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn transport_label(t: TransportArg) -> &'static str {
    match t {
        TransportArg::Ndjson => "ndjson",
        TransportArg::Sse => "sse",
        TransportArg::Socketio => "socketio",
        TransportArg::SocketioPolling => "socketio-polling",
        TransportArg::Mixed => "mixed",
    }
}

fn report_json(cli: &Cli, o: &load::Outcome, total: &stats::Stats) -> Value {
    let wall = o.wall.as_secs_f64();
    let mut v = total.json(wall);
    if let Value::Object(m) = &mut v {
        let mut head = Map::new();
        head.insert("transport".into(), json!(transport_label(cli.transport)));
        head.insert("clients".into(), json!(cli.clients));
        head.insert(
            "requests_per_client".into(),
            if cli.duration.is_some() {
                Value::Null
            } else {
                json!(cli.requests)
            },
        );
        head.insert("duration_secs".into(), json!(cli.duration));
        head.insert("chunks".into(), json!(cli.chunks));
        head.insert("chunk_bytes".into(), json!(cli.chunk_bytes));
        head.insert("wall_secs".into(), json!(stats::round(wall, 4)));
        head.extend(std::mem::take(m));
        head.insert("listen_overflows".into(), json!(o.listen_overflows));
        head.insert(
            "server".into(),
            o.server
                .as_ref()
                .map_or(Value::Null, |s| s.json(wall, total.events)),
        );
        head.insert(
            "loadgen".into(),
            json!({
                "cpu_secs": stats::round(o.loadgen_cpu_secs, 3),
                "cpu_percent_of_one_core": stats::round(if wall > 0.0 { 100.0 * o.loadgen_cpu_secs / wall } else { 0.0 }, 1),
                "threads": cli.threads,
            }),
        );
        if o.per.len() > 1 {
            let by: Map<String, Value> = o
                .per
                .iter()
                .map(|(t, s)| (t.label().to_string(), s.json(wall)))
                .collect();
            head.insert("by_transport".into(), Value::Object(by));
        }
        *m = head;
    }
    v
}

fn report_text(cli: &Cli, o: &load::Outcome, total: &stats::Stats) -> String {
    let wall = o.wall.as_secs_f64();
    let shape = match cli.duration {
        Some(d) => format!("--duration {d}"),
        None => format!("-r {}", cli.requests),
    };
    let mut out = format!(
        "switchyard-loadgen {} -c {} {shape} -n {} -s {} → {}{}\nwall {wall:.3} s, {} streams\n\n",
        transport_label(cli.transport),
        cli.clients,
        cli.chunks,
        cli.chunk_bytes,
        cli.url.trim_end_matches('/'),
        if cli.transport == TransportArg::Socketio || cli.transport == TransportArg::SocketioPolling
        {
            String::new()
        } else {
            cli.route_path.clone()
        },
        total.streams_ok + total.streams_failed,
    );
    let mut columns: Vec<(&str, &stats::Stats)> =
        o.per.iter().map(|(t, s)| (t.label(), s)).collect();
    if o.per.len() > 1 {
        columns.push(("all", total));
    }
    out.push_str(&stats::table(&columns, wall));
    out.push('\n');
    if let Some(s) = &o.server {
        let cpu = s.cpu_secs();
        out.push_str(&format!(
            "server pid {}: cpu {cpu:.2} s ({:.0}% of one core, {:.2} µs/event); rss start {:.1} MiB, end {:.1} MiB, peak sampled {:.1} MiB, VmHWM {:.1} MiB\n",
            s.pid,
            if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
            if total.events > 0 { cpu * 1e6 / total.events as f64 } else { 0.0 },
            s.before.rss_kb as f64 / 1024.0,
            s.after.rss_kb as f64 / 1024.0,
            s.rss_peak_sampled_kb as f64 / 1024.0,
            s.after.hwm_kb as f64 / 1024.0,
        ));
    }
    out.push_str(&format!(
        "loadgen: cpu {:.2} s ({:.0}% of one core), {} thread(s)\n",
        o.loadgen_cpu_secs,
        if wall > 0.0 {
            100.0 * o.loadgen_cpu_secs / wall
        } else {
            0.0
        },
        cli.threads
    ));
    if let Some(n) = o.listen_overflows.filter(|n| *n > 0) {
        out.push_str(&format!(
            "listen queue overflows (system-wide): {n}: connections waited for SYN retransmits; lower --connect-concurrency or raise the server's backlog\n"
        ));
    }
    if total.errors.is_empty() {
        out.push_str("errors: none\n");
    } else {
        let list: Vec<String> = total
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!("errors: {}\n", list.join(", ")));
        for r in total.reasons.iter().take(cli.show_reasons) {
            out.push_str(&format!("  {r}\n"));
        }
    }
    if total.streams_failed == 0 && total.lost == 0 {
        out.push_str("OK: every stream checked out\n");
    } else {
        out.push_str(&format!(
            "FAIL: {} streams failed, {} events lost or garbled\n",
            total.streams_failed, total.lost
        ));
    }
    out
}

fn idle_main(
    cli: &Cli,
    k: usize,
    target: Target,
    connect_timeout: Duration,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    if k == 0 {
        return usage("--idle must be at least 1");
    }
    let (hold, settle) = match (secs("--hold", cli.hold), secs("--settle", cli.settle)) {
        (Ok(h), Ok(s)) => (h, s),
        (Err(e), _) | (_, Err(e)) => return usage(e),
    };
    if cli.idle_interval_ms == 0 {
        return usage("--idle-interval-ms must be at least 1");
    }
    warn_fd_limit(k, cli.server_pid);
    let plan = IdlePlan {
        target,
        connections: k,
        transport: cli.idle_transport,
        hold,
        route_path: cli.route_path.clone(),
        interval_ms: cli.idle_interval_ms,
        settle,
        connect_timeout,
        connect_gate: Semaphore::new(cli.connect_concurrency),
        show_reasons: cli.show_reasons,
    };
    let outcome = runtime.block_on(idle::run(plan, cli.server_pid));
    if cli.json {
        println!("{}", outcome.json);
    } else {
        print!("{}", outcome.text);
    }
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
