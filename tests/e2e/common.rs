//! The e2e harness: the server in process on an ephemeral port (`Server`), a real HTTP
//! client with NDJSON and SSE readers, the stream rules, and the real Socket.IO clients
//! (socket.io-client under Node, python-socketio) run as child processes. What any test
//! binary needs (waiting, the real binary, the fake upstream, the census, the lean
//! clients) is in `tests/support/`, re-exported here.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard::config::Config;
use switchyard::routes::Routes;
use switchyard::{Bridge, server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

pub use crate::support::census::{Census, peak_rss, rss, scrape, settle};
pub use crate::support::lean::Lean;
pub use crate::support::spawn::Spawn;
pub use crate::support::upstream::{Seen, Upstream};
pub use crate::support::{WAIT, eventually, eventually_async, flags_dir, repo, shipped_flags_dir};

/// A fresh routes file holding `routes_toml`.
pub fn routes_file(routes_toml: &str) -> std::path::PathBuf {
    let path = tempfile::tempdir().unwrap().keep().join("routes.toml");
    std::fs::write(&path, routes_toml).unwrap();
    path
}

/// A test config for bulk streams: the shipped routes with 64 KiB chunks allowed, and room
/// for 64 MiB of text per stream.
pub fn bulk_config() -> Config {
    let shipped = std::fs::read_to_string(repo().join("routes.toml")).unwrap();
    let routes = shipped.replace("max_chunk_bytes = 4096", "max_chunk_bytes = 65536");
    assert_ne!(
        routes, shipped,
        "the shipped chat route sets max_chunk_bytes = 4096"
    );
    let mut c = config();
    c.routes_file = routes_file(&routes);
    c.limits.max_output_bytes = 64 << 20;
    c
}

/// A test config: the shipped routes, a copy of the shipped flags, tight timings.
pub fn config() -> Config {
    let mut c = Config {
        routes_file: repo().join("routes.toml"),
        flags_dir: shipped_flags_dir(),
        ..Config::default()
    };
    c.replay.orphan_grace_secs = 0;
    c.shutdown.grace_secs = 1;
    c
}

pub struct Server {
    pub addr: SocketAddr,
    pub bridge: Bridge,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(config: Config) -> Server {
        let routes = Routes::load(&config.routes_file).expect("routes");
        Server::start_with(config, routes).await
    }

    pub async fn start_with(config: Config, routes: Routes) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bridge = Bridge::new(config, routes).expect("flags load");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, bridge.clone(), async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            bridge,
            stop: Some(tx),
            task,
        }
    }

    pub async fn default() -> Server {
        Server::start(config()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signals shutdown (as SIGTERM would) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// The status and `error_type` of a pre-stream error response (its message is checked
/// to be there).
pub async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    let t = body["error"]["error_type"].as_str().unwrap().to_string();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    (status, t)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

pub const CHAT: &str = "/api/ai/chat/unified";

pub fn chat_body(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

/// POSTs and reads the whole NDJSON answer.
pub async fn post_ndjson(url: &str, body: &Value) -> Vec<Value> {
    let resp = http().post(url).json(body).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    parse_ndjson(&resp.text().await.unwrap())
}

/// GETs and reads the whole body as text.
pub async fn get_text(url: &str) -> String {
    crate::support::text(http().get(url)).await
}

pub fn parse_ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<Value>,
    pub comment: Option<String>,
}

pub fn parse_sse(text: &str) -> Vec<SseFrame> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut f = SseFrame {
                id: None,
                event: None,
                data: None,
                comment: None,
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    f.id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    f.event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    f.data = Some(serde_json::from_str(v).unwrap());
                } else if let Some(v) = line.strip_prefix(':') {
                    f.comment = Some(v.trim().to_string());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            f
        })
        .collect()
}

/// A streaming NDJSON response read line by line as it arrives.
pub struct LineReader {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    rx: mpsc::UnboundedReceiver<String>,
}

impl LineReader {
    pub async fn open(req: reqwest::RequestBuilder) -> LineReader {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let line = String::from_utf8_lossy(&line).trim_end().to_string();
                    if !line.is_empty() && tx.send(line).is_err() {
                        return;
                    }
                }
            }
        });
        LineReader {
            status,
            headers,
            rx,
        }
    }

    /// The next JSON line, or `None` at the end of the body.
    pub async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a line in time")?;
        Some(serde_json::from_str(&line).unwrap())
    }

    /// Reads JSON lines until one matches `pred`; returns all read.
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = self.next().await.expect("the line we wait for");
            let done = pred(&v);
            out.push(v);
            if done {
                return out;
            }
        }
    }

    pub async fn rest(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.next().await {
            out.push(v);
        }
        out
    }
}

/// Checks the SPEC section 1 rules on a whole neutral stream and returns its chunk texts.
pub fn check_rules(events: &[Value]) -> Vec<String> {
    assert!(!events.is_empty());
    assert_eq!(events[0]["event"], "status_update", "{events:?}");
    assert_eq!(events[0]["data"]["status"], "started");
    assert!(events[0]["data"]["metadata"]["request_id"].is_string());
    for (expected, e) in events
        .iter()
        .filter(|e| e["event"] != "heartbeat")
        .enumerate()
    {
        assert_eq!(e["seq"], expected, "seq must be contiguous: {events:?}");
    }
    let last = events.last().unwrap();
    assert_eq!(last["event"], "end");
    assert_eq!(events.iter().filter(|e| e["event"] == "end").count(), 1);
    let before = &events[events.len() - 2];
    assert!(
        before["event"] == "completion" || before["event"] == "error",
        "{before}"
    );
    let chunks: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "chunk")
        .map(|e| e["data"]["text"].as_str().unwrap().to_string())
        .collect();
    if before["event"] == "completion" {
        assert_eq!(before["data"]["output"], chunks.concat());
    }
    chunks
}

/// Which real Socket.IO client to run.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// socket.io-client 4.x (protocol v5) under Node.
    Node,
    /// socket.io-client 2.x (protocol v4) under Node.
    NodeV2,
    /// python-socketio 5.x AsyncClient.
    Python,
}

/// A running Socket.IO client process; its JSON-lines output arrives as it prints.
pub struct Sio {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::UnboundedReceiver<Value>,
    pub seen: Vec<Value>,
}

impl Sio {
    /// Runs `client` with a spec (see tests/interop/sio_client.js for the contract).
    pub fn spawn(client: Client, mut spec: Value) -> Sio {
        let dir = repo().join("tests/interop");
        let mut cmd = match client {
            Client::Node | Client::NodeV2 => {
                crate::support::needs::node_clients();
                if matches!(client, Client::NodeV2) {
                    spec["client"] = json!("v2");
                }
                let mut c = Command::new("node");
                c.arg(dir.join("sio_client.js"));
                c
            }
            Client::Python => {
                crate::support::needs::python_client();
                let py = dir.join(".venv/bin/python");
                let mut c = Command::new(py);
                c.arg(dir.join("sio_client.py"));
                c
            }
        };
        cmd.arg(spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run the {client:?} Socket.IO client: {e} (is it installed?)")
        });
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("client printed a non-JSON line: {line}"),
                }
            }
        });
        Sio {
            child,
            stdin,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the next output line matching `pred` (lines before it are kept in `seen`).
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        loop {
            let v = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; seen: {:?}", self.seen))
                .unwrap_or_else(|| panic!("client exited before {what}; seen: {:?}", self.seen));
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }

    pub async fn expect_type(&mut self, ty: &str) -> Value {
        self.expect(ty, |v| v["type"] == ty).await
    }

    pub async fn expect_event(&mut self, name: &str) -> Value {
        self.expect(name, |v| v["type"] == "event" && v["event"] == name)
            .await
    }

    /// Sends one line to a client waiting in a `wait_stdin` step.
    pub async fn send(&mut self, line: Value) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for the process to finish; returns every line it printed and its exit code.
    pub async fn finish(mut self) -> (Vec<Value>, i32) {
        while let Ok(Some(v)) = tokio::time::timeout(WAIT, self.rx.recv()).await {
            self.seen.push(v);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("client exits")
            .unwrap();
        (self.seen, status.code().unwrap_or(-1))
    }
}

pub fn events_of(lines: &[Value]) -> Vec<(String, Value)> {
    lines
        .iter()
        .filter(|v| v["type"] == "event")
        .map(|v| (v["event"].as_str().unwrap().to_string(), v["data"].clone()))
        .collect()
}

pub fn sio_spec(server: &Server, transports: &[&str], steps: Value) -> Value {
    json!({"url": server.base(), "transports": transports, "steps": steps, "global_timeout_ms": 30000})
}

/// Runs a Node script of `tests/interop` with a JSON spec (for `http_client.js`, Node's own
/// fetch: see the contract at its top); returns every JSON line it printed, the last one
/// being `{"type":"done"}`.
pub async fn run_node(script: &str, spec: Value) -> Vec<Value> {
    crate::support::needs::node();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg(repo().join("tests/interop").join(script))
            .arg(spec.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} did not finish in time"))
    .unwrap_or_else(|e| panic!("cannot run node {script}: {e} (is Node.js installed?)"));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    assert!(
        out.status.success() && lines.last().is_some_and(|l| l["type"] == "done"),
        "{script} failed: {lines:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines
}
