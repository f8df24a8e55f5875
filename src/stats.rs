//! The numbers behind the ops console, for scripts too: `GET /admin/stats` (per route and
//! transport, read from the bridge's own metric handles) and the estimate of
//! `POST /admin/flags/{route}/preview` (what share of recent subjects a flag change moves).
//!
//! Owns the bounded record of recent subjects per route ([`RecentSubjects`]: a fixed ring
//! of hashes of their sticky keys, written with atomics only, never a lock or an
//! allocation on the request path) and the arithmetic on counters (ratios, latency
//! quantiles from histogram buckets). It must not change flags or metrics, keep a subject's
//! identity (only 32-bit hashes of its keys, the input of bucketing), or hold any state
//! other than that ring.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

use crate::event::EndReason;
use crate::flags::eval::{BUCKETS, murmur3_x86_32};
use crate::flags::{Mode, RouteFlag, Sticky, Target};
use crate::metrics::{HistogramCounts, Metrics, REJECTED, TransportCounts};
use crate::request::{Subject, Transport};

/// Requests remembered per route for the preview (the newest overwrite the oldest).
pub const RECENT_SLOTS: usize = 1024;

/// A slot's key for one sticky kind: `0` when the request had no such key, else the
/// murmur3 hash of `"<route>:<key>"` with bit 32 set (its bucket is `hash % 10 000`).
const PRESENT: u64 = 1 << 32;

/// One remembered request: a key per sticky kind (user, session, tenant).
#[derive(Default)]
struct Slot([AtomicU64; 3]);

struct Ring {
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

/// The last [`RECENT_SLOTS`] requests of every configured route, by the hashes of their
/// sticky keys. Bounded (24 KiB per route); writers only store atomics, and a reader may
/// see a slot half-rewritten, which an estimate tolerates.
pub struct RecentSubjects {
    routes: HashMap<String, Ring>,
}

/// A recent subject as the preview sees it: the hash of each sticky key it had.
pub type Keys = [Option<u32>; 3];

fn sticky_index(s: Sticky) -> usize {
    match s {
        Sticky::User => 0,
        Sticky::Session => 1,
        Sticky::Tenant => 2,
    }
}

impl RecentSubjects {
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a str>) -> RecentSubjects {
        RecentSubjects {
            routes: routes
                .into_iter()
                .map(|r| {
                    let slots = (0..RECENT_SLOTS).map(|_| Slot::default()).collect();
                    (
                        r.to_string(),
                        Ring {
                            slots,
                            next: AtomicUsize::new(0),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Remembers a new request's subject on `route` (a route not configured is ignored).
    pub fn record(&self, route: &str, subject: &Subject) {
        let Some(ring) = self.routes.get(route) else {
            return;
        };
        let i = ring.next.fetch_add(1, Ordering::Relaxed) % RECENT_SLOTS;
        let Some(slot) = ring.slots.get(i) else {
            return;
        };
        for sticky in Sticky::ALL {
            let key = sticky.value_in(subject).map_or(0, |key| {
                PRESENT | u64::from(murmur3_x86_32(0, &[route.as_bytes(), b":", key.as_bytes()]))
            });
            if let Some(cell) = slot.0.get(sticky_index(sticky)) {
                cell.store(key, Ordering::Relaxed);
            }
        }
    }

    /// The recent requests of `route`, oldest slot first (at most [`RECENT_SLOTS`]).
    pub fn entries(&self, route: &str) -> Vec<Keys> {
        let Some(ring) = self.routes.get(route) else {
            return Vec::new();
        };
        let filled = ring.next.load(Ordering::Relaxed).min(RECENT_SLOTS);
        ring.slots
            .iter()
            .take(filled)
            .map(|slot| {
                [0, 1, 2].map(|k| {
                    let v = slot.0.get(k).map_or(0, |c| c.load(Ordering::Relaxed));
                    (v & PRESENT != 0).then_some(v as u32)
                })
            })
            .collect()
    }
}

/// The distinct subjects among recent requests, told apart by the sticky keys that
/// matter (`by`): two requests with the same values of those keys are one subject. A
/// request with none of them counts on its own (nothing tells such subjects apart).
pub fn distinct(entries: &[Keys], by: &[Sticky]) -> Vec<Keys> {
    let mut seen = HashSet::new();
    entries
        .iter()
        .filter(|keys| {
            let id: Vec<Option<u32>> = by
                .iter()
                .map(|s| keys.get(sticky_index(*s)).copied().flatten())
                .collect();
            id.iter().all(Option::is_none) || seen.insert(id)
        })
        .copied()
        .collect()
}

/// The side a flag's mode gives a subject with these key hashes. `allow` and `deny` are
/// not applied: the preview knows hashes, not identities (the console shows list changes
/// in its diff).
pub fn side(flag: &RouteFlag, keys: &Keys) -> Target {
    match flag.mode {
        Mode::Legacy | Mode::Dual => Target::Socketio,
        Mode::New => Target::Http,
        Mode::Rollout => match keys.get(sticky_index(flag.sticky)).copied().flatten() {
            Some(h) if h % BUCKETS < u32::from(flag.percent.basis_points()) => Target::Http,
            _ => Target::Socketio,
        },
    }
}

/// What a change of a route's table would do to its recent subjects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Movement {
    /// Distinct recent subjects considered (at most [`RECENT_SLOTS`]).
    pub subjects: usize,
    /// Those that would change side.
    pub moving: usize,
    pub to_http: usize,
    pub to_socketio: usize,
    /// `moving / subjects` (0 without subjects).
    pub share: f64,
    /// The share on HTTP before and after.
    pub http_before: f64,
    pub http_after: f64,
}

/// What changing `before` to `after` does to the distinct subjects of `entries`.
pub fn movement(before: &RouteFlag, after: &RouteFlag, entries: &[Keys]) -> Movement {
    let subjects = distinct(entries, &[before.sticky, after.sticky]);
    let (mut to_http, mut to_socketio, mut http_before, mut http_after) = (0, 0, 0, 0);
    for keys in &subjects {
        let (b, a) = (side(before, keys), side(after, keys));
        http_before += usize::from(b == Target::Http);
        http_after += usize::from(a == Target::Http);
        match (b, a) {
            (Target::Socketio, Target::Http) => to_http += 1,
            (Target::Http, Target::Socketio) => to_socketio += 1,
            _ => {}
        }
    }
    let n = subjects.len();
    Movement {
        subjects: n,
        moving: to_http + to_socketio,
        to_http,
        to_socketio,
        share: ratio(to_http + to_socketio, n),
        http_before: ratio(http_before, n),
        http_after: ratio(http_after, n),
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn ratio_u64(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// `GET /admin/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// The flags version in force.
    pub flags_version: u64,
    /// The actor the caller's token is recorded as.
    pub actor: String,
    /// By route, in the order of routes.toml.
    pub routes: InOrder<RouteStats>,
}

/// A JSON object whose keys keep the order they were given in.
#[derive(Debug, Clone)]
pub struct InOrder<T>(pub Vec<(String, T)>);

impl<T: Serialize> Serialize for InOrder<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteStats {
    pub mode: Mode,
    pub percent: f64,
    /// Every counter since start-up, by transport (`socketio`, `ndjson`, `sse`).
    pub transports: BTreeMap<&'static str, TransportStats>,
    /// Share of streams started over HTTP (NDJSON + SSE), since start-up.
    pub http_share: f64,
    /// Flag evaluations of new requests, by evaluated side (`http`, `socketio`).
    pub evaluations: BTreeMap<&'static str, u64>,
    /// Distinct subjects (by the route's sticky key) among its recent requests.
    pub recent_subjects: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransportStats {
    pub started: u64,
    pub active: i64,
    /// Finished streams by end reason (`rejected`: refused requests).
    pub finished: BTreeMap<&'static str, u64>,
    /// `error` + `timeout` + `slow_consumer` ends over all ends (refusals excluded).
    pub error_ratio: f64,
    /// `cancelled` ends over all ends.
    pub cancel_ratio: f64,
    pub misrouted: u64,
    pub first_event: Latency,
}

/// First-event latency from its histogram: quantiles interpolated within buckets as
/// Prometheus' `histogram_quantile` does; `null` until there is a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
}

pub fn transport_stats(c: &TransportCounts) -> TransportStats {
    let get = |r: &str| {
        c.finished
            .iter()
            .find(|(k, _)| *k == r)
            .map_or(0, |(_, v)| *v)
    };
    let ended: u64 = c
        .finished
        .iter()
        .filter(|(k, _)| *k != REJECTED)
        .map(|(_, v)| v)
        .sum();
    let errors = [
        EndReason::Error,
        EndReason::Timeout,
        EndReason::SlowConsumer,
    ]
    .map(|r| get(r.as_str()))
    .iter()
    .sum();
    TransportStats {
        started: c.started,
        active: c.active,
        finished: c.finished.iter().copied().collect(),
        error_ratio: ratio_u64(errors, ended),
        cancel_ratio: ratio_u64(get(EndReason::Cancelled.as_str()), ended),
        misrouted: c.misrouted,
        first_event: latency(&c.first_event),
    }
}

pub fn latency(h: &HistogramCounts) -> Latency {
    let has = h.count > 0;
    Latency {
        count: h.count,
        mean_seconds: has.then(|| h.sum / h.count as f64),
        p50_seconds: quantile(h, 0.5),
        p95_seconds: quantile(h, 0.95),
    }
}

/// The `q` quantile of a histogram with cumulative `buckets` (upper bound, count), linear
/// within the bucket that holds it; beyond the last finite bound, that bound.
pub fn quantile(h: &HistogramCounts, q: f64) -> Option<f64> {
    if h.count == 0 {
        return None;
    }
    let rank = q * h.count as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(upper, cumulative) in &h.buckets {
        if cumulative as f64 >= rank {
            let inside = cumulative.saturating_sub(below);
            if inside == 0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below as f64) / inside as f64);
        }
        (lower, below) = (upper, cumulative);
    }
    Some(lower)
}

/// The stats of every configured route.
pub fn collect(
    metrics: &Metrics,
    routes: &[String],
    flags: &crate::flags::Flags,
    actor: String,
) -> Stats {
    let routes = routes
        .iter()
        .map(|route| {
            let flag = flags.route(route);
            let transports: BTreeMap<&'static str, TransportStats> = Transport::ALL
                .iter()
                .map(|&t| {
                    (
                        t.as_str(),
                        transport_stats(&metrics.transport_counts(route, t)),
                    )
                })
                .collect();
            let started = |t: Transport| transports.get(t.as_str()).map_or(0, |s| s.started);
            let http = started(Transport::Ndjson) + started(Transport::Sse);
            let (http_ev, sio_ev) = metrics.evaluations(route);
            let stats = RouteStats {
                mode: flag.mode,
                percent: flag.percent.as_f64(),
                http_share: ratio_u64(http, http + started(Transport::Socketio)),
                transports,
                evaluations: BTreeMap::from([("http", http_ev), ("socketio", sio_ev)]),
                recent_subjects: distinct(
                    &metrics.recent_subjects().entries(route),
                    &[flag.sticky],
                )
                .len(),
            };
            (route.clone(), stats)
        })
        .collect();
    Stats {
        flags_version: flags.version,
        actor,
        routes: InOrder(routes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{Percent, evaluate};

    fn subject(user: &str) -> Subject {
        Subject {
            user: Some(user.into()),
            session: None,
            tenant: Some("acme".into()),
        }
    }

    fn rollout(percent: &str) -> RouteFlag {
        let mut f = RouteFlag::new(Mode::Rollout);
        f.percent = percent.parse::<Percent>().unwrap();
        f
    }

    #[test]
    fn the_side_of_a_recorded_subject_is_its_evaluation() {
        let recent = RecentSubjects::new(["chat"]);
        let users: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
        for u in &users {
            recent.record("chat", &subject(u));
        }
        let subjects = recent.entries("chat");
        assert_eq!(subjects.len(), 500);
        for flag in [
            rollout("10"),
            rollout("33.33"),
            RouteFlag::new(Mode::New),
            RouteFlag::new(Mode::Dual),
        ] {
            for (u, keys) in users.iter().zip(&subjects) {
                assert_eq!(
                    side(&flag, keys),
                    evaluate(&flag, "chat", &subject(u)).transport,
                    "{u} under {flag:?}"
                );
            }
        }
    }

    #[test]
    fn raising_the_percent_moves_only_to_http_and_about_the_difference() {
        let recent = RecentSubjects::new(["chat"]);
        for i in 0..2000 {
            recent.record("chat", &subject(&format!("u{i}")));
        }
        let subjects = recent.entries("chat");
        assert_eq!(subjects.len(), RECENT_SLOTS, "the record is bounded");
        let m = movement(&rollout("10"), &rollout("50"), &subjects);
        assert_eq!(m.to_socketio, 0);
        assert!((m.share - 0.4).abs() < 0.06, "{m:?}");
        assert!((m.http_after - 0.5).abs() < 0.06, "{m:?}");
        let back = movement(&rollout("50"), &RouteFlag::new(Mode::Legacy), &subjects);
        assert_eq!(back.to_http, 0);
        assert!((back.share - 0.5).abs() < 0.06, "{back:?}");
        let none = movement(&rollout("10"), &rollout("10"), &subjects);
        assert_eq!(none.moving, 0);
        assert_eq!(movement(&rollout("1"), &rollout("2"), &[]).share, 0.0);
    }

    #[test]
    fn a_subject_without_the_sticky_key_stays_on_socketio_and_repeats_count_once() {
        let recent = RecentSubjects::new(["chat"]);
        recent.record("chat", &subject("alice"));
        recent.record("chat", &subject("alice"));
        recent.record("chat", &Subject::default());
        recent.record("chat", &Subject::default());
        // The same user in many sessions: one subject by user, many by session.
        for i in 0..5 {
            let mut s = subject("carol");
            s.session = Some(format!("s{i}"));
            recent.record("chat", &s);
        }
        recent.record("unknown", &subject("bob"));
        let entries = recent.entries("chat");
        assert_eq!(entries.len(), 9);
        let by_user = distinct(&entries, &[Sticky::User]);
        assert_eq!(by_user.len(), 4, "alice, carol, and each anonymous request");
        assert_eq!(distinct(&entries, &[Sticky::Session]).len(), 5 + 4);
        assert_eq!(
            distinct(&entries, &[Sticky::Tenant]).len(),
            3,
            "acme, 2 anonymous"
        );
        let mut by_session = rollout("100");
        by_session.sticky = Sticky::Session;
        assert_eq!(side(&by_session, &entries[0]), Target::Socketio);
        let m = movement(&rollout("0"), &rollout("100"), &entries);
        assert_eq!((m.subjects, m.to_http), (4, 2), "{m:?}");
        assert!(recent.entries("unknown").is_empty());
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = HistogramCounts {
            count: 10,
            sum: 1.0,
            buckets: vec![(0.01, 0), (0.1, 8), (1.0, 10)],
        };
        let l = latency(&h);
        assert_eq!(l.mean_seconds, Some(0.1));
        let p50 = l.p50_seconds.unwrap();
        assert!((p50 - (0.01 + 0.09 * 5.0 / 8.0)).abs() < 1e-9, "{p50}");
        let p95 = l.p95_seconds.unwrap();
        assert!((p95 - (0.1 + 0.9 * 1.5 / 2.0)).abs() < 1e-9, "{p95}");
        let empty = HistogramCounts {
            count: 0,
            sum: 0.0,
            buckets: vec![(0.01, 0)],
        };
        assert_eq!(latency(&empty).p50_seconds, None);
        // Past every finite bound: the largest bound, never infinity.
        let over = HistogramCounts {
            count: 2,
            sum: 100.0,
            buckets: vec![(30.0, 0)],
        };
        assert_eq!(quantile(&over, 0.5), Some(30.0));
    }

    #[test]
    fn ratios_leave_refusals_out() {
        let c = TransportCounts {
            started: 10,
            active: 1,
            finished: vec![
                ("completed", 6),
                ("error", 1),
                ("timeout", 1),
                ("cancelled", 2),
                ("rejected", 5),
            ],
            misrouted: 0,
            first_event: HistogramCounts::default(),
        };
        let s = transport_stats(&c);
        assert_eq!(s.error_ratio, 0.2);
        assert_eq!(s.cancel_ratio, 0.2);
        assert_eq!(s.first_event.p95_seconds, None);
    }
}
