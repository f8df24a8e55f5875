//! A census of a running bridge: the process's own figures from `/proc` (resident memory,
//! its peak, threads; read by the load generator's `procfs`), and the bridge's own view
//! from `/metrics` (streams, sockets, runtime tasks, ends by reason).

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_loadgen::procfs;

/// One `/proc` reading of process `pid` (which must be alive).
pub fn sample(pid: u32) -> procfs::Sample {
    procfs::sample(&pid.to_string()).unwrap_or_else(|e| panic!("census of {pid}: {e}"))
}

/// Resident memory of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    sample(pid).rss_kb * 1024
}

/// Peak resident memory of a process (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    sample(pid).hwm_kb * 1024
}

/// Threads of a process.
pub fn threads(pid: u32) -> u64 {
    sample(pid).threads
}

/// `name{labels}` → value, from the Prometheus text exposition.
pub fn scrape(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The bridge's own view, from `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Census {
    /// Streams running.
    pub running: f64,
    /// Streams held (running or kept for resume).
    pub held: f64,
    /// Socket.IO connections.
    pub sockets: f64,
    /// Runtime tasks alive.
    pub tasks: f64,
    /// Streams started since start-up.
    pub started: f64,
    /// Streams finished since start-up, by reason.
    pub ended: BTreeMap<String, f64>,
}

impl Census {
    /// Streams that ended with `reason` since start-up.
    pub fn ended(&self, reason: &str) -> f64 {
        self.ended.get(reason).copied().unwrap_or(0.0)
    }
}

/// Reads the census of the bridge at `base`.
pub async fn census(scraper: &reqwest::Client, base: &str) -> Census {
    let m = scrape(&super::text(scraper.get(format!("{base}/metrics"))).await);
    let sum = |prefix: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    let mut ended = BTreeMap::new();
    for (k, v) in &m {
        if let Some(rest) = k.strip_prefix("switchyard_streams_finished_total{") {
            let reason = rest
                .split("reason=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            *ended.entry(reason.to_string()).or_insert(0.0) += v;
        }
    }
    Census {
        running: sum("switchyard_active_streams{"),
        held: sum("switchyard_streams_held"),
        sockets: sum("switchyard_socketio_connections{"),
        tasks: sum("switchyard_runtime_tasks"),
        started: sum("switchyard_streams_started_total{"),
        ended,
    }
}

/// Waits (at most 30 s) until no stream runs or is held and no socket is open, then
/// until the task count stops falling (readings 300 ms apart); returns the settled census.
pub async fn settle(scraper: &reqwest::Client, base: &str) -> Census {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = census(scraper, base).await;
        if c.running == 0.0 && c.held == 0.0 && c.sockets == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {} streams running, {} held, {} sockets open ({} tasks alive)",
            c.running,
            c.held,
            c.sockets,
            c.tasks
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut last = census(scraper, base).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = census(scraper, base).await;
        if c.tasks >= last.tasks || tokio::time::Instant::now() > deadline {
            return c;
        }
        last = c;
    }
}
