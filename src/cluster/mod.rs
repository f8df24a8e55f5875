//! The cluster (SPEC section 10): the only code that knows Redis.
//!
//! Owns the connection (redis-rs `ConnectionManager`: lazy, reconnecting with backoff),
//! every Redis key and channel the bridge uses ([`Keys`], all under `cluster.key_prefix`)
//! and every Lua script, this node's liveness key and the health it derives from it
//! ([`Cluster::available`]: Redis answered within `cluster.outage_timeout_ms`), and the
//! Redis side of the flags (`flags.rs`: the [`SharedFlags`] the flags store calls). It
//! never touches a flags file, a socket or an engine.
//!
//! [`SharedFlags`]: crate::flags::store::SharedFlags

mod flags;
mod streams;

pub use streams::{RedisLog, SessionWatch};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use crate::config::ClusterConfig;

/// Why the cluster could not be joined or a Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis_url: {0}")]
    Url(redis::RedisError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected: {0}")]
    Protocol(String),
}

/// Every key and channel name, in one place. Per-stream keys carry the stream's id in a
/// hash tag (`{…}`), so they stay in one slot of a Redis Cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// A node's liveness key (`SET … PX lease_ms`, renewed every heartbeat).
    pub fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// The flags document and its version (hash: `version`, `doc`).
    pub fn flags(&self) -> String {
        format!("{}:flags", self.prefix)
    }

    /// The cluster's flags audit log (list, newest first, capped at `cluster.audit_max`).
    pub fn flags_audit(&self) -> String {
        format!("{}:flags:audit", self.prefix)
    }
}

/// This node's link to the cluster.
pub struct Cluster {
    node: String,
    keys: Keys,
    config: ClusterConfig,
    conn: ConnectionManager,
    /// The pub/sub connection (RESP3 pushes, resubscribed after a reconnect).
    pubsub: ConnectionManager,
    /// Where each subscribed channel's messages go.
    routes_by_channel: DashMap<String, mpsc::UnboundedSender<Bytes>>,
    /// Followers per session channel on this node, and the channel's subscription.
    session_watchers: DashMap<String, streams::Listening>,
    /// Streams whose mirror is being made here (one maker per stream at a time).
    mirroring: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Session streams whose mirror this node ended because Redis went silent (their
    /// followers here were sent that end), by session: not mirrored to them again when
    /// Redis answers (see `rejoin_sessions`); forgotten once neither running nor ended
    /// since the node lost Redis, or once the session has no follower here.
    cut_short: DashMap<crate::request::RequestId, Arc<str>>,
    /// Session streams mirrored here lately (since a little before the last heartbeat
    /// Redis acknowledged), with when: a rejoin does not offer them again though their
    /// mirror may have been released meanwhile.
    recent: std::sync::Mutex<std::collections::VecDeque<(Instant, crate::request::RequestId)>>,
    /// The last heartbeat Redis acknowledged.
    last_beat: std::sync::Mutex<Option<Beat>>,
    attached: std::sync::OnceLock<streams::Attached>,
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
    started: Instant,
    /// Milliseconds after `started` of the last heartbeat Redis acknowledged, plus one
    /// (0: never).
    last_ok_ms: AtomicU64,
}

/// How long flags keys live without a change (a node seeds an empty Redis again from its
/// last good file, so expiry loses nothing).
pub const FLAGS_TTL_SECS: u64 = 30 * 24 * 3600;

impl Cluster {
    /// Prepares the link (no connection yet: a node starts while Redis is down) and
    /// starts the heartbeat task. Needs a tokio runtime.
    pub fn start(config: &ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        let url = config.redis_url.clone().unwrap_or_default();
        let url = url.replacen("valkey://", "redis://", 1);
        let mut url = url;
        if !url.contains("protocol=") {
            url.push_str(if url.contains('?') { "&" } else { "?" });
            url.push_str("protocol=resp3");
        }
        let client = redis::Client::open(url).map_err(ClusterError::Url)?;
        let step = Duration::from_millis(config.heartbeat_ms);
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(step))
            .set_response_timeout(Some(step))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(step)
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager.clone())?;
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let pubsub = ConnectionManager::new_lazy_with_config(
            client,
            manager
                .set_push_sender(push_tx)
                .set_automatic_resubscription(),
        )?;
        let node = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let cluster = Arc::new(Cluster {
            node,
            keys: Keys::new(&config.key_prefix),
            config: config.clone(),
            conn,
            pubsub,
            routes_by_channel: DashMap::new(),
            session_watchers: DashMap::new(),
            mirroring: DashMap::new(),
            cut_short: DashMap::new(),
            recent: std::sync::Mutex::default(),
            last_beat: std::sync::Mutex::new(None),
            attached: std::sync::OnceLock::new(),
            metrics: std::sync::OnceLock::new(),
            started: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
        });
        tokio::spawn(heartbeat(Arc::downgrade(&cluster)));
        tokio::spawn(dispatch(Arc::downgrade(&cluster), push_rx));
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// A handle on the shared connection (cheap: it multiplexes), every call bounded by
    /// `heartbeat_ms`: a call caught by a reconnect never waits longer.
    pub fn conn(&self) -> Bounded {
        Bounded {
            inner: self.conn.clone(),
            limit: Duration::from_millis(self.config.heartbeat_ms),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Redis acknowledged something just now.
    pub fn saw_redis(&self) {
        self.last_ok_ms.store(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// Milliseconds since Redis last answered (`None`: never since start).
    pub fn silent_ms(&self) -> Option<u64> {
        match self.last_ok_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.now_ms().saturating_sub(at - 1)),
        }
    }

    /// Whether this node may take new work: Redis answered within
    /// `cluster.outage_timeout_ms` (and at least once since start).
    pub fn available(&self) -> bool {
        self.silent_ms()
            .is_some_and(|ms| ms < self.config.outage_timeout_ms)
    }

    /// Counts one write-through flush.
    fn flushed(&self, took: Duration, events: u64) {
        if let Some(m) = self.metrics.get() {
            m.cluster_flushed(took.as_secs_f64(), events);
        }
    }

    fn took_over(&self) {
        if let Some(m) = self.metrics.get() {
            m.cluster_took_over();
        }
    }

    fn fenced(&self) {
        if let Some(m) = self.metrics.get() {
            m.cluster_fenced();
        }
    }

    fn redis_error(&self, op: &'static str) {
        if let Some(m) = self.metrics.get() {
            m.cluster_redis_error(op);
        }
    }

    /// Renews this node's liveness key; Redis's time at that moment.
    async fn beat(&self) -> Result<Beat, ClusterError> {
        let mut conn = self.conn();
        let ((), (secs, micros)): ((), (u64, u64)) = redis::pipe()
            .cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(std::process::id())
            .arg("PX")
            .arg(self.config.lease_ms)
            .cmd("TIME")
            .query_async(&mut conn)
            .await?;
        Ok(Beat {
            at: Instant::now(),
            redis_ms: secs * 1000 + micros / 1000,
        })
    }

    /// The last heartbeat Redis acknowledged (`None`: none since start).
    fn last_beat(&self) -> Option<Beat> {
        *self.beat_slot()
    }

    /// Records `beat` as the last one Redis acknowledged; the one before it.
    fn note_beat(&self, beat: Beat) -> Option<Beat> {
        self.beat_slot().replace(beat)
    }

    fn beat_slot(&self) -> std::sync::MutexGuard<'_, Option<Beat>> {
        self.last_beat.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A heartbeat Redis acknowledged: when, on this node's clock and in Redis's time (ms),
/// so that a moment here can be told in Redis's time (that of a stream's start).
#[derive(Debug, Clone, Copy)]
struct Beat {
    at: Instant,
    redis_ms: u64,
}

impl Beat {
    /// Redis's time (ms) at `moment` on this node's clock, as this beat sees it.
    fn redis_ms_at(&self, moment: Instant) -> u64 {
        if moment >= self.at {
            self.redis_ms + (moment - self.at).as_millis() as u64
        } else {
            self.redis_ms
                .saturating_sub((self.at - moment).as_millis() as u64)
        }
    }
}

/// A connection whose every call fails with a timeout past `limit` (the connection
/// manager's own response timeout does not cover a call caught by a reconnect).
#[derive(Clone)]
pub struct Bounded {
    inner: ConnectionManager,
    limit: Duration,
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis call timed out",
    ))
}

impl redis::aio::ConnectionLike for Bounded {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        let limit = self.limit;
        let call = self.inner.req_packed_command(cmd);
        Box::pin(async move {
            tokio::time::timeout(limit, call)
                .await
                .unwrap_or_else(|_| Err(timed_out()))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let limit = self.limit;
        let call = self.inner.req_packed_commands(pipeline, offset, count);
        Box::pin(async move {
            tokio::time::timeout(limit, call)
                .await
                .unwrap_or_else(|_| Err(timed_out()))
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Routes pub/sub messages to their channel's subscriber.
async fn dispatch(
    cluster: std::sync::Weak<Cluster>,
    mut rx: mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    while let Some(push) = rx.recv().await {
        let Some(c) = cluster.upgrade() else { return };
        if push.kind != redis::PushKind::Message {
            continue;
        }
        if let (Some(redis::Value::BulkString(ch)), Some(redis::Value::BulkString(payload))) =
            (push.data.first(), push.data.get(1))
        {
            c.dispatch(
                &String::from_utf8_lossy(ch),
                Bytes::copy_from_slice(payload),
            );
        }
    }
}

/// Renews this node's liveness key every `heartbeat_ms` until the cluster is dropped.
async fn heartbeat(cluster: std::sync::Weak<Cluster>) {
    let mut was_up: Option<bool> = None;
    let mut failing = false;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let step = Duration::from_millis(c.config.heartbeat_ms);
        let result = c.beat().await;
        match &result {
            Ok(beat) => {
                c.saw_redis();
                let before = c.note_beat(*beat);
                if std::mem::take(&mut failing) {
                    c.rejoin_sessions(before, *beat);
                }
            }
            Err(e) => {
                failing = true;
                c.redis_error("heartbeat");
                tracing::debug!(error = %e, "cluster heartbeat failed");
            }
        }
        let up = c.available();
        if up && was_up != Some(true) {
            // (Re)subscribe this node's control channel after (re)connecting.
            if let Err(e) = c.listen_control().await {
                tracing::debug!(error = %e, "cannot listen on the control channel yet");
                was_up = None;
                drop(c);
                tokio::time::sleep(step).await;
                continue;
            }
        }
        if was_up != Some(up) {
            match (&result, up) {
                (_, true) => tracing::info!(node = %c.node, "cluster: Redis reachable"),
                (Err(e), false) => {
                    tracing::warn!(node = %c.node, error = %e, "cluster: Redis unreachable")
                }
                (Ok(_), false) => {}
            }
            was_up = Some(up);
        }
        drop(c);
        tokio::time::sleep(step).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moment_on_the_node_is_told_in_redis_time_through_a_beat() {
        let at = Instant::now() + Duration::from_secs(10);
        let beat = Beat {
            at,
            redis_ms: 1_000_000,
        };
        assert_eq!(beat.redis_ms_at(at), 1_000_000);
        assert_eq!(beat.redis_ms_at(at + Duration::from_millis(250)), 1_000_250);
        assert_eq!(beat.redis_ms_at(at - Duration::from_millis(1500)), 998_500);
    }
}
