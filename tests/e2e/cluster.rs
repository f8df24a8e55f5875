//! The cluster (SPEC section 10): a real `redis-server` child on a free port, bridge
//! processes on loopback ports pointed at it, real clients pointed at chosen nodes.
//! Faults are real too: `kill -9` of a node, Redis paused with SIGSTOP or restarted
//! empty. Every wait is on a condition; every process is killed when its handle drops.
//!
//! Skipped (with a message) when `redis-server` is not installed (`needs::redis`), unless
//! `SWITCHYARD_REQUIRE_REDIS` is set; `scripts/test` installs Debian's.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::common::*;
use crate::support::needs;

const TOKEN: &str = "cluster-admin-token";

/// A free loopback port (bound then released; the child binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` child: no persistence, loopback only.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub async fn start() -> Redis {
        Redis::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        let r = Redis {
            child: Some(child),
            port,
        };
        eventually_async("redis answers PING", || r.ping()).await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            return false;
        };
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
        pong.is_ok()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().and_then(|c| c.id()).unwrap();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} redis");
    }

    /// SIGSTOP: Redis holds every connection open and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills Redis (-9) and starts an empty one on the same port.
    pub async fn restart_empty(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
        *self = Redis::start_on(self.port).await;
    }
}

/// One bridge process of the cluster (the test-support spawner: port from its ready file).
pub struct Node {
    process: crate::support::spawn::Process,
    pub base: String,
    pub flags_dir: PathBuf,
}

/// What a node is started with.
pub struct NodeSpec<'a> {
    pub redis_url: &'a str,
    pub node_id: &'a str,
    pub flags_dir: PathBuf,
    pub env: Vec<(&'a str, String)>,
}

impl NodeSpec<'_> {
    pub fn new<'a>(redis_url: &'a str, node_id: &'a str) -> NodeSpec<'a> {
        NodeSpec {
            redis_url,
            node_id,
            flags_dir: shipped_flags_dir(),
            env: Vec::new(),
        }
    }
}

impl Node {
    /// Starts `switchyard serve` on an ephemeral port; returns once it listens (not
    /// necessarily ready: see [`Node::ready`]).
    pub async fn spawn(spec: NodeSpec<'_>) -> Node {
        let mut spawn = crate::support::spawn::Spawn::new()
            .env("SWITCHYARD_FLAGS_DIR", spec.flags_dir.display())
            .env("SWITCHYARD_ADMIN__TOKEN", TOKEN)
            .env("SWITCHYARD_CLUSTER__REDIS_URL", spec.redis_url)
            .env("SWITCHYARD_CLUSTER__NODE_ID", spec.node_id)
            .env("SWITCHYARD_CLUSTER__HEARTBEAT_MS", 200)
            .env("SWITCHYARD_CLUSTER__LEASE_MS", 800)
            .env("SWITCHYARD_CLUSTER__OUTAGE_TIMEOUT_MS", 2000)
            .env("SWITCHYARD_CLUSTER__FLAGS_POLL_MS", 200);
        for (k, v) in &spec.env {
            spawn = spawn.env(k, v);
        }
        let process = spawn.start().await;
        Node {
            base: process.base(),
            process,
            flags_dir: spec.flags_dir,
        }
    }

    /// Starts a node and waits until it is ready (it reached Redis).
    pub async fn start(spec: NodeSpec<'_>) -> Node {
        let n = Node::spawn(spec).await;
        eventually_async("the node is ready", || n.ready()).await;
        n
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn ready(&self) -> bool {
        self.status("/readyz").await == 200
    }

    pub async fn status(&self, path: &str) -> u16 {
        match http().get(self.url(path)).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn flags(&self) -> Value {
        http()
            .get(self.url("/admin/flags"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn put_flag(&self, route: &str, body: Value, if_match: Option<u64>) -> (u16, Value) {
        let mut req = http()
            .put(self.url(&format!("/admin/flags/{route}")))
            .bearer_auth(TOKEN)
            .json(&body);
        if let Some(v) = if_match {
            req = req.header("if-match", v.to_string());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// SIGTERM: the node drains (SPEC section 8) and exits.
    pub fn terminate(&self) {
        self.process.sigterm();
    }

    /// `kill -9`.
    pub async fn kill(mut self) {
        self.process.kill().await;
    }

    /// A metric's value (the first sample whose line starts with `name`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = http()
            .get(self.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

pub async fn two_nodes(redis: &Redis) -> (Node, Node) {
    let url = redis.url();
    tokio::join!(
        Node::start(NodeSpec::new(&url, "n1")),
        Node::start(NodeSpec::new(&url, "n2")),
    )
}

async fn three_nodes(redis: &Redis) -> (Node, Node, Node) {
    let url = redis.url();
    let (a, b, c) = tokio::join!(
        Node::start(NodeSpec::new(&url, "n1")),
        Node::start(NodeSpec::new(&url, "n2")),
        Node::start(NodeSpec::new(&url, "n3")),
    );
    (a, b, c)
}

fn flags_file(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("flags.toml")).unwrap_or_default()
}

/// A flag set through one node is in force on every node within 2 s (the file on each
/// node too), and `switchyard_flags_version` agrees everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_flag_change_reaches_every_node_within_two_seconds() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2, n3) = three_nodes(&redis).await;
    for round in 0..5u32 {
        let node = [&n1, &n2, &n3][round as usize % 3];
        let percent = 10 + round;
        let (status, changed) = node
            .put_flag("chat", json!({"mode": "rollout", "percent": percent}), None)
            .await;
        assert_eq!(status, 200, "{changed}");
        let version = changed["version"].as_u64().unwrap();
        let at = Instant::now();
        for n in [&n1, &n2, &n3] {
            eventually_async("the change is in force on every node", || async {
                let f = n.flags().await;
                f["version"] == version && f["routes"]["chat"]["percent"] == f64::from(percent)
            })
            .await;
        }
        assert!(
            at.elapsed() < Duration::from_secs(2),
            "in force everywhere after {:?}",
            at.elapsed()
        );
        for n in [&n1, &n2, &n3] {
            assert!(flags_file(&n.flags_dir).contains(&format!("version = {version}")));
            assert_eq!(
                n.metric("switchyard_flags_version").await,
                Some(version as f64)
            );
        }
    }
}

/// `If-Match` is checked against the cluster's version: of two writes with the same
/// version sent to two nodes at once, exactly one wins and the other gets 409; over many
/// rounds no update is lost and the audit log (read on a third node) is one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_if_match_holds_across_nodes_and_the_audit_is_one_history() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2, n3) = three_nodes(&redis).await;
    const ROUNDS: u32 = 30;
    let mut wins = 0;
    for round in 0..ROUNDS {
        let version = n3.flags().await["version"].as_u64().unwrap();
        let (a, b) = tokio::join!(
            n1.put_flag(
                "chat",
                json!({"mode": "rollout", "percent": round}),
                Some(version)
            ),
            n2.put_flag(
                "chat",
                json!({"mode": "rollout", "percent": 50 + round}),
                Some(version)
            ),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {round}: {a:?} {b:?}");
        let loser = if a.0 == 409 { &a.1 } else { &b.1 };
        assert_eq!(loser["error"]["error_type"], "version_conflict");
        wins += 1;
        // Everyone sees the winner before the next round reads the version.
        let winner = if a.0 == 200 { a.1 } else { b.1 };
        let v = winner["version"].as_u64().unwrap();
        assert_eq!(v, version + 1);
        for n in [&n1, &n2, &n3] {
            eventually_async("the winner is in force", || async {
                n.flags().await["version"] == v
            })
            .await;
        }
    }
    let audit: Value = http()
        .get(n3.url(&format!("/admin/audit?limit={}", ROUNDS + 10)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        wins,
        "one entry per change, read on a node that made none"
    );
    let versions: Vec<u64> = entries
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] == w[1] + 1),
        "{versions:?}"
    );
}

/// A node started while Redis is down serves its last good flags file and is not ready;
/// a flags change is refused 503 rather than made on one node only. When Redis comes up
/// the node becomes ready by itself and seeds the empty Redis with its flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_node_started_without_redis_serves_its_last_good_flags_and_recovers() {
    if !needs::redis() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let dir = flags_dir("version = 7\n[route.chat]\nmode = \"new\"\n");
    let mut spec = NodeSpec::new(&url, "lonely");
    spec.flags_dir = dir;
    let n = Node::spawn(spec).await;
    let f: Value = get_json(&n, "/api/flags/chat").await;
    assert_eq!(f["mode"], "new", "the file's flags are in force: {f}");
    assert_eq!(n.status("/readyz").await, 503);
    let (status, body) = n.put_flag("chat", json!({"mode": "dual"}), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["error_type"], "cluster_unavailable");
    let r = http()
        .post(n.url(CHAT))
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "no new stream without the cluster");
    let redis = Redis::start_on(port).await;
    eventually_async("ready once Redis is up", || n.ready()).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut seeded: Option<u64> = None;
    let deadline = Instant::now() + WAIT;
    while seeded.is_none() && Instant::now() < deadline {
        seeded = redis::cmd("HGET")
            .arg("sy:flags")
            .arg("version")
            .query_async(&mut c)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seeded, Some(7), "the node seeded Redis with its flags");
    let (status, body) = n.put_flag("chat", json!({"mode": "dual"}), Some(7)).await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(8)), "{body}");
}

/// Redis unreachable longer than `cluster.outage_timeout_ms` (paused with SIGSTOP): the
/// node answers new streams 503 and fails `/readyz`; when Redis answers again it is
/// ready again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_redis_paused_past_the_bound_gives_503_and_recovers() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let url = redis.url();
    let n = Node::start(NodeSpec::new(&url, "solo")).await;
    redis.pause();
    eventually_async("not ready while Redis is paused", || async {
        n.status("/readyz").await == 503
    })
    .await;
    let r = http()
        .post(n.url(CHAT))
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["error_type"], "cluster_unavailable");
    redis.resume();
    eventually_async("ready again once Redis answers", || n.ready()).await;
    let r = http()
        .post(n.url(CHAT))
        .json(&json!({"message": "hi", "options": {"chunks": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = parse_ndjson(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap()["event"], "end");
}

async fn get_json(n: &Node, path: &str) -> Value {
    http()
        .get(n.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The non-heartbeat events of a (partial) neutral stream, checked: contiguous `seq`
/// from `from`, nothing after `end`, at most one `end`.
pub fn contiguous(events: &[Value], from: u64) -> Vec<Value> {
    let events: Vec<Value> = events
        .iter()
        .filter(|e| e["event"] != "heartbeat")
        .cloned()
        .collect();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], from + i as u64, "contiguous seq: {events:?}");
    }
    let ends = events.iter().filter(|e| e["event"] == "end").count();
    assert!(ends <= 1, "one end: {events:?}");
    if ends == 1 {
        assert_eq!(events.last().unwrap()["event"], "end", "{events:?}");
    }
    events
}

fn end_of(events: &[Value]) -> (String, String) {
    let n = events.len();
    assert!(n >= 2, "{events:?}");
    assert_eq!(events[n - 1]["event"], "end", "{events:?}");
    let before = &events[n - 2];
    let what = if before["event"] == "error" {
        before["data"]["error_type"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    } else {
        before["data"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    (
        events[n - 1]["data"]["reason"]
            .as_str()
            .unwrap()
            .to_string(),
        what,
    )
}

fn chat(options: Value, session: Option<&str>) -> Value {
    let mut body = json!({"message": "hi", "options": options});
    if let Some(s) = session {
        body["session_id"] = json!(s);
    }
    body
}

/// Starts a chat stream on `node`, reads it until `pred` holds, and returns the reader,
/// what it read and the stream's request id.
async fn start_chat(
    node: &Node,
    options: Value,
    pred: impl Fn(&Value) -> bool,
) -> (LineReader, Vec<Value>, String) {
    start_session_chat(node, options, None, pred).await
}

/// [`start_chat`], in `session` when given.
async fn start_session_chat(
    node: &Node,
    options: Value,
    session: Option<&str>,
    pred: impl Fn(&Value) -> bool,
) -> (LineReader, Vec<Value>, String) {
    let mut owner =
        LineReader::open(http().post(node.url(CHAT)).json(&chat(options, session))).await;
    let head = owner.until(pred).await;
    let id = head[0]["data"]["metadata"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    (owner, head, id)
}

/// A stream started on one node is resumed (`?after=`, SSE `Last-Event-ID`) and followed
/// through its session from the others, with every SPEC section 1 rule holding for every
/// subscriber: over many concurrent streams, each resumed on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_streams_resume_and_follow_from_any_node() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2, n3) = three_nodes(&redis).await;
    let nodes = [&n1, &n2, &n3];
    // A session follower on n2 before anything starts: it must get n1's stream.
    let mut follower = LineReader::open(http().get(n2.url("/api/sessions/sess-a/events"))).await;
    assert_eq!(follower.status, 200);
    let mut owner = LineReader::open(http().post(n1.url(CHAT)).json(&chat(
        json!({"chunks": 30, "interval_ms": 20}),
        Some("sess-a"),
    )))
    .await;
    let first = owner.until(|v| v["seq"] == 9).await;
    let id = first[0]["data"]["metadata"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Resume from n3 after seq 9 while it runs.
    let mut resumed =
        LineReader::open(http().get(n3.url(&format!("/api/streams/{id}?after=9")))).await;
    assert_eq!(resumed.status, 200);
    let resumed = contiguous(&resumed.rest().await, 10);
    let mut all = first.clone();
    all.extend(owner.rest().await);
    let all = contiguous(&all, 0);
    check_rules(&all);
    assert_eq!(
        resumed,
        all[10..].to_vec(),
        "the resumer on n3 gets exactly 10..end"
    );
    // SSE with Last-Event-ID on n2, once ended: the same tail.
    let sse = http()
        .get(n2.url(&format!("/api/streams/{id}")))
        .header("accept", "text/event-stream")
        .header("last-event-id", "20")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let frames = parse_sse(&sse.text().await.unwrap());
    let ids: Vec<u64> = frames
        .iter()
        .filter_map(|f| f.id.as_ref().map(|i| i.parse().unwrap()))
        .collect();
    assert_eq!(ids, (21..all.len() as u64).collect::<Vec<_>>());
    // The session follower on n2 saw the whole stream, once.
    let followed: Vec<Value> = {
        let mut out = Vec::new();
        while out.last().is_none_or(|e: &Value| e["event"] != "end") {
            let v = follower.next().await.expect("the follower's next line");
            if v["event"] != "heartbeat" {
                out.push(v);
            }
        }
        out
    };
    assert_eq!(followed.len(), all.len(), "{followed:?}");
    for (f, a) in followed.iter().zip(&all) {
        assert_eq!(f["seq"], a["seq"]);
        assert_eq!(f["event"], a["event"]);
    }
    // Unknown everywhere: 404; before the first kept: not applicable (whole log kept).
    assert_eq!(n3.status("/api/streams/never-was").await, 404);
    // The cluster at work in /metrics: n1 flushed, n3 and n2 hold mirrors.
    assert!(
        n1.metric("switchyard_cluster_flush_events_count")
            .await
            .unwrap()
            > 0.0
    );
    assert!(n3.metric("switchyard_cluster_mirrors").await.unwrap() >= 1.0);

    // Many at once: each started on one node, resumed from the middle on the next.
    const STREAMS: usize = 200;
    let runs = (0..STREAMS).map(|i| {
        let (a, b) = (nodes[i % 3], nodes[(i + 1) % 3]);
        async move {
            let id = format!("many-{i}");
            let mut body = chat(json!({"chunks": 20, "interval_ms": 5}), None);
            body["request_id"] = json!(id);
            let mut owner = LineReader::open(http().post(a.url(CHAT)).json(&body)).await;
            let head = owner.until(|v| v["seq"] == 4).await;
            let mut r =
                LineReader::open(http().get(b.url(&format!("/api/streams/{id}?after=4")))).await;
            assert_eq!(r.status, 200, "resume {id} on another node");
            let tail = contiguous(&r.rest().await, 5);
            let mut all = head;
            all.extend(owner.rest().await);
            let all = contiguous(&all, 0);
            check_rules(&all);
            assert_eq!(tail, all[5..].to_vec(), "{id}");
        }
    });
    futures_util::future::join_all(runs).await;
}

/// Two followers of one session on one node, the first of which leaves: streams the
/// session starts on another node afterwards still reach the second (the node keeps
/// listening to the session's announcements while any follower of it is there), every
/// event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_second_follower_on_a_node_outlives_the_first() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let session = "sess-two-followers";
    let first = session_follower(&n2, session).await;
    let mut second = session_follower(&n2, session).await;
    drop(first);
    for round in 0..3 {
        let all = short_session_stream(&n1, session).await;
        // Heartbeats keep coming either way: the stream must arrive within a bound.
        follows_whole(&mut second, &all, &format!("round {round}")).await;
    }
}

/// Reads a session follower until the `end` of one stream (heartbeats skipped), within a
/// bound (a stream that never reaches it fails the test rather than hanging it), and
/// checks that it is the stream the requester read as `all`: each event once, in order.
async fn follows_whole(follower: &mut LineReader, all: &[Value], what: &str) {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while got.last().is_none_or(|e: &Value| e["event"] != "end") {
            match follower.next().await {
                Some(v) if v["event"] != "heartbeat" => got.push(v),
                Some(_) => {}
                None => panic!("{what}: the follower's body ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the stream never reached the follower: {got:?}"));
    let id = &all[0]["data"]["metadata"]["request_id"];
    assert!(
        got.iter().all(|e| &e["request_id"] == id),
        "{what}: {got:?}"
    );
    let seqs: Vec<&Value> = got.iter().map(|e| &e["seq"]).collect();
    let want: Vec<&Value> = all.iter().map(|e| &e["seq"]).collect();
    assert_eq!(seqs, want, "{what}: each event once, in order");
}

/// A follower that replaces the last one of its session on a node (a client that
/// reconnects: the old connection closes as the new one opens) still gets the session's
/// next stream from another node, over many rounds: the old follower's leaving must not
/// undo the subscription the new one relies on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_follower_replacing_the_last_one_on_a_node_gets_the_next_stream() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    // Sessions replaced in parallel, several times each, the old follower closed just
    // before or just after the new one opens.
    let sessions = (0..20).map(|s| {
        let (n1, n2) = (&n1, &n2);
        async move {
            let session = format!("replaced-{s}");
            let path = format!("/api/sessions/{session}/events");
            let mut old = LineReader::open(http().get(n2.url(&path))).await;
            assert_eq!(old.status, 200);
            for round in 0..5 {
                let open = LineReader::open(http().get(n2.url(&path)));
                let mut new = if (s + round) % 2 == 0 {
                    drop(old);
                    open.await
                } else {
                    let new = open.await;
                    drop(old);
                    new
                };
                assert_eq!(new.status, 200);
                let all =
                    post_ndjson(&n1.url(CHAT), &chat(json!({"chunks": 3}), Some(&session))).await;
                check_rules(&all);
                follows_whole(&mut new, &all, &format!("{session}, round {round}")).await;
                old = new;
            }
        }
    });
    futures_util::future::join_all(sessions).await;
}

/// A follower that arrives while Redis is unreachable (paused, shorter than the outage
/// bound) is answered, and once Redis is back the node takes the session's subscription
/// by itself: a stream the session starts on another node afterwards reaches it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_follower_that_came_during_an_outage_gets_the_sessions_next_stream() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let session = "sess-outage";
    redis.pause();
    let mut follower = session_follower(&n2, session).await;
    redis.resume();
    eventually_async("both nodes ready again", || async {
        n1.ready().await && n2.ready().await
    })
    .await;
    let all = short_session_stream(&n1, session).await;
    follows_whole(
        &mut follower,
        &all,
        "the follower that came during the outage",
    )
    .await;
}

/// A session's stream ended by a takeover (its owner killed) moves from the session's
/// live set to its ended set, as by its owner's last write, and is not sent to a
/// follower that joins the session afterwards on another node; the session's next
/// stream is, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_follower_joining_after_a_takeover_gets_only_the_sessions_next_stream() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2, n3) = three_nodes(&redis).await;
    let session = "sess-taken-over";
    let (owner, _, id) = start_session_chat(
        &n1,
        json!({"chunks": 100000, "interval_ms": 20}),
        Some(session),
        |v| v["event"] == "chunk",
    )
    .await;
    let mut reader = LineReader::open(http().get(n2.url(&format!("/api/streams/{id}")))).await;
    let mut seen = reader.until(|v| v["event"] == "chunk").await;
    drop(owner);
    n1.kill().await;
    seen.extend(reader.rest().await);
    assert_eq!(
        end_of(&contiguous(&seen, 0)),
        ("error".into(), "node_lost".into())
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut score = async |set: &str| -> Option<f64> {
        redis::cmd("ZSCORE")
            .arg(format!("sy:{{s:{session}}}:{set}"))
            .arg(&id)
            .query_async(&mut c)
            .await
            .unwrap()
    };
    assert_eq!(score("live").await, None, "out of the live set");
    assert!(score("ended").await.is_some(), "in the ended set");
    let mut follower = session_follower(&n3, session).await;
    let all = post_ndjson(&n2.url(CHAT), &chat(json!({"chunks": 3}), Some(session))).await;
    check_rules(&all);
    follows_whole(
        &mut follower,
        &all,
        "the follower that joined after the takeover",
    )
    .await;
}

/// Many streams started at once, each in a session of its own that a follower on the
/// owner's node and one on another node listen to before it starts: every follower gets
/// its stream whole, each event once, in order (the announcement that makes the other
/// node mirror a stream must not arrive before the stream is in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_every_new_stream_of_a_session_reaches_its_followers_on_every_node() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    const STREAMS: usize = 150;
    let runs = (0..STREAMS).map(|i| {
        let (n1, n2) = (&n1, &n2);
        async move {
            let session = format!("burst-{i}");
            let (mut near, mut far) = tokio::join!(
                session_follower(n1, &session),
                session_follower(n2, &session)
            );
            let all = post_ndjson(
                &n1.url(CHAT),
                &chat(json!({"chunks": 10, "interval_ms": 2}), Some(&session)),
            )
            .await;
            check_rules(&all);
            for (follower, node) in [(&mut near, "owner's node"), (&mut far, "other node")] {
                follows_whole(follower, &all, &format!("{session} on the {node}")).await;
            }
        }
    });
    futures_util::future::join_all(runs).await;
}

/// Cancel from another node, over HTTP: the owner ends the stream with
/// `completion {cancelled}` + `end {cancelled}`, which every subscriber gets; an unknown
/// id is 404, an ended one `{cancelled: false}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_cancel_from_another_node() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2, n3) = three_nodes(&redis).await;
    let (mut owner, head, id) =
        start_chat(&n1, json!({"chunks": 100000, "interval_ms": 20}), |v| {
            v["event"] == "chunk"
        })
        .await;
    let mut mirror =
        LineReader::open(http().get(n2.url(&format!("/api/streams/{id}?after=0")))).await;
    mirror.until(|v| v["event"] == "chunk").await;
    let r: Value = http()
        .post(n3.url(&format!("/api/ai/cancel/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["cancelled"], true);
    let mut all = head;
    all.extend(owner.rest().await);
    let all = contiguous(&all, 0);
    assert_eq!(end_of(&all), ("cancelled".into(), "cancelled".into()));
    let tail = mirror.rest().await;
    assert_eq!(end_of(&tail), ("cancelled".into(), "cancelled".into()));
    let r: Value = http()
        .post(n2.url(&format!("/api/ai/cancel/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["cancelled"], false, "already ended");
    let unknown = http()
        .post(n3.url("/api/ai/cancel/never-was"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

/// `kill -9` of the node running a stream: subscribers on the other nodes get
/// `error {node_lost}` + `end {error}` within a few seconds, contiguous; a resume
/// afterwards gets the same end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_kill_9_of_the_owner_ends_its_streams_with_node_lost() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2, n3) = three_nodes(&redis).await;
    let mut ids = Vec::new();
    let mut owners = Vec::new();
    for _ in 0..20 {
        let mut owner = LineReader::open(
            http()
                .post(n1.url(CHAT))
                .json(&chat(json!({"chunks": 100000, "interval_ms": 20}), None)),
        )
        .await;
        let head = owner.until(|v| v["event"] == "chunk").await;
        ids.push(
            head[0]["data"]["metadata"]["request_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        owners.push(owner);
    }
    let mut readers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let node = if i % 2 == 0 { &n2 } else { &n3 };
        let mut r = LineReader::open(http().get(node.url(&format!("/api/streams/{id}")))).await;
        let head = r.until(|v| v["event"] == "chunk").await;
        readers.push((head, r));
    }
    drop(owners);
    n1.kill().await;
    let killed = Instant::now();
    for (mut all, mut r) in readers {
        all.extend(r.rest().await);
        let all = contiguous(&all, 0);
        assert_eq!(end_of(&all), ("error".into(), "node_lost".into()));
    }
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "ended after {:?}",
        killed.elapsed()
    );
    let again = http()
        .get(n2.url(&format!("/api/streams/{}", ids[0])))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let again = contiguous(&parse_ndjson(&again), 0);
    assert_eq!(end_of(&again), ("error".into(), "node_lost".into()));
    let takeovers = n2
        .metric("switchyard_cluster_takeovers_total")
        .await
        .unwrap_or(0.0)
        + n3.metric("switchyard_cluster_takeovers_total")
            .await
            .unwrap_or(0.0);
    assert_eq!(
        takeovers,
        ids.len() as f64,
        "each lost stream taken over once"
    );
}

/// Redis unreachable (SIGSTOP) longer than the bound while streams run: owners end them
/// with `error {cluster_unavailable}` + `end {error}` for their local subscribers, never a
/// hang; after SIGCONT the node serves new streams again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_redis_down_past_the_bound_ends_live_streams_explicitly() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let (mut owner, head, id) =
        start_chat(&n1, json!({"chunks": 100000, "interval_ms": 20}), |v| {
            v["event"] == "chunk"
        })
        .await;
    let mut remote = LineReader::open(http().get(n2.url(&format!("/api/streams/{id}")))).await;
    remote.until(|v| v["event"] == "chunk").await;
    redis.pause();
    let mut all = head;
    all.extend(owner.rest().await);
    let all = contiguous(&all, 0);
    assert_eq!(end_of(&all), ("error".into(), "cluster_unavailable".into()));
    let tail = remote.rest().await;
    assert_eq!(
        end_of(&tail),
        ("error".into(), "cluster_unavailable".into())
    );
    redis.resume();
    eventually_async("n1 ready again", || n1.ready()).await;
    // The owner writes what its subscribers read, the end included, once Redis is back:
    // a reader elsewhere later reads the same stream.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("sy:{{{id}}}:meta");
    let want = all.len() as u64;
    eventually_async("Redis holds the owner's whole stream", || {
        let (mut c, key) = (c.clone(), key.clone());
        async move {
            let v: (Option<u64>, Option<String>) = redis::cmd("HMGET")
                .arg(key)
                .arg("top")
                .arg("ended")
                .query_async(&mut c)
                .await
                .unwrap();
            v == (Some(want), Some("1".into()))
        }
    })
    .await;
    let _ = &mut c;
    let r = http()
        .post(n1.url(CHAT))
        .json(&chat(json!({"chunks": 3}), None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    check_rules(&parse_ndjson(&r.text().await.unwrap()));
}

/// Redis restarted empty mid-stream: the owner's subscribers and a remote subscriber
/// each get a contiguous stream with one `end`: it goes on, or ends with an explicit
/// error; never a silent gap, a duplicate or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_redis_restarted_empty_never_leaves_a_gap_or_a_hang() {
    if !needs::redis() {
        return;
    }
    let mut redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let (mut owner, head, id) = start_chat(&n1, json!({"chunks": 150, "interval_ms": 20}), |v| {
        v["event"] == "chunk"
    })
    .await;
    let mut remote = LineReader::open(http().get(n2.url(&format!("/api/streams/{id}")))).await;
    remote.until(|v| v["event"] == "chunk").await;
    redis.restart_empty().await;
    let mut all = head;
    all.extend(owner.rest().await);
    let all = contiguous(&all, 0);
    let end = end_of(&all);
    assert!(
        end == ("completed".into(), "complete".into()) || end.0 == "error",
        "{end:?}"
    );
    let tail = remote.rest().await;
    let end = end_of(&tail);
    assert!(
        end == ("completed".into(), "complete".into()) || end.0 == "error",
        "{end:?}"
    );
}

/// POSTs `body` and reads the whole answer, within [`WAIT`].
async fn post_all(url: String, body: Value) -> Vec<Value> {
    let read = async { http().post(url).json(&body).send().await?.text().await };
    let text = tokio::time::timeout(WAIT, read)
        .await
        .expect("the stream ends in time")
        .unwrap();
    parse_ndjson(&text)
}

fn sio_at(node: &Node, transports: &[&str], steps: Value) -> Value {
    json!({"url": node.base, "transports": transports, "steps": steps, "global_timeout_ms": 30000})
}

/// The real Socket.IO clients on other nodes than the stream's: `resume` (Node
/// socket.io-client 4.x) gets exactly the missing events, `cancel` (python-socketio)
/// ends the stream for everyone, and a session room member (Node, long-polling) gets a
/// stream started over HTTP on another node, once and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_socketio_clients_resume_cancel_and_follow_across_nodes() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2, n3) = three_nodes(&redis).await;
    // Resume on n2 of a stream n1 ran.
    let all = post_all(
        n1.url("/api/ai/agent/execute"),
        json!({"request_id": "ag-x", "messages": [{"role": "user", "content": "a b c d"}]}),
    )
    .await;
    check_rules(&all);
    let steps = json!([
        {"emit": "resume", "data": {"request_id": "ag-x", "after": 2}, "ack": true},
        {"wait_for": "end", "count": 1}
    ]);
    let (lines, code) = Sio::spawn(Client::Node, sio_at(&n2, &["websocket"], steps))
        .finish()
        .await;
    assert_eq!(code, 0);
    let got: Vec<Value> = events_of(&lines)
        .into_iter()
        .map(|(n, p)| json!({"event": n, "seq": p["seq"], "data": p["data"]}))
        .collect();
    assert_eq!(got, all[3..].to_vec());

    // A room member on n3 (long-polling), then a stream of its session started on n1.
    let mut member = Sio::spawn(
        Client::Node,
        sio_at(
            &n3,
            &["polling"],
            json!([
                {"emit": "join", "data": {"session_id": "sess-io"}, "ack": true},
                {"wait_for": "chat_complete", "count": 1}
            ]),
        ),
    );
    member.expect_type("ack").await;
    let owner = parse_ndjson(
        &http()
            .post(n1.url(CHAT))
            .json(&chat(
                json!({"chunks": 25, "interval_ms": 5}),
                Some("sess-io"),
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let texts = check_rules(&owner);
    let (lines, code) = member.finish().await;
    assert_eq!(code, 0);
    let legacy = events_of(&lines);
    let chunks = legacy.iter().filter(|(n, _)| n == "chat_chunk").count();
    assert_eq!(chunks, texts.len(), "each chunk once: {legacy:?}");
    assert_eq!(
        legacy.iter().filter(|(n, _)| n == "chat_complete").count(),
        1
    );

    // Cancel from python-socketio on n2 of a stream n1 runs.
    let mut stream = LineReader::open(
        http()
            .post(n1.url(CHAT))
            .json(&json!({"request_id": "h1", "options": {"chunks": 100000, "interval_ms": 20}})),
    )
    .await;
    stream.until(|v| v["seq"] == 2).await;
    let (lines, code) = Sio::spawn(
        Client::Python,
        sio_at(
            &n2,
            &["websocket"],
            json!([{"emit": "cancel", "data": {"request_id": "h1"}, "ack": true}]),
        ),
    )
    .finish()
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        lines.iter().find(|l| l["type"] == "ack").unwrap()["data"],
        json!({"cancelled": true})
    );
    let rest = stream.rest().await;
    let n = rest.len();
    assert_eq!(rest[n - 2]["data"]["status"], "cancelled");
    assert_eq!(rest[n - 1]["data"]["reason"], "cancelled");
}

/// A TCP proxy the test owns between one node and Redis: `cut` drops every connection
/// and refuses new ones until `heal`.
struct Proxy {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

use std::sync::Arc;

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c, list) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            cut,
            conns,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Two nodes, the first (`cut`) reaching Redis through a proxy the test can cut.
async fn cuttable_pair(redis: &Redis) -> (Proxy, Node, Node) {
    let proxy = Proxy::start(redis.port).await;
    let (purl, url) = (proxy.url(), redis.url());
    let (cut, other) = tokio::join!(
        Node::start(NodeSpec::new(&purl, "cut")),
        Node::start(NodeSpec::new(&url, "n2"))
    );
    (proxy, cut, other)
}

/// Cuts `node`'s link to Redis (it goes through `proxy`) until the node notices: its
/// `/readyz` fails.
async fn cut_off(proxy: &Proxy, node: &Node) {
    proxy.cut();
    eventually_async("the cut node notices", || async {
        node.status("/readyz").await == 503
    })
    .await;
}

/// A short stream of `session` run on `node` to its end (5 chunks 5 ms apart), checked.
async fn short_session_stream(node: &Node, session: &str) -> Vec<Value> {
    let all = post_ndjson(
        &node.url(CHAT),
        &chat(json!({"chunks": 5, "interval_ms": 5}), Some(session)),
    )
    .await;
    check_rules(&all);
    all
}

/// Waits until `node` holds no stream (it let every retained one go).
async fn holds_nothing(node: &Node) {
    eventually_async("the node released its copies", || async {
        node.metric("switchyard_streams_held").await == Some(0.0)
    })
    .await;
}

/// A follower of `session` on `node`, listening once it returns.
async fn session_follower(node: &Node, session: &str) -> LineReader {
    let follower =
        LineReader::open(http().get(node.url(&format!("/api/sessions/{session}/events")))).await;
    assert_eq!(follower.status, 200);
    follower
}

/// One node cut off from Redis (its link through a proxy the test cuts): the other
/// nodes end its streams with `node_lost` once its lease is gone; it ends them for its
/// own subscribers with `cluster_unavailable` and refuses new work; healed, it is ready
/// again and has written nothing more to the streams it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_node_cut_off_from_redis_loses_its_streams_and_never_writes_them_again() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (proxy, n1, n2) = cuttable_pair(&redis).await;
    let (mut owner, head, id) =
        start_chat(&n1, json!({"chunks": 100000, "interval_ms": 20}), |v| {
            v["event"] == "chunk"
        })
        .await;
    let mut remote = LineReader::open(http().get(n2.url(&format!("/api/streams/{id}")))).await;
    let remote_head = remote.until(|v| v["event"] == "chunk").await;
    proxy.cut();
    let mut tail = remote_head;
    tail.extend(remote.rest().await);
    let tail = contiguous(&tail, 0);
    assert_eq!(end_of(&tail), ("error".into(), "node_lost".into()));
    let mut mine = head;
    mine.extend(owner.rest().await);
    let mine = contiguous(&mine, 0);
    assert_eq!(end_of(&mine).0, "error");
    eventually_async("the cut node is not ready", || async {
        n1.status("/readyz").await == 503
    })
    .await;
    proxy.heal();
    eventually_async("ready again once healed", || n1.ready()).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let top = |c: &mut redis::aio::MultiplexedConnection| {
        let key = format!("sy:{{{id}}}:meta");
        let mut c = c.clone();
        async move {
            let v: Option<u64> = redis::cmd("HGET")
                .arg(key)
                .arg("top")
                .query_async(&mut c)
                .await
                .unwrap();
            v
        }
    };
    let before = top(&mut c).await;
    assert_eq!(
        before,
        Some(tail.len() as u64),
        "Redis holds exactly what n2 read"
    );
    // Let the healed node flush anything it still held: nothing may land.
    let r = http()
        .post(n1.url(CHAT))
        .json(&chat(json!({"chunks": 3}), None))
        .send()
        .await
        .unwrap();
    check_rules(&parse_ndjson(&r.text().await.unwrap()));
    assert_eq!(
        top(&mut c).await,
        before,
        "the replaced node wrote nothing more"
    );
}

/// A session followed on a node whose Redis link is cut: a stream the session starts on
/// another node during the cut, still running when the link heals, reaches the follower
/// whole (its node reads the session's live streams again once Redis answers), as does
/// the session's next stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_follower_whose_node_was_cut_off_gets_the_stream_started_meanwhile() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (proxy, cut, n2) = cuttable_pair(&redis).await;
    let session = "sess-cut";
    let mut follower = session_follower(&cut, session).await;
    cut_off(&proxy, &cut).await;
    let mut owner = LineReader::open(http().post(n2.url(CHAT)).json(&chat(
        json!({"chunks": 60, "interval_ms": 50}),
        Some(session),
    )))
    .await;
    let mut all = owner.until(|v| v["event"] == "chunk").await;
    proxy.heal();
    all.extend(owner.rest().await);
    check_rules(&all);
    follows_whole(&mut follower, &all, "the stream started during the cut").await;
    let next = short_session_stream(&n2, session).await;
    follows_whole(&mut follower, &next, "the session's next stream").await;
}

/// A session followed on a node whose Redis link is cut: a stream the session starts and
/// finishes on another node during the cut reaches the follower whole once the link
/// heals (its node reads the session's streams ended meanwhile), then the session's next
/// stream, and nothing twice (not the stream it read just before the cut, though its
/// node let its copy go during the cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_follower_whose_node_was_cut_off_gets_a_stream_that_started_and_ended_meanwhile()
{
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (proxy, cut, n2) = cuttable_pair(&redis).await;
    let session = "sess-cut-whole";
    let mut follower = session_follower(&cut, session).await;
    let before = short_session_stream(&n2, session).await;
    follows_whole(&mut follower, &before, "the stream before the cut").await;
    cut_off(&proxy, &cut).await;
    // Its copy of the stream before is let go during the cut: that stream (started just
    // before the cut) must not be offered again once the link heals.
    holds_nothing(&cut).await;
    let during = short_session_stream(&n2, session).await;
    proxy.heal();
    follows_whole(
        &mut follower,
        &during,
        "the stream that started and ended during the cut",
    )
    .await;
    let next = short_session_stream(&n2, session).await;
    follows_whole(&mut follower, &next, "the session's next stream").await;
}

/// A session stream a follower read whole on its node, released there since, is not
/// sent to that follower again when a client resumes it on that node (the resume's copy
/// of an ended stream stands outside the session); the session's next stream is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_resume_of_an_ended_session_stream_is_not_sent_to_its_followers_again() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let session = "sess-resumed";
    let mut follower = session_follower(&n2, session).await;
    let first = short_session_stream(&n1, session).await;
    follows_whole(&mut follower, &first, "the session's stream").await;
    holds_nothing(&n2).await;
    let id = first[0]["data"]["metadata"]["request_id"].as_str().unwrap();
    let r = http()
        .get(n2.url(&format!("/api/streams/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(parse_ndjson(&r.text().await.unwrap()), first);
    let next = short_session_stream(&n1, session).await;
    follows_whole(
        &mut follower,
        &next,
        "the session's next stream, and nothing else",
    )
    .await;
}

/// A session stream a follower's node ended because its Redis link was cut for longer
/// than the outage bound (the follower was sent `error` + `end`), still running when
/// the link heals, is not sent to that follower again, even after the node released
/// its copy; the session's next stream is, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_stream_a_cut_off_node_ended_for_its_follower_is_not_sent_again() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (proxy, cut, n2) = cuttable_pair(&redis).await;
    let session = "sess-cut-short";
    let mut follower = session_follower(&cut, session).await;
    let (owner, _, id) = start_session_chat(
        &n2,
        json!({"chunks": 100000, "interval_ms": 50}),
        Some(session),
        |v| v["event"] == "chunk",
    )
    .await;
    let mut seen = follower
        .until(|v| v["event"] == "chunk" && v["request_id"] == id.as_str())
        .await;
    proxy.cut();
    seen.extend(follower.until(|v| v["event"] == "end").await);
    let seen: Vec<Value> = seen
        .into_iter()
        .filter(|v| v["event"] != "heartbeat")
        .collect();
    let seen = contiguous(&seen, 0);
    assert_eq!(
        end_of(&seen),
        ("error".into(), "cluster_unavailable".into())
    );
    // The cut node lets its copy go (its follower read the end): a resume there finds none.
    eventually_async("the cut node released its copy", || async {
        cut.status(&format!("/api/streams/{id}")).await != 200
    })
    .await;
    proxy.heal();
    eventually_async("the cut node is ready again", || cut.ready()).await;
    // A resume on the healed node reads the stream again, outside the session.
    let mut resumed = LineReader::open(http().get(cut.url(&format!("/api/streams/{id}")))).await;
    assert_eq!(resumed.status, 200);
    resumed.until(|v| v["event"] == "chunk").await;
    let next = short_session_stream(&n2, session).await;
    follows_whole(
        &mut follower,
        &next,
        "the session's next stream, and nothing else",
    )
    .await;
    drop(owner);
}

/// Redis paused (SIGSTOP) for less than the bound while streams run: every subscriber,
/// local or remote, gets every event once; the streams complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_short_redis_pause_loses_and_repeats_nothing() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let mut pairs = Vec::new();
    for i in 0..10 {
        let (owner, head, id) = start_chat(&n1, json!({"chunks": 80, "interval_ms": 20}), |v| {
            v["event"] == "chunk"
        })
        .await;
        let node = if i % 2 == 0 { &n2 } else { &n1 };
        let mut remote =
            LineReader::open(http().get(node.url(&format!("/api/streams/{id}")))).await;
        let remote_head = remote.until(|v| v["event"] == "chunk").await;
        pairs.push(((head, owner), (remote_head, remote)));
    }
    redis.pause();
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.resume();
    for ((mut a, mut ra), (mut b, mut rb)) in pairs {
        a.extend(ra.rest().await);
        b.extend(rb.rest().await);
        let a = contiguous(&a, 0);
        check_rules(&a);
        assert_eq!(end_of(&a), ("completed".into(), "complete".into()));
        assert_eq!(contiguous(&b, 0), a);
    }
}

/// A node drained for a deploy (SIGTERM): its streams end with `completion {shutdown}` +
/// `end {shutdown}`, replicated; a client of the drained node reconnects to another node
/// and resumes where it was, reading the same end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_drained_nodes_client_resumes_on_another_node() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let url = redis.url();
    let mut spec = NodeSpec::new(&url, "leaving");
    spec.env
        .push(("SWITCHYARD_SHUTDOWN__GRACE_SECS", "1".into()));
    let (n1, n2) = tokio::join!(
        Node::start(spec),
        Node::start(NodeSpec::new(&url, "staying"))
    );
    let (owner, head, id) = start_chat(&n1, json!({"chunks": 100000, "interval_ms": 20}), |v| {
        v["seq"] == 5
    })
    .await;
    n1.terminate();
    // The client loses its node; it resumes on another from the last seq it had.
    drop(owner);
    let mut resumed =
        LineReader::open(http().get(n2.url(&format!("/api/streams/{id}?after=5")))).await;
    assert_eq!(resumed.status, 200);
    let mut all = head;
    all.extend(resumed.rest().await);
    let all = contiguous(&all, 0);
    assert_eq!(end_of(&all), ("shutdown".into(), "shutdown".into()));
}

/// A hand edit of one node's flags file is pushed to the cluster: in force on every node
/// within 2 s of being applied, and in the cluster's audit as `file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_hand_edit_on_one_node_reaches_every_node() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2, n3) = three_nodes(&redis).await;
    let version = n1.flags().await["version"].as_u64().unwrap();
    let text = format!(
        "version = {}\n[route.chat]\nmode = \"new\"\n[route.agent]\nmode = \"dual\"\n[route.tools]\nmode = \"dual\"\n",
        version + 1
    );
    std::fs::write(n1.flags_dir.join("flags.toml"), text).unwrap();
    let at = Instant::now();
    for n in [&n1, &n2, &n3] {
        eventually_async("the hand edit is in force everywhere", || async {
            n.flags().await["routes"]["chat"]["mode"] == "new"
        })
        .await;
    }
    assert!(at.elapsed() < Duration::from_secs(2), "{:?}", at.elapsed());
    let audit: Value = http()
        .get(n3.url("/admin/audit?limit=5"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let newest = &audit["entries"][0];
    assert_eq!(
        (newest["actor"].as_str(), newest["route"].as_str()),
        (Some("file"), Some("chat")),
        "{audit}"
    );
}

/// `switchyard check` validates the `[cluster]` section, and names the node and Redis
/// (without a password) when it is valid.
#[tokio::test]
async fn cluster_settings_are_checked_by_switchyard_check() {
    let run = |env: Vec<(&'static str, &'static str)>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("check").current_dir(repo());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let bad = run(vec![
        ("SWITCHYARD_CLUSTER__REDIS_URL", "redis://127.0.0.1:6379/"),
        ("SWITCHYARD_CLUSTER__LEASE_MS", "100"),
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("cluster.lease_ms"), "{err}");
    let good = run(vec![
        (
            "SWITCHYARD_CLUSTER__REDIS_URL",
            "redis://:secret@10.0.0.5:6379/",
        ),
        ("SWITCHYARD_CLUSTER__NODE_ID", "bridge-a"),
    ]);
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{out}");
    assert!(
        out.contains("cluster: node bridge-a on Redis 10.0.0.5:6379/"),
        "{out}"
    );
    assert!(!out.contains("secret"), "{out}");
}

/// Every key the cluster writes in Redis is under the prefix and expires (streams, their
/// session index, node liveness, the flags and their audit): nothing in Redis outlives
/// its use without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_every_redis_key_is_prefixed_and_expiring() {
    if !needs::redis() {
        return;
    }
    let redis = Redis::start().await;
    let (n1, n2, _n3) = three_nodes(&redis).await;
    let (status, _) = n1.put_flag("chat", json!({"mode": "new"}), None).await;
    assert_eq!(status, 200);
    let _ = &n2;
    let done = post_all(
        n1.url(CHAT),
        chat(json!({"chunks": 5, "interval_ms": 5}), Some("keys")),
    )
    .await;
    check_rules(&done);
    let mut live = LineReader::open(http().post(n1.url(CHAT)).json(&chat(
        json!({"chunks": 100000, "interval_ms": 20}),
        Some("keys"),
    )))
    .await;
    live.until(|v| v["event"] == "chunk").await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.len() >= 6, "{keys:?}");
    for key in &keys {
        assert!(key.starts_with("sy:"), "{key} is under the prefix");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} expires (PTTL {ttl})");
    }
}

/// A Redis Stream entry holds a batch of lines: the log keeps at most
/// `cluster.log_max_events` events, but never drops the batch that holds the oldest kept
/// one, so a resume on another node from there reads every event to the end, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_trimmed_log_keeps_the_batch_holding_its_oldest_kept_event() {
    if !needs::redis() {
        return;
    }
    const KEPT: u64 = 8;
    let redis = Redis::start().await;
    let url = redis.url();
    let mut spec = NodeSpec::new(&url, "n1");
    spec.env
        .push(("SWITCHYARD_CLUSTER__LOG_MAX_EVENTS", KEPT.to_string()));
    let (n1, n2) = tokio::join!(Node::start(spec), Node::start(NodeSpec::new(&url, "n2")));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for (i, interval) in [0, 1, 3].into_iter().enumerate() {
        let id = format!("trimmed-{i}");
        let mut body = chat(json!({"chunks": 80, "interval_ms": interval}), None);
        body["request_id"] = json!(id);
        let all = contiguous(&post_all(n1.url(CHAT), body).await, 0);
        check_rules(&all);
        let top = all.len() as u64;
        let kept_from = top - KEPT;
        let first: u64 = redis::cmd("HGET")
            .arg(format!("sy:{{{id}}}:meta"))
            .arg("first")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(first <= kept_from, "{id}: the log holds from {first}");
        if interval > 0 {
            assert!(first > 0, "{id}: the log was trimmed");
        }
        let mut r = LineReader::open(
            http().get(n2.url(&format!("/api/streams/{id}?after={}", kept_from - 1))),
        )
        .await;
        assert_eq!(r.status, 200, "{id}: resume from the oldest kept event");
        let tail = contiguous(&r.rest().await, kept_from);
        assert_eq!(tail, all[kept_from as usize..].to_vec(), "{id}");
    }
}
