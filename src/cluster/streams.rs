//! Streams across nodes (SPEC section 10).
//!
//! - **Write-through** ([`RedisLog`], the hub's `LogStore`): one writer task per node,
//!   group commit without a timer: it takes every stream with pending entries, writes them
//!   all in one pipeline of append scripts (one per stream: one `XADD <seq>-1` of the
//!   batch, whose id is the seq of its first line, the meta hash, trimming, expiry and one
//!   `PUBLISH` of the batch), then commits them to the local logs. A Redis Stream entry
//!   is thus a batch of lines, not one event: readers split it and skip the seqs they
//!   hold, and trimming keeps the whole batch holding the oldest kept seq. The script
//!   refuses a node that is no longer the stream's owner (fencing): that node aborts the
//!   stream and writes nothing more to Redis.
//! - **Mirrors**: a stream another node runs is copied into an ordinary local log
//!   (`Backing::Mirror`): made from one read of what is already there (or from a
//!   session's announcement), then fed by its batch channel, whose subscription's first
//!   repair reads what came before it held (from the batch holding the copy's head on);
//!   a batch that does not follow the
//!   copy's head triggers a repair read, and a position check every heartbeat catches a
//!   lost last message. When the owner's liveness key is gone for a lease, a mirroring
//!   node ends the stream for everyone with `error {node_lost}` + `end {error}` by
//!   compare-and-set on `top`.
//! - **Cancel** of a stream owned elsewhere is published on the owner's control channel.
//! - **Sessions**: a stream of a session is announced by the append that creates it in
//!   Redis (a sorted set of live ids and a channel), so it is there to be read when the
//!   announcement arrives, and moved to the session's ended set by its end; a node with
//!   followers of the session mirrors each of them, and once it reaches Redis again
//!   after losing it, each one started meanwhile, running or ended.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::Value;
use tokio::sync::mpsc;

use super::{Cluster, ClusterError};
use crate::event::{EventKind, Line, Seq};
use crate::hub::{Backing, Entry, Hub, LogStore, Stream};
use crate::metrics::Metrics;
use crate::request::{RequestId, Transport};
use crate::routes::Route;
use std::collections::HashMap;

/// Redis Stream entries (batches) one read takes.
const RANGE_COUNT: usize = 256;

/// Lua shared by the scripts that write a session's sets: Redis's time in ms, and the
/// move of an ended stream from its session's live set to its ended set (scored by its
/// end, trimmed to `ttl` ms, expiring after it).
macro_rules! session_lua {
    () => {
        r"
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
local function end_in_session(live, ended, id, ttl)
  local ended_at = now_ms()
  redis.call('ZREM', live, id)
  redis.call('ZADD', ended, ended_at, id)
  redis.call('ZREMRANGEBYSCORE', ended, '-inf', '(' .. (ended_at - tonumber(ttl)))
  redis.call('PEXPIRE', ended, ttl)
end
"
    };
}

/// `KEYS`: log, meta, batch channel, and for a stream of a session its live set, its
/// announcement channel and its ended set. `ARGV`: node, first seq, live ttl ms, end
/// ttl ms, ended (0/1), route, session, most entries kept, how many lines, the lines
/// from `first` on concatenated, the stream's id. The lines not in Redis yet (a retried
/// flush may repeat some) become one Redis Stream entry whose id is the seq of its first
/// line. A stream of a session is announced (added to the live set, scored by its start
/// in Redis's time, which its meta keeps as `started`; its id, route, first seq and
/// first lines published: see [`Announcement`]) by the write that creates its meta, so
/// a node that mirrors it on the announcement finds it in Redis, and moved from the
/// live set to the ended set (scored by its end, kept as long as its log) by the write
/// of its end.
const APPEND: &str = concat!(
    session_lua!(),
    r"
local m = redis.call('HMGET', KEYS[2], 'owner', 'ended', 'top', 'first')
local owner = m[1]
if owner and owner ~= ARGV[1] then return {'FENCED', 0} end
local first = tonumber(ARGV[2])
local top
local held_from
local session = ARGV[7] ~= ''
if not owner then
  redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'route', ARGV[6], 'session', ARGV[7],
    'first', first, 'top', first, 'ended', '0')
  top = first
  held_from = first
  if session then
    local started = now_ms()
    redis.call('HSET', KEYS[2], 'started', started)
    redis.call('ZADD', KEYS[4], started, ARGV[11])
    redis.call('PEXPIRE', KEYS[4], ARGV[3])
  end
else
  if m[2] == '1' then return {'FENCED', 0} end
  top = tonumber(m[3])
  held_from = tonumber(m[4])
end
if top < first then return {'GAP', top} end
local last = first + tonumber(ARGV[9])
local lines = ARGV[10]
local receivers = 0
if last > top then
  if top > first then
    local at = 1
    for _ = 1, top - first do at = string.find(lines, '\n', at, true) + 1 end
    lines = string.sub(lines, at)
  end
  redis.call('XADD', KEYS[1], top .. '-1', 'e', lines)
  redis.call('HSET', KEYS[2], 'top', last)
end
local kept_from = last - tonumber(ARGV[8])
if kept_from > held_from then
  local holder = redis.call('XREVRANGE', KEYS[1], kept_from .. '-1', '-', 'COUNT', 1)[1]
  if holder then
    local from = tonumber(string.match(holder[1], '^%d+'))
    if from > held_from then
      redis.call('XTRIM', KEYS[1], 'MINID', holder[1])
      redis.call('HSET', KEYS[2], 'first', from)
    end
  end
end
local ttl = ARGV[3]
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[2], 'ended', '1')
  ttl = ARGV[4]
  if session then end_in_session(KEYS[4], KEYS[6], ARGV[11], ARGV[4]) end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
if last > top then receivers = redis.call('PUBLISH', KEYS[3], lines) end
if session and not owner then
  redis.call('PUBLISH', KEYS[5], ARGV[11] .. '\n' .. ARGV[6] .. '\n' .. first .. '\n' .. lines)
end
return {'OK', receivers}
"
);

/// `KEYS`: log. `ARGV`: a seq, most entries. The log's entries from the one holding
/// that seq on (or from the first past it).
const RANGE: &str = r"
local from = ARGV[1] .. '-1'
local holder = redis.call('XREVRANGE', KEYS[1], from, '-', 'COUNT', 1)[1]
if holder then from = holder[1] end
return redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', ARGV[2])
";

/// `KEYS`: meta, log. `ARGV`: most entries, then [`Meta::FIELDS`]. The stream's meta
/// hash (those fields) and its log's entries from its first kept seq on, read at once
/// (nothing when the stream is unknown).
const READ: &str = r"
local m = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
if not m[1] then return {} end
local from = m[4] .. '-1'
local holder = redis.call('XREVRANGE', KEYS[2], from, '-', 'COUNT', 1)[1]
if holder then from = holder[1] end
return {m, redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', ARGV[1])}
";

/// `KEYS`: meta, log, batch channel, the owner's liveness key, and for a stream of a
/// session its live set and ended set. `ARGV`: owner, observed top, end ttl ms, the
/// `error` line (at `top`), the `end` line (at `top + 1`), the stream's id. Ends a stream
/// whose owner is gone, once: only while the owner's key is absent, the stream not ended
/// and its top still the observed one (a stream of a session moves to its ended set, as
/// by its owner's last write). Returns 1 when it wrote.
const TAKEOVER: &str = concat!(
    session_lua!(),
    r"
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'ended') == '1' then return 0 end
local top = tonumber(redis.call('HGET', KEYS[1], 'top'))
if top ~= tonumber(ARGV[2]) then return 0 end
local lines = ARGV[4] .. ARGV[5]
redis.call('XADD', KEYS[2], top .. '-1', 'e', lines)
redis.call('HSET', KEYS[1], 'top', top + 2, 'ended', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], lines)
if KEYS[6] then end_in_session(KEYS[5], KEYS[6], ARGV[6], ARGV[3]) end
return 1
"
);

static RANGE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RANGE));

static READ_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(READ));

static TAKEOVER_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(TAKEOVER));

/// A key or channel of one stream (`<prefix>:{<id>}:<what>`) or of one session
/// (`<prefix>:{s:<id>}:<what>`): the one place of their format, written into a command
/// without a string of its own, or made into one ([`Cluster::stream_key`]).
struct Key<'a> {
    prefix: &'a str,
    /// `""` for a stream, `"s:"` for a session.
    tag: &'static str,
    id: &'a str,
    what: &'a str,
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{{{}{}}}:{}",
            self.prefix, self.tag, self.id, self.what
        )
    }
}

impl redis::ToRedisArgs for Key<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        use std::io::Write;
        let mut w = out.writer_for_next_arg();
        // Writing into the command's buffer cannot fail.
        let _ = write!(w, "{self}");
    }
}

/// A flush's lines of one stream as one argument (copied once, into the command).
struct Lines<'a>(&'a [Arc<Entry>]);

impl redis::ToRedisArgs for Lines<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        use std::io::Write;
        let mut w = out.writer_for_next_arg();
        for e in self.0 {
            // Writing into the command's buffer cannot fail.
            let _ = w.write_all(e.line.as_bytes());
        }
    }
}

/// What a node needs of the rest of the bridge to mirror streams.
pub(super) struct Attached {
    pub hub: Arc<Hub>,
    /// The routes by name.
    pub routes: HashMap<String, Arc<Route>>,
    pub metrics: Arc<Metrics>,
    pub retention: Duration,
    pub max_kept: u64,
}

/// The write-through store of this node's streams.
pub struct RedisLog {
    tx: mpsc::UnboundedSender<Arc<Stream>>,
}

impl LogStore for RedisLog {
    fn dirty(&self, stream: Arc<Stream>) {
        let _ = self.tx.send(stream);
    }
}

/// The stream's meta hash as a mirror reads it.
#[derive(Debug, Default)]
struct Meta {
    owner: String,
    route: String,
    session: String,
    first: Seq,
    top: Seq,
    ended: bool,
    /// When a stream of a session started, in Redis's time (ms; 0 for other streams).
    started: u64,
}

impl Meta {
    /// The hash's fields [`Meta::from_fields`] reads, in its order (the read script takes
    /// `owner` first and `first` fourth).
    const FIELDS: [&str; 7] = [
        "owner", "route", "session", "first", "top", "ended", "started",
    ];

    /// From the hash's [`Meta::FIELDS`] (`None`: no owner, the stream is unknown).
    fn from_fields(v: Vec<Option<String>>) -> Option<Meta> {
        let mut v = v.into_iter();
        let mut next = || v.next().flatten();
        let owner = next()?;
        let route = next().unwrap_or_default();
        let session = next().unwrap_or_default();
        let mut num = || next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let (first, top) = (num(), num());
        let ended = next().as_deref() == Some("1");
        let started = next().and_then(|s| s.parse().ok()).unwrap_or(0);
        Some(Meta {
            owner,
            route,
            session,
            first,
            top,
            ended,
            started,
        })
    }
}

impl Cluster {
    /// Hands the cluster the hub and routes (once, after the bridge built them) and
    /// returns the write-through backing of this node's streams.
    pub fn attach(
        self: &Arc<Self>,
        hub: Arc<Hub>,
        routes: HashMap<String, Arc<Route>>,
        metrics: Arc<Metrics>,
        retention: Duration,
        max_kept: u64,
    ) {
        let _ = self.metrics.set(metrics.clone());
        let _ = self.attached.set(Attached {
            hub,
            routes,
            metrics,
            retention,
            max_kept,
        });
    }

    /// The backing of the streams this node starts (spawns the writer task).
    pub fn backing(self: &Arc<Self>) -> Backing {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(Arc::downgrade(self), rx));
        Backing::WriteThrough(Arc::new(RedisLog { tx }))
    }

    /// Stream `id`'s key or channel `what` (`meta`, `log`, `ev`).
    fn stream_key<'a>(&'a self, id: &'a str, what: &'a str) -> Key<'a> {
        self.key("", id, what)
    }

    /// A session's live set.
    fn session_key<'a>(&'a self, session: &'a str) -> Key<'a> {
        self.key("s:", session, "live")
    }

    /// A session's streams ended within the end retention, scored by their end.
    fn session_ended_key<'a>(&'a self, session: &'a str) -> Key<'a> {
        self.key("s:", session, "ended")
    }

    /// A session's announcement channel.
    fn session_channel<'a>(&'a self, session: &'a str) -> Key<'a> {
        self.key("s:", session, "ev")
    }

    fn key<'a>(&'a self, tag: &'static str, id: &'a str, what: &'a str) -> Key<'a> {
        Key {
            prefix: &self.keys.prefix,
            tag,
            id,
            what,
        }
    }

    fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{node}:ctl", self.keys.prefix)
    }

    fn end_ttl_ms(&self) -> u64 {
        self.attached
            .get()
            .map_or(60_000, |a| a.retention.as_millis() as u64)
            .max(1000)
    }

    /// Subscribes the pub/sub connection to `channel`, routing its messages to `tx`.
    async fn subscribe(
        &self,
        channel: String,
        tx: mpsc::UnboundedSender<Bytes>,
    ) -> Result<(), ClusterError> {
        self.routes_by_channel.insert(channel.clone(), tx);
        self.send_subscribe(&channel).await
    }

    /// Sends `SUBSCRIBE channel` and waits (at most `heartbeat_ms`) for Redis to confirm
    /// it; its messages go wherever `routes_by_channel` routes them.
    async fn send_subscribe(&self, channel: &str) -> Result<(), ClusterError> {
        let mut sub = self.pubsub.clone();
        let limit = Duration::from_millis(self.config.heartbeat_ms);
        match tokio::time::timeout(limit, sub.subscribe(channel)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Protocol("SUBSCRIBE timed out".into())),
        }
    }

    async fn unsubscribe(&self, channel: &str) {
        self.routes_by_channel.remove(channel);
        let mut sub = self.pubsub.clone();
        let limit = Duration::from_millis(self.config.heartbeat_ms);
        let _ = tokio::time::timeout(limit, sub.unsubscribe(channel)).await;
    }

    /// Delivers one pub/sub message to whoever subscribed its channel.
    pub(super) fn dispatch(&self, channel: &str, payload: Bytes) {
        if let Some(tx) = self.routes_by_channel.get(channel)
            && tx.send(payload).is_err()
        {
            drop(tx);
            self.routes_by_channel.remove(channel);
        }
    }

    /// Listens on this node's control channel (cancels routed to this node's streams).
    pub(super) async fn listen_control(self: &Arc<Self>) -> Result<(), ClusterError> {
        let channel = self.node_channel(&self.node);
        if let Some(tx) = self.routes_by_channel.get(&channel).map(|t| t.clone()) {
            return self.subscribe(channel, tx).await;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        self.subscribe(channel, tx).await?;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Some(c) = weak.upgrade() else { return };
                let Some(a) = c.attached.get() else { continue };
                let id = String::from_utf8_lossy(&msg);
                if let Some(s) = a.hub.get(&id)
                    && !s.is_mirror()
                {
                    s.stop(crate::event::EndReason::Cancelled);
                }
            }
        });
        Ok(())
    }

    async fn meta(&self, id: &str) -> Result<Option<Meta>, ClusterError> {
        let mut conn = self.conn();
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.stream_key(id, "meta"))
            .arg(&Meta::FIELDS)
            .query_async(&mut conn)
            .await?;
        self.saw_redis();
        Ok(Meta::from_fields(v))
    }

    /// The meta of stream `id` and the lines its log holds from its first kept seq on
    /// (at most [`RANGE_COUNT`] entries, and how many entries that was), read at once.
    async fn read(&self, id: &str) -> Result<Option<(Meta, Vec<Bytes>, usize)>, ClusterError> {
        let mut conn = self.conn();
        let v: Value = READ_SCRIPT
            .key(self.stream_key(id, "meta"))
            .key(self.stream_key(id, "log"))
            .arg(RANGE_COUNT)
            .arg(&Meta::FIELDS)
            .invoke_async(&mut conn)
            .await?;
        self.saw_redis();
        let Value::Array(mut parts) = v else {
            return Err(ClusterError::Protocol("the read script's reply".into()));
        };
        let (Some(entries), Some(Value::Array(fields))) = (parts.pop(), parts.pop()) else {
            return Ok(None);
        };
        let fields = fields
            .into_iter()
            .map(|f| match f {
                Value::BulkString(b) => String::from_utf8(b).ok(),
                Value::SimpleString(s) => Some(s),
                _ => None,
            })
            .collect();
        let Some(meta) = Meta::from_fields(fields) else {
            return Ok(None);
        };
        let (lines, n) = lines_of_entries(entries);
        Ok(Some((meta, lines, n)))
    }

    /// Lines of stream `id` from the entry (batch) holding `from` on: at most
    /// [`RANGE_COUNT`] entries, and how many entries that was.
    async fn range(&self, id: &str, from: Seq) -> Result<(Vec<Bytes>, usize), ClusterError> {
        let mut conn = self.conn();
        let v: Value = RANGE_SCRIPT
            .key(self.stream_key(id, "log"))
            .arg(from)
            .arg(RANGE_COUNT)
            .invoke_async(&mut conn)
            .await?;
        self.saw_redis();
        Ok(lines_of_entries(v))
    }

    /// The local copy of stream `id`, run on another node: the one held, or a new mirror
    /// (`None`: the cluster does not know the stream).
    pub async fn mirror(
        self: &Arc<Self>,
        id: &RequestId,
    ) -> Result<Option<Arc<Stream>>, ClusterError> {
        self.mirror_if(id, Mirrored::Any).await
    }

    /// [`Cluster::mirror`], for the streams it makes: of any stream, of one still running
    /// (for a new follower of its session), or of one a rejoin finds (see
    /// [`Mirrored::Missed`]).
    async fn mirror_if(
        self: &Arc<Self>,
        id: &RequestId,
        which: Mirrored,
    ) -> Result<Option<Arc<Stream>>, ClusterError> {
        let Some(a) = self.attached.get() else {
            return Ok(None);
        };
        if let Some(s) = a.hub.get(id.as_str()) {
            return Ok(Some(s));
        }
        self.making(id, async |c: &Arc<Cluster>| {
            c.new_mirror(a, id, which).await
        })
        .await
    }

    /// Runs `make` as this node's only maker of stream `id`'s mirror at the time, unless
    /// the hub holds the stream already (made meanwhile, or run here).
    async fn making(
        self: &Arc<Self>,
        id: &RequestId,
        make: impl AsyncFnOnce(&Arc<Cluster>) -> Result<Option<Arc<Stream>>, ClusterError>,
    ) -> Result<Option<Arc<Stream>>, ClusterError> {
        let Some(a) = self.attached.get() else {
            return Ok(None);
        };
        let maker = self
            .mirroring
            .entry(id.as_str().to_string())
            .or_default()
            .clone();
        let made = {
            let _making = maker.lock().await;
            match a.hub.get(id.as_str()) {
                Some(s) => Ok(Some(s)),
                None => make(self).await,
            }
        };
        // Forgotten once no other request waits for it (the map's handle and this one).
        self.mirroring
            .remove_if(id.as_str(), |_, m| Arc::strong_count(m) <= 2);
        made
    }

    /// Makes the mirror of stream `id` (this node's only maker of it at the time) from one
    /// read of its meta and log, one round trip's wait; its feed subscribes afterwards.
    async fn new_mirror(
        self: &Arc<Self>,
        a: &Attached,
        id: &RequestId,
        which: Mirrored,
    ) -> Result<Option<Arc<Stream>>, ClusterError> {
        let Some((meta, lines, n)) = self.read(id.as_str()).await? else {
            return Ok(None);
        };
        match which {
            Mirrored::Running if meta.ended => return Ok(None),
            Mirrored::Missed { since_ms }
                if meta.owner == self.node || (meta.ended && meta.started < since_ms) =>
            {
                return Ok(None);
            }
            _ => {}
        }
        let Some(route) = a.routes.get(&meta.route).cloned() else {
            return Ok(None);
        };
        // The session's followers here are offered a running stream, and at a rejoin one
        // the session started since; never one they were offered already. A resume's
        // mirror of an ended stream stands outside the session: its followers here read
        // it already, or followed only after its end.
        let offer = !meta.session.is_empty()
            && !self.offered_before(id)
            && (!meta.ended || matches!(which, Mirrored::Missed { .. }));
        let session = offer.then(|| Arc::<str>::from(meta.session.as_str()));
        let (stream, created) = self.new_copy(a, id, route, session, meta.first, lines);
        if !created {
            return Ok(Some(stream));
        }
        if n >= RANGE_COUNT
            && let Err(e) = self.fill(&stream).await
        {
            a.hub.drop_mirror(&stream);
            return Err(e);
        }
        self.feed(stream.clone());
        Ok(Some(stream))
    }

    /// The hub's mirror of stream `id`; when it is new (true), holding `lines` from
    /// `first` on, else the stream the hub holds already, untouched. A new mirror in a
    /// session (offered to the session's followers here) is noted in `recent`.
    fn new_copy(
        &self,
        a: &Attached,
        id: &RequestId,
        route: Arc<Route>,
        session: Option<Arc<str>>,
        first: Seq,
        lines: impl IntoIterator<Item = Bytes>,
    ) -> (Arc<Stream>, bool) {
        let metrics = a.metrics.stream(&route.name, Transport::Ndjson);
        let offered = session.is_some();
        let (stream, created) = a.hub.mirror(id.clone(), route, session, first, metrics);
        if created {
            for line in lines {
                append_line(&stream, line);
            }
            if offered {
                self.note_offered(id);
            }
        }
        (stream, created)
    }

    /// Notes a session stream offered to this node's followers, and forgets those
    /// offered more than two heartbeats before the last one Redis acknowledged (a rejoin
    /// reads the streams that started since one heartbeat before it).
    fn note_offered(&self, id: &RequestId) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(beat) = self.last_beat() {
            let keep = Duration::from_millis(2 * self.config.heartbeat_ms);
            let horizon = beat.at.checked_sub(keep).unwrap_or(beat.at);
            while recent.front().is_some_and(|(at, _)| *at < horizon) {
                recent.pop_front();
            }
        }
        recent.push_back((Instant::now(), id.clone()));
    }

    /// Whether this node's followers of its session were offered stream `id` already, so
    /// that no new mirror offers it to them again: lately (see [`Cluster::note_offered`];
    /// an older one is held by the hub, or ended before the window a rejoin reads), or
    /// ended for them by an outage (`cut_short`).
    fn offered_before(&self, id: &RequestId) -> bool {
        if self.cut_short.contains_key(id) {
            return true;
        }
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().any(|(_, r)| r == id)
    }

    /// Keeps a new mirror fed from its stream's batch channel: subscribes, without holding
    /// up the mirror's first readers (what is published before the subscription holds is
    /// read by the follower's first repair), then follows. A mirror of an ended stream
    /// needs no feed; one whose subscription is not confirmed reads Redis every heartbeat
    /// until messages come.
    fn feed(self: &Arc<Self>, stream: Arc<Stream>) {
        if stream.is_ended() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let channel = {
                let Some(c) = weak.upgrade() else { return };
                let channel = c.stream_key(stream.id.as_str(), "ev").to_string();
                if let Err(e) = c.subscribe(channel.clone(), tx).await {
                    // Quiet, the follower checks Redis every heartbeat; a late SUBSCRIBE
                    // still feeds it.
                    tracing::debug!(error = %e, "a mirror follows without its batch channel yet");
                }
                channel
            };
            follow(weak, stream, rx, channel).await;
        });
    }

    /// Appends to a mirror what Redis holds past its head (lines it holds already are
    /// skipped).
    async fn fill(&self, stream: &Stream) -> Result<(), ClusterError> {
        loop {
            let head = stream.next_seq();
            let (lines, n) = self.range(stream.id.as_str(), head).await?;
            for line in lines {
                append_line(stream, line);
            }
            if n < RANGE_COUNT || stream.is_ended() || stream.next_seq() == head {
                return Ok(());
            }
        }
    }

    /// Cancels a stream run by another node: `None` when the cluster does not know it,
    /// else whether it was live (the owner ends it).
    pub async fn cancel(&self, id: &str) -> Result<Option<bool>, ClusterError> {
        let Some(meta) = self.meta(id).await? else {
            return Ok(None);
        };
        if meta.ended {
            return Ok(Some(false));
        }
        let mut conn = self.conn();
        let receivers: u64 = redis::cmd("PUBLISH")
            .arg(self.node_channel(&meta.owner))
            .arg(id)
            .query_async(&mut conn)
            .await?;
        Ok(Some(receivers > 0))
    }

    /// Subscribes to a session's announcements on this node, each announced stream
    /// mirrored. The relay is in place before the `SUBSCRIBE` leaves and stays when Redis
    /// does not answer it in time (a paused Redis takes it later: what it then publishes
    /// is relayed); it ends when the channel is unsubscribed, which drops its sender.
    /// Whether Redis confirmed the subscription.
    async fn listen_session(self: &Arc<Self>, channel: String, session: Arc<str>) -> bool {
        if !self.routes_by_channel.contains_key(&channel) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
            self.routes_by_channel.insert(channel.clone(), tx);
            let relay = self.clone();
            tokio::spawn(async move {
                while let Some(payload) = rx.recv().await {
                    let Some(announced) = Announcement::parse(&payload) else {
                        continue;
                    };
                    let (relay, session) = (relay.clone(), session.clone());
                    // One at a time per stream (the maker's lock), streams side by side.
                    tokio::spawn(async move {
                        let _ = relay.mirror_announced(announced, session).await;
                    });
                }
            });
        }
        match self.send_subscribe(&channel).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "cannot follow a session across the cluster yet");
                false
            }
        }
    }

    /// Takes the subscription of session channel `channel` under its gate, unless it holds
    /// already (`again`: also then, once this node reaches Redis after losing it); whether
    /// it holds. `None` when the session is no longer followed here under that gate.
    async fn take_session(
        self: &Arc<Self>,
        channel: &str,
        session: &Arc<str>,
        gate: &Gate,
        again: bool,
    ) -> Option<bool> {
        let mut subscribed = gate.lock().await;
        let followed = self
            .session_watchers
            .get(channel)
            .is_some_and(|l| l.followers > 0 && Arc::ptr_eq(&l.gate, gate));
        if !followed {
            return None;
        }
        if again || !*subscribed {
            *subscribed = self
                .listen_session(channel.to_string(), session.clone())
                .await;
        }
        Some(*subscribed)
    }

    /// Mirrors a stream announced to a session from what the announcement carries (its
    /// first lines): a follower here gets them one pub/sub hop after the owner's commit,
    /// without waiting for a read of Redis. The mirror is then fed as any other.
    async fn mirror_announced(
        self: &Arc<Self>,
        announced: Announcement,
        session: Arc<str>,
    ) -> Result<Option<Arc<Stream>>, ClusterError> {
        let Some(a) = self.attached.get() else {
            return Ok(None);
        };
        let id = announced.id;
        let Some(route) = a.routes.get(&announced.route).cloned() else {
            return Ok(None);
        };
        if self.offered_before(&id) {
            // Announced again (Redis restarted empty), after an outage ended it here.
            return Ok(None);
        }
        self.making(&id, async |c: &Arc<Cluster>| {
            let lines = lines_of(&announced.lines);
            let (stream, created) =
                c.new_copy(a, &id, route, Some(session), announced.first, lines);
            if !created {
                return Ok(Some(stream));
            }
            c.feed(stream.clone());
            Ok(Some(stream))
        })
        .await
    }

    /// Mirrors the streams of `session` that are not here: for a new follower
    /// (`since_ms` `None`) its live ones (its live set in Redis); at a rejoin
    /// (`Some`: Redis's time this node lost it, or the session's first follower here
    /// came, whichever is later) also those that ended since, not owned here, not
    /// offered here lately, and started since that time (a running one whenever it
    /// started). Never one whose mirror an outage ended here: this node's followers of
    /// the session were sent that end (a follower that joins afterwards does not get it
    /// either, as on the owner's node a follower does not get an ended stream).
    async fn mirror_session(self: &Arc<Self>, session: &str, since_ms: Option<u64>) {
        let read: Result<Vec<Vec<String>>, _> = {
            let mut conn = self.conn();
            let mut pipe = redis::pipe();
            if let Some(since_ms) = since_ms {
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(self.session_ended_key(session))
                    .arg(since_ms)
                    .arg("+inf");
            }
            pipe.cmd("ZRANGE")
                .arg(self.session_key(session))
                .arg(0)
                .arg(-1);
            pipe.query_async(&mut conn).await
        };
        let Ok(read) = read else { return };
        // Ended ones first, in the order they ended, then the running ones.
        let mut ids: Vec<RequestId> = Vec::new();
        for id in read.iter().flatten() {
            if let Ok(id) = RequestId::parse(id)
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        let which = match since_ms {
            Some(since_ms) => {
                // Neither running nor ended since this node lost Redis: never offered
                // to a follower here again.
                self.cut_short
                    .retain(|id, s| &**s != session || ids.contains(id));
                Mirrored::Missed { since_ms }
            }
            None => Mirrored::Running,
        };
        for id in ids {
            if !self.offered_before(&id) {
                let _ = self.mirror_if(&id, which).await;
            }
        }
    }

    /// Once Redis answers again after this node lost it (`before`: the last heartbeat
    /// it acknowledged before, `now`: the first since): each followed session's
    /// subscription is taken again and its streams started meanwhile are read, running
    /// or ended, since what was announced meanwhile reached nobody here. "Meanwhile"
    /// starts one heartbeat before `before` (an announcement may have been on its way).
    pub(super) fn rejoin_sessions(self: &Arc<Self>, before: Option<super::Beat>, now: super::Beat) {
        let lost_at = before.map_or(0, |b| b.redis_ms.saturating_sub(self.config.heartbeat_ms));
        let followed: Vec<(String, Arc<str>, Gate, u64)> = self
            .session_watchers
            .iter()
            .map(|l| {
                let since = lost_at.max(now.redis_ms_at(l.since));
                (l.key().clone(), l.session.clone(), l.gate.clone(), since)
            })
            .collect();
        let step = Duration::from_millis(self.config.heartbeat_ms);
        for (channel, session, gate, since) in followed {
            let c = self.clone();
            tokio::spawn(async move {
                // The pub/sub connection may come back a little after the heartbeat's:
                // tried every heartbeat while the session is followed here.
                loop {
                    let Some(holds) = c.take_session(&channel, &session, &gate, true).await else {
                        return;
                    };
                    if holds {
                        c.mirror_session(&session, Some(since)).await;
                        return;
                    }
                    tokio::time::sleep(step).await;
                }
            });
        }
    }

    /// Mirrors every stream of `session` run elsewhere, the live ones now and each new
    /// one as it is announced, until the returned guard is dropped.
    /// The receiver resolves once the node listens to the session's announcements and
    /// mirrors its live streams: a stream started after that reaches the follower. When
    /// Redis cannot take the subscription (unreachable), it resolves anyway and the
    /// subscription is tried again every `heartbeat_ms` while the follower stays.
    pub fn watch_session(
        self: &Arc<Self>,
        session: Arc<str>,
    ) -> (SessionWatch, tokio::sync::oneshot::Receiver<()>) {
        let stop = tokio_util::sync::CancellationToken::new();
        let c = self.clone();
        let token = stop.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let channel = c.session_channel(&session).to_string();
            let gate = {
                let mut l = c
                    .session_watchers
                    .entry(channel.clone())
                    .or_insert_with(|| Listening {
                        session: session.clone(),
                        followers: 0,
                        gate: Arc::default(),
                        since: Instant::now(),
                    });
                l.followers += 1;
                l.gate.clone()
            };
            let step = Duration::from_millis(c.config.heartbeat_ms);
            let mut ready = Some(ready_tx);
            loop {
                // The first follower on this node subscribes; the others wait until the
                // subscription holds, so none reads the live set before it does.
                let holds = c
                    .take_session(&channel, &session, &gate, false)
                    .await
                    .unwrap_or(false);
                // The streams already running (again once a failed subscription holds:
                // those that started meanwhile were announced to nobody here).
                if holds || ready.is_some() {
                    c.mirror_session(&session, None).await;
                }
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                if holds {
                    token.cancelled().await;
                    break;
                }
                // Redis did not take the subscription (unreachable): try again, for as
                // long as the follower is here.
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(step) => {}
                }
            }
            if let Some(mut l) = c.session_watchers.get_mut(&channel) {
                l.followers -= 1;
            }
            // The last one to leave unsubscribes, unless a follower came meanwhile (it
            // waited on the gate and found the subscription in place, or takes it again).
            let mut subscribed = gate.lock().await;
            let last = c
                .session_watchers
                .get(&channel)
                .is_some_and(|l| l.followers == 0);
            if last {
                // Also when Redis never confirmed it: it may have taken it late.
                c.unsubscribe(&channel).await;
                *subscribed = false;
            }
            let gone = c.session_watchers.remove_if(&channel, |_, l| {
                l.followers == 0 && Arc::ptr_eq(&l.gate, &gate)
            });
            if gone.is_some() {
                // Nobody here was sent their end any more.
                c.cut_short.retain(|_, s| *s != session);
            }
        });
        (SessionWatch { stop }, ready_rx)
    }
}

/// Which streams a mirror is made of (see [`Cluster::mirror_if`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mirrored {
    Any,
    Running,
    /// At a rejoin: a stream of a session another node runs (or ran), running or started
    /// since `since_ms` (Redis's time).
    Missed {
        since_ms: u64,
    },
}

/// The lock ordering the changes of a session's subscription on a node (held while
/// subscribing or unsubscribing; the value says whether the subscription holds).
type Gate = Arc<tokio::sync::Mutex<bool>>;

/// A session followed on this node: how many followers it has, and the gate that
/// orders its subscription's changes (held while subscribing or unsubscribing; the
/// value says whether the subscription holds).
pub(super) struct Listening {
    session: Arc<str>,
    followers: usize,
    gate: Gate,
    /// When the session's first follower here came.
    since: Instant,
}

/// Keeps a session followed across the cluster while held.
pub struct SessionWatch {
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a session's channel carries when one of its streams is first written to Redis:
/// `<id>\n<route>\n<first seq>\n` then the lines of that first write.
#[derive(Debug)]
struct Announcement {
    id: RequestId,
    route: String,
    first: Seq,
    lines: Bytes,
}

impl Announcement {
    fn parse(payload: &Bytes) -> Option<Announcement> {
        let mut fields = payload.splitn(4, |b| *b == b'\n');
        fn text(f: Option<&[u8]>) -> Option<&str> {
            f.and_then(|f| std::str::from_utf8(f).ok())
        }
        let id = RequestId::parse(text(fields.next())?).ok()?;
        let route = text(fields.next())?.to_string();
        let first = text(fields.next())?.parse().ok()?;
        let rest = fields.next()?;
        let lines = payload.slice_ref(rest);
        Some(Announcement {
            id,
            route,
            first,
            lines,
        })
    }
}

/// Appends one line read from Redis to a mirror (out-of-order lines are ignored).
fn append_line(stream: &Stream, line: Bytes) -> bool {
    match Line::parse(line) {
        Some((kind, seq, line)) => stream.mirror_append(seq, kind, line),
        None => false,
    }
}

/// Splits a published batch (concatenated lines) into its lines.
fn lines_of(batch: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = batch.get(at..)?;
        if rest.is_empty() {
            return None;
        }
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = batch.slice(at..at + len);
        at += len;
        Some(line)
    })
}

/// The lines of `XRANGE` entries (each entry one batch of lines), and how many entries.
fn lines_of_entries(v: Value) -> (Vec<Bytes>, usize) {
    let mut out = Vec::new();
    let Value::Array(entries) = v else {
        return (out, 0);
    };
    let n = entries.len();
    for e in entries {
        let Value::Array(mut parts) = e else { continue };
        let Some(Value::Array(mut fields)) = parts.pop() else {
            continue;
        };
        if let Some(Value::BulkString(batch)) = fields.pop() {
            let batch = Bytes::from(batch);
            out.extend(lines_of(&batch));
        }
    }
    (out, n)
}

/// Feeds one mirror until its stream ends: live batches, repairs, the position check,
/// and the takeover of a stream whose owner is gone.
async fn follow(
    cluster: Weak<Cluster>,
    stream: Arc<Stream>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    channel: String,
) {
    let Some(c) = cluster.upgrade() else { return };
    // What was published before the subscription took effect is in Redis: read it.
    let _ = c.fill(&stream).await;
    let step = Duration::from_millis(c.config.heartbeat_ms);
    let lease = Duration::from_millis(c.config.lease_ms);
    let outage = Duration::from_millis(c.config.outage_timeout_ms);
    drop(c);
    let mut owner_missing_since: Option<Instant> = None;
    let mut last_change = Instant::now();
    loop {
        if stream.is_ended() {
            break;
        }
        let msg = tokio::time::timeout(step, rx.recv()).await;
        let Some(c) = cluster.upgrade() else { return };
        let head = stream.next_seq();
        let mut repair = false;
        match msg {
            Ok(Some(batch)) => {
                for line in lines_of(&batch) {
                    if let Some((kind, seq, line)) = Line::parse(line) {
                        if seq > stream.next_seq() {
                            repair = true;
                            break;
                        }
                        stream.mirror_append(seq, kind, line);
                    }
                }
            }
            Ok(None) => {
                // No live feed (never expected): fall back to reading Redis every step.
                repair = true;
                tokio::time::sleep(step).await;
            }
            Err(_) => {
                // Quiet for a heartbeat: check the position (a lost last message).
                match c.meta(stream.id.as_str()).await {
                    Ok(Some(meta)) => {
                        if meta.top > head {
                            repair = true;
                        } else if !meta.ended {
                            owner_missing_since =
                                check_owner(&c, &stream, &meta, owner_missing_since, lease).await;
                        }
                    }
                    Ok(None) => {
                        // Redis lost the stream (restarted empty, or expired) and its
                        // owner has not written it again since.
                        if last_change.elapsed() > lease + step {
                            end_mirror(
                                &stream,
                                "stream_lost",
                                "the cluster lost this stream's log",
                            );
                        }
                    }
                    Err(_) => {
                        if c.silent_ms()
                            .is_none_or(|ms| ms >= outage.as_millis() as u64)
                        {
                            // Remembered for the session's followers here, if it has any
                            // (forgotten when the last of them leaves).
                            if let Some(session) = &stream.session_id
                                && c.session_watchers
                                    .contains_key(&c.session_channel(session).to_string())
                            {
                                c.cut_short.insert(stream.id.clone(), session.clone());
                            }
                            end_mirror(
                                &stream,
                                "cluster_unavailable",
                                "the cluster's Redis is unreachable",
                            );
                        }
                    }
                }
            }
        }
        if repair {
            let _ = c.fill(&stream).await;
        }
        if stream.next_seq() != head {
            last_change = Instant::now();
            owner_missing_since = None;
        }
    }
    if let Some(c) = cluster.upgrade() {
        c.unsubscribe(&channel).await;
        if let Some(a) = c.attached.get() {
            a.hub.mirror_finished(&stream);
        }
    }
}

/// Ends a stream for everyone when its owner's liveness key has been gone for a lease:
/// writes `error {node_lost}` + `end {error}` at the observed top, once, by
/// compare-and-set. Returns since when the owner is seen missing.
async fn check_owner(
    c: &Arc<Cluster>,
    stream: &Stream,
    meta: &Meta,
    missing_since: Option<Instant>,
    lease: Duration,
) -> Option<Instant> {
    let mut conn = c.conn();
    let alive: bool = redis::cmd("EXISTS")
        .arg(c.keys.node(&meta.owner))
        .query_async(&mut conn)
        .await
        .unwrap_or(true);
    if alive {
        return None;
    }
    let since = missing_since.unwrap_or_else(Instant::now);
    // This node must itself have been connected for a lease (no mass takeover after its
    // own outage).
    if since.elapsed() < lease || c.silent_ms().is_none_or(|ms| ms > lease.as_millis() as u64) {
        return Some(since);
    }
    let mut scratch = crate::event::LineBuf::default();
    let error = Line::of(
        &crate::event::Event {
            event: EventKind::Error,
            seq: Some(meta.top),
            data: serde_json::json!({"error_type": "node_lost", "message": format!("node {} running this stream was lost", meta.owner)}),
        },
        &mut scratch,
    );
    let end = Line::of(
        &crate::event::Event {
            event: EventKind::End,
            seq: Some(meta.top + 1),
            data: serde_json::json!({"reason": "error"}),
        },
        &mut scratch,
    );
    let id = stream.id.as_str();
    let mut takeover = TAKEOVER_SCRIPT.key(c.stream_key(id, "meta"));
    takeover
        .key(c.stream_key(id, "log"))
        .key(c.stream_key(id, "ev"))
        .key(c.keys.node(&meta.owner));
    if !meta.session.is_empty() {
        takeover
            .key(c.session_key(&meta.session))
            .key(c.session_ended_key(&meta.session));
    }
    let wrote: Result<u8, _> = takeover
        .arg(&meta.owner)
        .arg(meta.top)
        .arg(c.end_ttl_ms())
        .arg(error.as_bytes())
        .arg(end.as_bytes())
        .arg(id)
        .invoke_async(&mut conn)
        .await;
    if matches!(wrote, Ok(1)) {
        c.took_over();
        tracing::warn!(request_id = id, owner = %meta.owner, "took over a stream whose node was lost");
    }
    let _ = c.fill(stream).await;
    Some(since)
}

/// Ends a mirror locally (the cluster cannot tell how its stream goes on): its
/// subscribers get `error` + `end {error}` right after what they have.
fn end_mirror(stream: &Stream, error_type: &str, message: &str) {
    let head = stream.next_seq();
    let mut scratch = crate::event::LineBuf::default();
    let error = Line::of(
        &crate::event::Event {
            event: EventKind::Error,
            seq: Some(head),
            data: serde_json::json!({"error_type": error_type, "message": message}),
        },
        &mut scratch,
    );
    let end = Line::of(
        &crate::event::Event {
            event: EventKind::End,
            seq: Some(head + 1),
            data: serde_json::json!({"reason": "error"}),
        },
        &mut scratch,
    );
    stream.mirror_append(head, EventKind::Error, error);
    stream.mirror_append(head + 1, EventKind::End, end);
}

/// The write-through task: group commit of every stream with pending entries.
async fn writer(cluster: Weak<Cluster>, mut rx: mpsc::UnboundedReceiver<Arc<Stream>>) {
    let script = redis::Script::new(APPEND);
    let mut pending: Vec<Arc<Stream>> = Vec::new();
    let mut failing_since: Option<Instant> = None;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(s) => pending.push(s),
                None => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            pending.push(s);
        }
        // A stream told twice (say, ended while a failed flush held it) is written once.
        {
            let mut seen = std::collections::HashSet::new();
            pending.retain(|s| seen.insert(Arc::as_ptr(s) as usize));
        }
        let Some(c) = cluster.upgrade() else { return };
        let mut pipe = redis::pipe();
        let mut batch: Vec<(Arc<Stream>, Seq, Seq)> = Vec::new();
        for s in pending.drain(..) {
            let entries = s.uncommitted();
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                continue;
            };
            let (first, upto) = (first.seq, last.seq + 1);
            let ended = entries.iter().any(|e| e.kind == EventKind::End);
            let id = s.id.as_str();
            // Sized once: the lines and the other arguments (keys, names, numbers).
            let lines: usize = entries.iter().map(|e| e.line.len()).sum();
            let mut cmd = redis::Cmd::with_capacity(15, lines + 3 * id.len() + 384);
            let key = |what| c.stream_key(id, what);
            cmd.arg("EVALSHA")
                .arg(script.get_hash())
                .arg(if s.session_id.is_some() { 6 } else { 3 })
                .arg(key("log"))
                .arg(key("meta"))
                .arg(key("ev"));
            if let Some(session) = &s.session_id {
                cmd.arg(c.session_key(session))
                    .arg(c.session_channel(session))
                    .arg(c.session_ended_key(session));
            }
            cmd.arg(&c.node)
                .arg(first)
                .arg(c.config.live_ttl_secs * 1000)
                .arg(c.end_ttl_ms())
                .arg(u8::from(ended))
                .arg(&*s.route.name)
                .arg(s.session_id.as_deref().unwrap_or(""))
                .arg(c.attached.get().map_or(65_536, |a| a.max_kept));
            cmd.arg(entries.len()).arg(Lines(&entries)).arg(id);
            pipe.add_command(cmd);
            batch.push((s, first, upto));
        }
        if batch.is_empty() {
            continue;
        }
        let mut conn = c.conn();
        let started = Instant::now();
        let mut result: Result<Vec<(String, i64)>, redis::RedisError> =
            pipe.query_async(&mut conn).await;
        // An empty (restarted) Redis does not know the script yet: load it, then retry
        // (the script makes a repeated batch harmless).
        if matches!(&result, Err(e) if e.to_string().to_ascii_lowercase().contains("noscript"))
            && script.load_async(&mut conn).await.is_ok()
        {
            result = pipe.query_async(&mut conn).await;
        }
        match result {
            Ok(replies) => {
                c.saw_redis();
                failing_since = None;
                let events: Seq = batch.iter().map(|(_, f, u)| u - f).sum();
                c.flushed(started.elapsed(), events);
                for ((s, _, upto), (status, n)) in batch.into_iter().zip(replies) {
                    match status.as_str() {
                        "OK" => {
                            s.set_remote_readers(usize::try_from(n).unwrap_or(0));
                            s.commit(upto);
                        }
                        "FENCED" => {
                            tracing::warn!(request_id = %s.id, "this node no longer owns the stream; ending it here");
                            c.fenced();
                            s.abort("node_lost", "this node lost the stream to the cluster");
                            // Nothing more of it goes to Redis: the rest is local only.
                            fence_local(&s);
                        }
                        _ if s.is_ended() && s.failure().is_some() => {
                            // Ended here during an outage; Redis lost its start meanwhile.
                            tracing::debug!(request_id = %s.id, status, n, "an ended stream cannot be written to Redis");
                            fence_local(&s);
                        }
                        _ => {
                            tracing::warn!(request_id = %s.id, status, "the stream's Redis log is behind; ending it");
                            s.abort("stream_lost", "the cluster lost part of this stream");
                            fence_local(&s);
                        }
                    }
                }
            }
            Err(e) => {
                c.redis_error("append");
                let since = *failing_since.get_or_insert_with(Instant::now);
                tracing::debug!(error = %e, "write-through failed; retrying");
                // Failing for longer than the bound, whatever the heartbeat says: end the
                // streams explicitly for their subscribers here rather than hold them,
                // and keep writing them (the end included) until Redis takes them, so a
                // later reader on another node reads what these subscribers read. Past
                // the live keys' lifetime they are given up.
                let past_bound =
                    since.elapsed() >= Duration::from_millis(c.config.outage_timeout_ms);
                let give_up = since.elapsed() >= Duration::from_secs(c.config.live_ttl_secs);
                for (s, _, _) in batch {
                    if past_bound {
                        s.abort("cluster_unavailable", "the cluster's Redis is unreachable");
                        s.commit_eagerly();
                    }
                    if !give_up {
                        pending.push(s);
                    }
                }
                drop(c);
                let backoff = if past_bound { 500 } else { 50 };
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
        }
    }
}

/// A stream that may no longer be written to Redis: from now on its log is local only
/// (whatever it holds and will hold is shown to its local subscribers).
fn fence_local(s: &Arc<Stream>) {
    s.commit_locally();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_carries_the_stream_its_route_its_first_seq_and_its_first_lines() {
        let lines = "{\"event\":\"status_update\",\"seq\":0}\n{\"event\":\"chunk\",\"seq\":1}\n";
        let payload = Bytes::from(format!("req-1\nchat\n0\n{lines}"));
        let a = Announcement::parse(&payload).unwrap();
        assert_eq!(
            (a.id.as_str(), a.route.as_str(), a.first),
            ("req-1", "chat", 0)
        );
        assert_eq!(a.lines, lines.as_bytes());
        assert_eq!(lines_of(&a.lines).count(), 2);
        // A re-seeded stream starts past 0; its lines may hold newlines only as separators.
        let a = Announcement::parse(&Bytes::from_static(b"r\nchat\n42\n")).unwrap();
        assert_eq!((a.first, a.lines.len()), (42, 0));
    }

    #[test]
    fn stream_and_session_keys_share_one_format_with_their_hash_tag() {
        let key = |tag, id, what| {
            Key {
                prefix: "sy",
                tag,
                id,
                what,
            }
            .to_string()
        };
        assert_eq!(key("", "req-1", "log"), "sy:{req-1}:log");
        assert_eq!(key("s:", "sess", "live"), "sy:{s:sess}:live");
        let mut cmd = redis::cmd("X");
        cmd.arg(Key {
            prefix: "sy",
            tag: "s:",
            id: "sess",
            what: "ev",
        });
        assert!(
            cmd.get_packed_command()
                .ends_with(b"$14\r\nsy:{s:sess}:ev\r\n")
        );
    }

    #[test]
    fn a_malformed_announcement_is_ignored() {
        for bad in [
            &b""[..],
            b"req-1",
            b"req-1\nchat",
            b"req-1\nchat\nx\n",
            b"bad id!\nchat\n0\n",
        ] {
            assert!(
                Announcement::parse(&Bytes::copy_from_slice(bad)).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_meta_reads_its_fields_in_order_and_an_unknown_stream_has_none() {
        let fields = |v: &[Option<&str>]| v.iter().map(|f| f.map(String::from)).collect();
        let m = Meta::from_fields(fields(&[
            Some("n1"),
            Some("chat"),
            Some("s1"),
            Some("4"),
            Some("9"),
            Some("1"),
            Some("1733300000123"),
        ]))
        .unwrap();
        assert_eq!(
            (m.owner.as_str(), m.route.as_str(), m.session.as_str()),
            ("n1", "chat", "s1")
        );
        assert_eq!(
            (m.first, m.top, m.ended, m.started),
            (4, 9, true, 1_733_300_000_123)
        );
        // A stream outside a session has no start time.
        let m = Meta::from_fields(fields(&[
            Some("n1"),
            Some("chat"),
            Some(""),
            Some("0"),
            Some("3"),
            Some("0"),
            None,
        ]))
        .unwrap();
        assert_eq!((m.ended, m.started), (false, 0));
        assert!(Meta::from_fields(fields(&[None; 7])).is_none());
    }
}
