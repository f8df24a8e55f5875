//! The README's load-balancer snippets ("Running a cluster", **Load balancer**), run for
//! real: a `redis-server` child, two bridge nodes, and a real HAProxy or nginx child in
//! front of them, configured with the snippet as the README prints it (only the
//! addresses changed: the two nodes' loopback ports, a free loopback port to listen on).
//!
//! What they prove: HTTP streams (NDJSON, resume, cancel) need no stickiness: requests
//! through the balancer land on both nodes and every event arrives once; Socket.IO over
//! long-polling only arrives whole through HAProxy's cookie and through nginx's
//! `ip_hash`; Socket.IO over WebSocket arrives whole through both, from the start and by
//! upgrade from long-polling (the upgrade reaching the session's node); and which
//! Socket.IO clients really send HAProxy's cookie back (HAProxy's own log shows the
//! `Cookie` header of every request).
//!
//! Skipped (with a message) when `haproxy`, `nginx` or `redis-server` is missing, unless
//! `SWITCHYARD_REQUIRE_BALANCERS` / `SWITCHYARD_REQUIRE_REDIS` say they must run
//! (`scripts/test` installs Debian's and sets both).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cluster::{Node, Redis, contiguous, free_port, two_nodes};
use crate::common::*;
use crate::support::needs;

/// The fenced code block of the README that follows the line `after`.
fn readme_block(after: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let from = readme
        .find(after)
        .unwrap_or_else(|| panic!("README has {after:?}"));
    let rest = &readme[from..];
    let open = rest.find("```\n").unwrap() + 4;
    let close = open + rest[open..].find("```").unwrap();
    rest[open..close].to_string()
}

/// The README's addresses for the first two nodes, replaced by ours; the third node's
/// are dropped by the caller.
fn with_nodes(snippet: &str, a: &Node, b: &Node) -> String {
    let port = |n: &Node| n.base.trim_start_matches("http://").to_string();
    assert!(snippet.contains("10.0.0.11:8080") && snippet.contains("10.0.0.12:8080"));
    snippet
        .replace("10.0.0.11:8080", &port(a))
        .replace("10.0.0.12:8080", &port(b))
}

/// A load balancer child process (killed when dropped) and what it logged: one line per
/// request, `<upstream> <status> "<request line>" <cookie header>`.
struct Balancer {
    _child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    log_file: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Balancer {
    /// HAProxy with the README's backend, in the foreground, logging to its stdout.
    async fn haproxy(a: &Node, b: &Node) -> Balancer {
        let backend: String = with_nodes(&readme_block("HAProxy (2.6, Debian's):"), a, b)
            .lines()
            .filter(|l| !l.contains("10.0.0.13"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(backend.contains("cookie SYNODE insert"), "{backend}");
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global\n    log stdout format raw local0\n    maxconn 2000\n\
             defaults\n    mode http\n    log global\n\
             \x20   log-format \"%s %ST %{{+Q}}r cookie=%hr\"\n\
             \x20   timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\
             frontend front\n    bind 127.0.0.1:{port}\n\
             \x20   capture request header Cookie len 200\n    default_backend switchyard\n\
             {backend}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).unwrap();
        let mut child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy starts");
        let log: Arc<Mutex<String>> = Arc::default();
        let stdout = child.stdout.take().unwrap();
        let into = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = into.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let lb = Balancer {
            _child: child,
            port,
            log,
            log_file: None,
            _dir: dir,
        };
        lb.wait_up(&config).await;
        lb
    }

    /// nginx with the README's upstreams and server, as a child in the foreground (one
    /// process), every path it writes inside a temp dir.
    async fn nginx(a: &Node, b: &Node) -> Balancer {
        let snippet = with_nodes(
            &readme_block("nginx (open-source: no cookie stickiness"),
            a,
            b,
        )
        .replace(" server 10.0.0.13:8080;", "");
        assert!(!snippet.contains("10.0.0.13"), "{snippet}");
        assert!(snippet.contains("ip_hash"), "{snippet}");
        let port = free_port();
        assert!(snippet.contains("listen 80;"), "{snippet}");
        let snippet = snippet.replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let log_file = dir.path().join("access.log");
        let config = format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n\
             log_format lb '$upstream_addr $status \"$request\" cookie=$http_cookie';\n\
             access_log {log} lb;\n\
             client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             {snippet}\n}}\n",
            log = log_file.display()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, &config).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .arg("-g")
            .arg("daemon off; master_process off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx starts");
        let lb = Balancer {
            _child: child,
            port,
            log: Arc::default(),
            log_file: Some(log_file),
            _dir: dir,
        };
        lb.wait_up(&config).await;
        lb
    }

    /// Waits until both nodes answer `/readyz` through it.
    async fn wait_up(&self, config: &str) {
        let what = format!("the balancer serves /readyz from both nodes; config:\n{config}");
        eventually_async(&what, || async {
            let mut ok = 0;
            for _ in 0..4 {
                if let Ok(r) = http().get(self.url("/readyz")).send().await
                    && r.status() == 200
                {
                    ok += 1;
                }
            }
            ok == 4
        })
        .await;
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    fn log(&self) -> String {
        match &self.log_file {
            Some(f) => std::fs::read_to_string(f).unwrap_or_default(),
            None => self.log.lock().unwrap().clone(),
        }
    }

    /// The log lines whose request line contains `needle`.
    fn lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// The upstreams that served requests whose request line contains `needle`.
    fn upstreams(&self, needle: &str) -> std::collections::BTreeSet<String> {
        self.lines(needle)
            .iter()
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect()
    }
}

/// HTTP through the balancer, no stickiness: a stream started through it is resumed
/// through it many times at once (the resumes land on both nodes: some on the node that
/// does not run it), each resumer gets exactly the events after its cursor; cancels
/// through it (served by both nodes) end their streams for the requester.
async fn http_needs_no_stickiness(lb: &Balancer) {
    const RESUMES: u64 = 16;
    let body = json!({"request_id": "lb-resume", "message": "hi",
        "options": {"chunks": 40, "interval_ms": 20}});
    let mut owner = LineReader::open(http().post(lb.url(CHAT)).json(&body)).await;
    assert_eq!(owner.status, 200);
    let mut all = owner.until(|v| v["seq"] == RESUMES).await;
    let resumes = (0..RESUMES).map(|after| async move {
        let mut r =
            LineReader::open(http().get(lb.url(&format!("/api/streams/lb-resume?after={after}"))))
                .await;
        assert_eq!(r.status, 200, "resume after {after}");
        (after, contiguous(&r.rest().await, after + 1))
    });
    let tails = futures_util::future::join_all(resumes).await;
    all.extend(owner.rest().await);
    let all = contiguous(&all, 0);
    check_rules(&all);
    for (after, tail) in tails {
        assert_eq!(tail, all[after as usize + 1..].to_vec(), "after {after}");
    }
    eventually("the resumes are logged", || {
        lb.lines("/api/streams/lb-resume").len() == RESUMES as usize
    })
    .await;
    let served = lb.upstreams("/api/streams/lb-resume");
    assert_eq!(served.len(), 2, "resumes on both nodes: {served:?}");

    // Cancels: several long streams started through it, each cancelled through it.
    let mut streams = Vec::new();
    for i in 0..4 {
        let id = format!("lb-cancel-{i}");
        let body = json!({"request_id": id, "message": "hi",
            "options": {"chunks": 100000, "interval_ms": 20}});
        let mut r = LineReader::open(http().post(lb.url(CHAT)).json(&body)).await;
        assert_eq!(r.status, 200);
        let head = r.until(|v| v["event"] == "chunk").await;
        streams.push((id, head, r));
    }
    for (id, head, mut r) in streams {
        let answer: Value = http()
            .post(lb.url(&format!("/api/ai/cancel/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["cancelled"], true, "{id}: {answer}");
        let mut events = head;
        events.extend(r.rest().await);
        let events = contiguous(&events, 0);
        let n = events.len();
        assert_eq!(events[n - 2]["data"]["status"], "cancelled", "{events:?}");
        assert_eq!(events[n - 1]["data"]["reason"], "cancelled", "{events:?}");
    }
    eventually("the cancels are logged", || {
        lb.lines("/api/ai/cancel/lb-cancel").len() == 4
    })
    .await;
    let served = lb.upstreams("/api/ai/cancel/lb-cancel");
    assert_eq!(served.len(), 2, "cancels on both nodes: {served:?}");
}

/// A chat stream over Socket.IO long-polling only, through `url`; `probe` tags its
/// requests (a query parameter) so that the balancer's log lines can be told apart.
fn polling_chat(url: &str, probe: &str, extra: Value) -> Value {
    sio_chat(url, probe, &["polling"], 10, extra)
}

/// [`polling_chat`] over the given Socket.IO transports (`["websocket"]`: WebSocket from
/// the start; `["polling", "websocket"]`: a polling handshake, then the upgrade), its 30
/// chunks `interval_ms` apart.
fn sio_chat(url: &str, probe: &str, transports: &[&str], interval_ms: u64, extra: Value) -> Value {
    let mut spec = json!({
        "url": url,
        "transports": transports,
        "query": {"probe": probe},
        "global_timeout_ms": 30000,
        "steps": [
            {"emit": "chat_message", "data": {"message": "x",
                "options": {"chunks": 30, "interval_ms": interval_ms}}, "ack": true},
            {"wait_for": "chat_complete", "count": 1, "timeout_ms": 15000}
        ]
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            spec[k] = v;
        }
    }
    spec
}

/// Runs a polling chat client to its end; true when the whole stream arrived (every
/// chunk once, in order, then one `chat_complete` whose text is theirs).
async fn whole_chat(client: Client, spec: Value) -> (bool, Vec<Value>) {
    let (lines, code) = Sio::spawn(client, spec).finish().await;
    let events = events_of(&lines);
    let chunks: String = events
        .iter()
        .filter(|(n, _)| n == "chat_chunk")
        .map(|(_, d)| d["chunk"].as_str().unwrap_or_default().to_string())
        .collect();
    let completes: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "chat_complete")
        .map(|(_, d)| d)
        .collect();
    let whole = code == 0
        && completes.len() == 1
        && completes[0]["full_response"] == json!(chunks)
        && !chunks.is_empty();
    (whole, lines)
}

/// Whether a client sent HAProxy's cookie back: its requests (tagged `probe`) after the
/// handshake, as HAProxy logged them. Some(true): every one after the first carried
/// `SYNODE`; Some(false): none did.
fn cookie_kept(lb: &Balancer, probe: &str) -> Option<bool> {
    let lines = lb.lines(&format!("probe={probe}"));
    let with = lines.iter().filter(|l| l.contains("SYNODE=")).count();
    let without = lines.len() - with;
    match (with, without) {
        (w, 1) if w >= 2 => Some(true),
        (0, w) if w >= 2 => Some(false),
        _ => None,
    }
}

/// Socket.IO over WebSocket through the balancer: from the start (`ws-<probe>`, every
/// client: one connection, no stickiness needed) and by upgrade from long-polling
/// (`up-<probe>`, the clients in `upgrading`: the upgrade must reach the node holding
/// the Engine.IO session). Each stream arrives whole, and the balancer's log shows the
/// WebSocket it carried (101) on the node that served the client's other requests.
async fn websocket_through(lb: &Balancer, url: &str, upgrading: &[(Client, &str, Value)]) {
    let from_start = [
        (Client::Node, "node4"),
        (Client::NodeV2, "node2"),
        (Client::Python, "python"),
    ];
    let ws = from_start
        .iter()
        .map(|(c, p)| (*c, format!("ws-{p}"), &["websocket"][..], json!({})));
    let up = upgrading.iter().map(|(c, p, extra)| {
        (
            *c,
            format!("up-{p}"),
            &["polling", "websocket"][..],
            extra.clone(),
        )
    });
    for (client, probe, transports, extra) in ws.chain(up) {
        // An upgrading client's stream lasts long enough (1.5 s) for the upgrade to
        // happen before it leaves.
        let interval_ms = if transports.len() > 1 { 50 } else { 10 };
        let spec = sio_chat(url, &probe, transports, interval_ms, extra);
        let (whole, lines) = whole_chat(client, spec).await;
        assert!(whole, "{probe} through the balancer: {lines:?}");
        let probe_q = format!("probe={probe}");
        eventually(
            &format!("the balancer logged {probe}'s WebSocket: {}", lb.log()),
            || {
                lb.lines(&probe_q)
                    .iter()
                    .any(|l| l.contains("transport=websocket") && l.contains(" 101 "))
            },
        )
        .await;
        let served = lb.upstreams(&probe_q);
        assert_eq!(
            served.len(),
            1,
            "{probe}: one node for all: {:?}",
            lb.lines(&probe_q)
        );
    }
}

/// HAProxy with the README's backend: HTTP needs no stickiness; Socket.IO long-polling
/// arrives whole for the clients that send the `SYNODE` cookie back, and breaks for
/// those that do not (their second request reaches the other node: 400 "Session ID
/// unknown"). HAProxy's log shows which clients send it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_haproxy_readme_backend() {
    if !needs::redis() || !needs::haproxy() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let lb = Balancer::haproxy(&n1, &n2).await;
    http_needs_no_stickiness(&lb).await;

    // (client, probe, url, extra spec, keeps the cookie)
    let localhost = format!("http://localhost:{}", lb.port);
    let cases: [(Client, &str, String, Value, bool); 5] = [
        (
            Client::Node,
            "node4-credentials",
            lb.base(),
            json!({"with_credentials": true}),
            true,
        ),
        (Client::Node, "node4-plain", lb.base(), json!({}), false),
        (Client::NodeV2, "node2", lb.base(), json!({}), false),
        (
            Client::Python,
            "python-hostname",
            localhost.clone(),
            json!({}),
            true,
        ),
        (Client::Python, "python-ip", lb.base(), json!({}), false),
    ];
    for (client, probe, url, extra, keeps) in cases {
        let (whole, lines) = whole_chat(client, polling_chat(&url, probe, extra)).await;
        eventually(
            &format!("HAProxy logged {probe}'s requests: {}", lb.log()),
            || cookie_kept(&lb, probe).is_some(),
        )
        .await;
        assert_eq!(
            cookie_kept(&lb, probe),
            Some(keeps),
            "{probe} keeps the cookie: {}",
            lb.lines(probe).join("\n")
        );
        assert_eq!(
            whole, keeps,
            "{probe}: the stream arrives whole exactly when the cookie is kept: {lines:?}"
        );
    }
    // WebSocket: from the start for every client; by upgrade for those keeping the cookie.
    websocket_through(
        &lb,
        &localhost,
        &[
            (
                Client::Node,
                "node4-credentials",
                json!({"with_credentials": true}),
            ),
            (Client::Python, "python-hostname", json!({})),
        ],
    )
    .await;
}

/// nginx with the README's upstreams: HTTP needs no stickiness (round robin), and
/// Socket.IO long-polling arrives whole through `ip_hash` for every client, cookie or
/// not: all of one client's requests reach one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_nginx_readme_upstreams() {
    if !needs::redis() || !needs::nginx() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let lb = Balancer::nginx(&n1, &n2).await;
    http_needs_no_stickiness(&lb).await;
    for (client, probe) in [
        (Client::Node, "node4"),
        (Client::NodeV2, "node2"),
        (Client::Python, "python"),
    ] {
        let (whole, lines) = whole_chat(client, polling_chat(&lb.base(), probe, json!({}))).await;
        assert!(whole, "{probe} through nginx: {lines:?}");
        let served = lb.upstreams(&format!("probe={probe}"));
        assert_eq!(served.len(), 1, "{probe}: one node for all: {served:?}");
    }
    // WebSocket: from the start, and by upgrade (`ip_hash` keeps it on the polling node).
    websocket_through(
        &lb,
        &lb.base(),
        &[
            (Client::Node, "node4", json!({})),
            (Client::NodeV2, "node2", json!({})),
            (Client::Python, "python", json!({})),
        ],
    )
    .await;
}
