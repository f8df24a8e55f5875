//! The cluster benchmark (`cargo bench --bench cluster`, or `bench/run --cluster`): one
//! bridge alone and, beside it, Redis and two bridges on this machine, with streams
//! produced on one node and read on the other (and, to compare, the same second reader on
//! the owner's node), these four modes' rounds interleaved; then session followers
//! listening on both nodes before their streams start (what replication adds, with no
//! request of the reader's own in the way), and resumes sent to both nodes at once.
//! Reports events/s,
//! first-chunk and end-to-end latency p50/p99, and CPU per event of the owner and of
//! Redis; every stream is checked (its
//! `seq` contiguous from 0 to one `end`, on every reader): any lost or duplicated event
//! fails the run. Figures, not a timed test: the README quotes them.
//!
//! Needs the release binary (`cargo build --release`) and `redis-server` on PATH.
//! `CLUSTER_BENCH_STREAMS` (default 100) streams at once, `CLUSTER_BENCH_CHUNKS` (200)
//! chunks each, `CLUSTER_BENCH_ROUNDS` (5) rounds per mode, `CLUSTER_BENCH_INTERVAL_MS`
//! (0: as fast as the engine writes; set it to measure latency below saturation).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release binary (under `CARGO_TARGET_DIR` when set).
fn binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("release/switchyard")
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

async fn start_node(redis: Option<&str>, id: &str) -> Res<(Child, String)> {
    let flags = tempfile::tempdir()?.keep();
    std::fs::copy(
        repo().join("flags/flags.example.toml"),
        flags.join("flags.toml"),
    )?;
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .current_dir(repo())
        .env("SWITCHYARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_FLAGS_DIR", &flags)
        .env("SWITCHYARD_LIMITS__MAX_STREAMS_PER_SUBJECT", "0")
        .env("RUST_LOG", "warn,switchyard=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(url) = redis {
        cmd.env("SWITCHYARD_CLUSTER__REDIS_URL", url)
            .env("SWITCHYARD_CLUSTER__NODE_ID", id);
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    while let Some(line) = lines.next_line().await? {
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let base = format!("http://{}", addr.ok_or("the node did not start")?);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        if Instant::now() > deadline {
            return Err("the node never got ready".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, base))
}

/// Reads an NDJSON stream up to its `end` event (a session follower's body goes on
/// after it); returns (first chunk at, end at, seqs).
async fn read(resp: reqwest::Response, t0: Instant) -> Res<(Duration, Duration, Vec<u64>)> {
    if resp.status() != 200 {
        let status = resp.status();
        return Err(format!("{status}: {}", resp.text().await.unwrap_or_default()).into());
    }
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut seqs = Vec::new();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let v: Value = serde_json::from_slice(&line)?;
            if v["event"] == "heartbeat" {
                continue;
            }
            if v["event"] == "chunk" && first.is_none() {
                first = Some(t0.elapsed());
            }
            seqs.push(v["seq"].as_u64().ok_or("no seq")?);
            if v["event"] == "end" {
                let first = first.ok_or_else(|| format!("no chunk: {seqs:?}"))?;
                return Ok((first, t0.elapsed(), seqs));
            }
        }
    }
    let first = first.ok_or_else(|| format!("no chunk: {seqs:?}"))?;
    Ok((first, t0.elapsed(), seqs))
}

fn check(seqs: &[u64], what: &str) -> Res<()> {
    if seqs.iter().enumerate().any(|(i, s)| *s != i as u64) {
        return Err(format!("{what}: lost or duplicated events: {seqs:?}").into());
    }
    Ok(())
}

/// Starts stream `id` (in `session`, if any) on `owner`: `chunks` chunks of 32 bytes,
/// `CLUSTER_BENCH_INTERVAL_MS` apart; returns its response once the head came.
async fn start(
    client: &reqwest::Client,
    owner: &str,
    id: &str,
    session: Option<&str>,
    chunks: usize,
) -> reqwest::Result<reqwest::Response> {
    let mut body = json!({"request_id": id, "message": "bench",
        "options": {"chunks": chunks, "chunk_bytes": 32,
            "interval_ms": env_num("CLUSTER_BENCH_INTERVAL_MS", 0)}});
    if let Some(s) = session {
        body["session_id"] = json!(s);
    }
    client
        .post(format!("{owner}/api/ai/chat/unified"))
        .header("x-user-id", "bench")
        .json(&body)
        .send()
        .await
}

#[derive(Default)]
struct Round {
    events: u64,
    wall: Duration,
    first_owner: Vec<Duration>,
    first_remote: Vec<Duration>,
    end_owner: Vec<Duration>,
    end_remote: Vec<Duration>,
    /// A remote reader's response head after its request was sent.
    head_remote: Vec<Duration>,
    /// A remote reader's first chunk after its response head.
    chunk_after_head: Vec<Duration>,
}

/// A client that opens a new connection per request, as a crowd of separate clients.
fn fresh_connections() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder().pool_max_idle_per_host(0).build()
}

/// `streams` streams at once on `owner`, each also read on `remote` when given.
async fn round(
    owner: &str,
    remote: Option<&str>,
    streams: usize,
    chunks: usize,
    tag: &str,
) -> Res<Round> {
    let client = fresh_connections()?;
    let started = Instant::now();
    let runs = (0..streams).map(|i| {
        let client = client.clone();
        let id = format!("{tag}-{i}");
        async move {
            let t0 = Instant::now();
            let resp = start(&client, owner, &id, None, chunks).await?;
            let remote_read = async {
                match remote {
                    Some(r) => {
                        let sent = t0.elapsed();
                        let resp = client.get(format!("{r}/api/streams/{id}")).send().await?;
                        let head = t0.elapsed();
                        if resp.status() != 200 {
                            return Err(
                                format!("resume on the remote node: {}", resp.status()).into()
                            );
                        }
                        read(resp, t0)
                            .await
                            .map(|(first, end, seqs)| Some((first, end, seqs, head - sent, head)))
                    }
                    None => Ok(None),
                }
            };
            let (mine, theirs) = tokio::join!(read(resp, t0), remote_read);
            let mine = mine?;
            check(&mine.2, &id)?;
            if let Some(t) = &theirs? {
                check(&t.2, &format!("{id} (remote)"))?;
                if t.2.len() != mine.2.len() {
                    return Err(format!(
                        "{id}: the remote reader got {} of {}",
                        t.2.len(),
                        mine.2.len()
                    )
                    .into());
                }
                return Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                    mine,
                    Some((t.0, t.1, t.3, t.0.saturating_sub(t.4))),
                ));
            }
            Ok((mine, None))
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let wall = started.elapsed();
    let mut r = Round {
        wall,
        ..Round::default()
    };
    for res in results {
        let ((first, end, seqs), remote) = res?;
        r.events += seqs.len() as u64;
        r.first_owner.push(first);
        r.end_owner.push(end);
        if let Some((f, e, h, c)) = remote {
            r.first_remote.push(f);
            r.end_remote.push(e);
            r.head_remote.push(h);
            r.chunk_after_head.push(c);
        }
    }
    Ok(r)
}

impl Round {
    /// Adds round `r`'s streams to these.
    fn absorb(&mut self, r: Round) {
        self.events += r.events;
        self.wall += r.wall;
        self.first_owner.extend(r.first_owner);
        self.first_remote.extend(r.first_remote);
        self.end_owner.extend(r.end_owner);
        self.end_remote.extend(r.end_remote);
        self.head_remote.extend(r.head_remote);
        self.chunk_after_head.extend(r.chunk_after_head);
    }
}

/// How a stream's two extra readers, one on the owner's node and one on the other, read
/// it: as session followers listening before it starts, or as resumes sent together
/// when the requester's response head comes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pair {
    Follow,
    Resume,
}

/// First chunks seen by a stream's two extra readers (see [`Pair`]): one on the owner's
/// node, one on the other.
#[derive(Default)]
struct Followers {
    near: Vec<Duration>,
    far: Vec<Duration>,
    /// Per stream, the far follower's first chunk after the near one's (negative: before).
    far_minus_near: Vec<f64>,
}

impl Followers {
    /// Adds round `r`'s streams to these.
    fn absorb(&mut self, r: Followers) {
        self.near.extend(r.near);
        self.far.extend(r.far);
        self.far_minus_near.extend(r.far_minus_near);
    }
}

/// `streams` streams at once on `owner`, each read on `owner` and on `other` over HTTP
/// as `pair` says (followers: each stream in a session of its own).
async fn pair_round(
    owner: &str,
    other: &str,
    pair: Pair,
    streams: usize,
    chunks: usize,
    tag: &str,
) -> Res<Followers> {
    let client = fresh_connections()?;
    let runs = (0..streams).map(|i| {
        let client = client.clone();
        let id = format!("{tag}-{i}");
        let session = format!("{tag}-s{i}");
        async move {
            let follow = |base: &str| {
                client
                    .get(format!("{base}/api/sessions/{session}/events"))
                    .header("x-user-id", "bench")
                    .send()
            };
            let resume = |base: &str| {
                client
                    .get(format!("{base}/api/streams/{id}"))
                    .header("x-user-id", "bench")
                    .send()
            };
            let t0;
            let (resp, near, far) = match pair {
                Pair::Follow => {
                    // Both followers listen (their response heads came) before the
                    // stream starts.
                    let (near, far) = tokio::join!(follow(owner), follow(other));
                    let (near, far) = (near?, far?);
                    t0 = Instant::now();
                    let resp = start(&client, owner, &id, Some(&session), chunks).await?;
                    (resp, near, far)
                }
                Pair::Resume => {
                    t0 = Instant::now();
                    let resp = start(&client, owner, &id, None, chunks).await?;
                    let (near, far) = tokio::join!(resume(owner), resume(other));
                    (resp, near?, far?)
                }
            };
            // A follower that never gets its stream fails the run rather than hanging it.
            let bound = |r| tokio::time::timeout(Duration::from_secs(30), r);
            let (mine, near, far) = tokio::join!(
                bound(read(resp, t0)),
                bound(read(near, t0)),
                bound(read(far, t0))
            );
            let missed = |what: &str| format!("{id}: the {what} never got its end");
            let mine = mine.map_err(|_| missed("requester"))??;
            let near = near.map_err(|_| missed("reader on the owner's node"))??;
            let far = far.map_err(|_| missed("reader on the other node"))??;
            check(&mine.2, &id)?;
            check(&near.2, &format!("{id} (reader on the owner's node)"))?;
            check(&far.2, &format!("{id} (reader on the other node)"))?;
            if near.2.len() != mine.2.len() || far.2.len() != mine.2.len() {
                return Err(format!(
                    "{id}: the readers got {} and {} of {}",
                    near.2.len(),
                    far.2.len(),
                    mine.2.len()
                )
                .into());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((near.0, far.0))
        }
    });
    let mut r = Followers::default();
    for res in futures_util::future::join_all(runs).await {
        let (near, far) = res?;
        r.near.push(near);
        r.far.push(far);
        r.far_minus_near
            .push((far.as_secs_f64() - near.as_secs_f64()) * 1000.0);
    }
    Ok(r)
}

/// Extra readers on both nodes (see [`Pair`]): first chunk p50 / p99 of the near one,
/// of the far one, and of the far one's delay over the near one, per stream (ms).
async fn measure_pair(
    owner: &str,
    other: &str,
    pair: Pair,
    streams: usize,
    chunks: usize,
    rounds: usize,
) -> Res<[(f64, f64); 3]> {
    let tag = match pair {
        Pair::Follow => "followers",
        Pair::Resume => "resumers",
    };
    pair_round(owner, other, pair, streams, chunks, &format!("{tag}-warm")).await?;
    let mut all = Followers::default();
    for i in 0..rounds {
        let r = pair_round(owner, other, pair, streams, chunks, &format!("{tag}-{i}")).await?;
        all.absorb(r);
    }
    let d = &mut all.far_minus_near;
    d.sort_by(f64::total_cmp);
    let at = |p: f64| d[((d.len() as f64 - 1.0) * p).round() as usize];
    Ok([
        (pct(&mut all.near, 0.5), pct(&mut all.near, 0.99)),
        (pct(&mut all.far, 0.5), pct(&mut all.far, 0.99)),
        (at(0.5), at(0.99)),
    ])
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

struct Mode {
    name: &'static str,
    events_per_sec: f64,
    first: (f64, f64),
    end: (f64, f64),
    first_remote: (f64, f64),
    end_remote: (f64, f64),
    head_remote: (f64, f64),
    chunk_after_head: (f64, f64),
    owner_cpu_us: f64,
    redis_cpu_us: f64,
}

/// One mode of the bench: streams started on `owner` (its base URL and pid), each also
/// resumed on `remote` when given.
struct Setup<'a> {
    name: &'static str,
    owner: (&'a str, u32),
    remote: Option<&'a str>,
    redis_pid: Option<u32>,
}

/// Measures `setups` with their rounds interleaved (round i of every mode, then round
/// i + 1), so that the machine's drift over the run reaches every mode alike; CPU is
/// counted around each round of a mode.
async fn measure(
    setups: &[Setup<'_>],
    streams: usize,
    chunks: usize,
    rounds: usize,
) -> Res<Vec<Mode>> {
    let tag = |name: &str, round: &str| -> String {
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("{name}-{round}")
    };
    // One warm-up round each, not counted.
    for s in setups {
        round(s.owner.0, s.remote, streams, chunks, &tag(s.name, "warm")).await?;
    }
    let mut all: Vec<(Round, f64, f64)> = setups
        .iter()
        .map(|_| (Round::default(), 0.0, 0.0))
        .collect();
    for i in 0..rounds {
        for (s, (all, cpu, rcpu)) in setups.iter().zip(all.iter_mut()) {
            let (cpu0, rcpu0) = (cpu_secs(s.owner.1), s.redis_pid.map_or(0.0, cpu_secs));
            let r = round(
                s.owner.0,
                s.remote,
                streams,
                chunks,
                &tag(s.name, &i.to_string()),
            )
            .await?;
            *cpu += cpu_secs(s.owner.1) - cpu0;
            *rcpu += s.redis_pid.map_or(0.0, cpu_secs) - rcpu0;
            all.absorb(r);
        }
    }
    let both = |v: &mut Vec<Duration>| (pct(v, 0.5), pct(v, 0.99));
    Ok(setups
        .iter()
        .zip(all)
        .map(|(s, (mut all, cpu, rcpu))| {
            let per_event = |d: f64| d / all.events as f64 * 1e6;
            Mode {
                name: s.name,
                events_per_sec: all.events as f64 / all.wall.as_secs_f64(),
                first: both(&mut all.first_owner),
                end: both(&mut all.end_owner),
                first_remote: both(&mut all.first_remote),
                end_remote: both(&mut all.end_remote),
                head_remote: both(&mut all.head_remote),
                chunk_after_head: both(&mut all.chunk_after_head),
                owner_cpu_us: per_event(cpu),
                redis_cpu_us: per_event(rcpu),
            }
        })
        .collect())
}

#[tokio::main]
async fn main() -> Res<()> {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    let streams = env_num("CLUSTER_BENCH_STREAMS", 100);
    let chunks = env_num("CLUSTER_BENCH_CHUNKS", 200);
    let rounds = env_num("CLUSTER_BENCH_ROUNDS", 5);
    if !binary().exists() {
        return Err("build the release binary first: cargo build --release".into());
    }
    let (single, base) = start_node(None, "single").await?;
    let pid = single.id().ok_or("no pid")?;
    let port = free_port()?;
    let redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let redis_pid = redis.id();
    let url = format!("redis://127.0.0.1:{port}/");
    let (a, a_base) = start_node(Some(&url), "a").await?;
    let (_b, b_base) = start_node(Some(&url), "b").await?;
    let a_pid = a.id().ok_or("no pid")?;
    let cluster = |name, remote| Setup {
        name,
        owner: (&a_base, a_pid),
        remote,
        redis_pid,
    };
    let modes = measure(
        &[
            Setup {
                name: "single node",
                owner: (&base, pid),
                remote: None,
                redis_pid: None,
            },
            cluster("cluster, owner's clients local", None),
            cluster("cluster, + a reader on the other node", Some(&b_base)),
            // The same second reader, on the owner's node: what a second request costs
            // anyway.
            cluster("cluster, + a reader on the owner's node", Some(&a_base)),
        ],
        streams,
        chunks,
        rounds,
    )
    .await?;
    drop(single);
    let followers = measure_pair(&a_base, &b_base, Pair::Follow, streams, chunks, rounds).await?;
    let resumers = measure_pair(&a_base, &b_base, Pair::Resume, streams, chunks, rounds).await?;
    println!(
        "\n{streams} concurrent streams x {chunks} chunks of 32 bytes every {} ms, {rounds} rounds per mode, the first four modes' rounds interleaved; latencies from the POST (ms)\n",
        env_num("CLUSTER_BENCH_INTERVAL_MS", 0)
    );
    println!(
        "| mode | events/s | first chunk p50 / p99 | end p50 / p99 | remote first chunk p50 / p99 | remote end p50 / p99 | owner CPU/event | Redis CPU/event |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for m in &modes {
        println!(
            "| {} | {:.0} | {:.2} / {:.2} | {:.1} / {:.1} | {:.2} / {:.2} | {:.1} / {:.1} | {:.2} us | {:.2} us |",
            m.name,
            m.events_per_sec,
            m.first.0,
            m.first.1,
            m.end.0,
            m.end.1,
            m.first_remote.0,
            m.first_remote.1,
            m.end_remote.0,
            m.end_remote.1,
            m.owner_cpu_us,
            m.redis_cpu_us
        );
    }
    let same_node = modes[2].first_remote.1 - modes[3].first_remote.1;
    println!(
        "\nthe reader on the other node's first chunk p99 is {same_node:.2} ms after that of the same reader on the owner's node"
    );
    println!(
        "the remote reader's response head p50 / p99: {:.2} / {:.2} ms after its request was sent; its first chunk {:.2} / {:.2} ms after that head",
        modes[2].head_remote.0,
        modes[2].head_remote.1,
        modes[2].chunk_after_head.0,
        modes[2].chunk_after_head.1
    );
    let [near, far, delay] = followers;
    println!(
        "\nsession followers listening before each stream starts (one session per stream), first chunk p50 / p99: on the owner's node {:.2} / {:.2} ms, on the other node {:.2} / {:.2} ms; the other node's follower after the owner's node's, per stream: p50 {:.2} ms, p99 {:.2} ms",
        near.0, near.1, far.0, far.1, delay.0, delay.1
    );
    let [rnear, rfar, rdelay] = resumers;
    println!(
        "resumes sent together to both nodes when the requester's head comes, first chunk p50 / p99: on the owner's node {:.2} / {:.2} ms, on the other node {:.2} / {:.2} ms; the other node's after the owner's node's, per stream: p50 {:.2} ms, p99 {:.2} ms",
        rnear.0, rnear.1, rfar.0, rfar.1, rdelay.0, rdelay.1
    );
    let ratio = modes[1].events_per_sec / modes[0].events_per_sec;
    let added = modes[2].first_remote.1 - modes[2].first.1;
    println!(
        "\nowner with local clients: {:.0} % of single-node events/s (target >= 70 %); a reader on the other node adds to first chunk p99 (target < 2 ms): {:.2} ms for a session follower ({:.2} ms p99 per stream), {:.2} ms for a resume sent with one on the owner's node ({:.2} ms p99 per stream), {same_node:.2} ms for a resume against the same resume on the owner's node in the next mode; the resume's first chunk p99 is {added:.2} ms after the requester's (its own request included); every stream checked on every reader: no event lost or duplicated",
        ratio * 100.0,
        far.1 - near.1,
        delay.1,
        rfar.1 - rnear.1,
        rdelay.1,
    );
    Ok(())
}
