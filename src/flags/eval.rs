//! Pure flag evaluation (SPEC section 5): which transport a subject is given on a route,
//! and what a new request on a given transport gets.
//!
//! Nothing here allocates, locks or reads a clock: [`evaluate`] and
//! [`Enforcement::decide`] are functions of their arguments only, so every node and every
//! restart gives a subject the same answer for the same flags.

use serde::Serialize;

use crate::request::{Subject, Transport};

use super::model::{Flags, Mode, RouteFlag};

/// MurmurHash3, x86 32-bit variant, over the concatenation of `parts`, without
/// allocating: a partial 4-byte block is carried across part boundaries, so any split of
/// the same bytes gives the same hash.
pub fn murmur3_x86_32(seed: u32, parts: &[&[u8]]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;

    #[inline(always)]
    fn scramble(k: u32) -> u32 {
        k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
    }
    #[inline(always)]
    fn block(h: u32, k: u32) -> u32 {
        (h ^ scramble(k))
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    }

    let mut h = seed;
    let mut carry = [0u8; 4];
    let mut carried = 0usize;
    let mut len = 0usize;
    for part in parts {
        len = len.wrapping_add(part.len());
        let mut rest: &[u8] = part;
        if carried > 0 {
            let take = (4 - carried).min(rest.len());
            carry[carried..carried + take].copy_from_slice(&rest[..take]);
            carried += take;
            rest = &rest[take..];
            if carried < 4 {
                continue;
            }
            h = block(h, u32::from_le_bytes(carry));
            // `carried` is reset below, to the new tail.
        }
        let mut blocks = rest.chunks_exact(4);
        for b in &mut blocks {
            h = block(h, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        let tail = blocks.remainder();
        carry[..tail.len()].copy_from_slice(tail);
        carried = tail.len();
    }
    if carried > 0 {
        let mut k = 0u32;
        for &b in carry[..carried].iter().rev() {
            k = (k << 8) | u32::from(b);
        }
        h ^= scramble(k);
    }
    // The reference implementation takes the length as a 32-bit int.
    h ^= len as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The number of buckets: one per basis point.
pub const BUCKETS: u32 = 10_000;

/// A subject's rollout bucket on a route, `0..10_000`: murmur3 x86 32-bit, seed 0, of the
/// UTF-8 bytes of `"<route>:<key>"`, modulo 10 000. Never changes (pinned by tests).
#[inline]
pub fn bucket(route: &str, key: &str) -> u32 {
    murmur3_x86_32(0, &[route.as_bytes(), b":", key.as_bytes()]) % BUCKETS
}

/// The transport evaluation gives a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Http,
    Socketio,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Http => "http",
            Target::Socketio => "socketio",
        }
    }

    /// The side a request transport is on: NDJSON and SSE are HTTP.
    #[inline]
    pub fn of(transport: Transport) -> Target {
        match transport {
            Transport::Socketio => Target::Socketio,
            Transport::Ndjson | Transport::Sse => Target::Http,
        }
    }
}

impl From<Transport> for Target {
    fn from(t: Transport) -> Target {
        Target::of(t)
    }
}

/// Why evaluation gave its transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A `deny` entry matched: Socket.IO.
    Deny,
    /// An `allow` entry matched (and no `deny`): HTTP.
    Allow,
    /// The mode decided: `legacy`/`dual` → Socket.IO, `new` → HTTP.
    Mode,
    /// `rollout`: the subject's bucket against the percentage.
    Percent,
    /// `rollout` and the subject lacks the sticky key: Socket.IO.
    NoStickyKey,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Deny => "deny",
            Reason::Allow => "allow",
            Reason::Mode => "mode",
            Reason::Percent => "percent",
            Reason::NoStickyKey => "no_sticky_key",
        }
    }
}

/// The outcome of [`evaluate`]; serialises to
/// `{"transport":"http","reason":"percent","bucket":1734}` (`bucket` is `null` unless the
/// reason is `percent`). The API layer adds `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Evaluation {
    pub transport: Target,
    pub reason: Reason,
    pub bucket: Option<u32>,
}

impl Evaluation {
    #[inline]
    const fn by(transport: Target, reason: Reason) -> Evaluation {
        Evaluation {
            transport,
            reason,
            bucket: None,
        }
    }
}

/// Evaluates `flag` (route `route`'s flag; [`RouteFlag::LEGACY`] for a route without a
/// table, see [`super::Flags::route`]) for `subject`: `deny` wins, then `allow`, then the
/// mode. In `rollout`, the subject's sticky key (an empty value counts as absent) is
/// bucketed and the subject gets HTTP when `bucket < basis points`.
///
/// Pure: no allocation, no lock.
#[inline]
pub fn evaluate(flag: &RouteFlag, route: &str, subject: &Subject) -> Evaluation {
    if flag.deny.iter().any(|r| r.matches(subject)) {
        return Evaluation::by(Target::Socketio, Reason::Deny);
    }
    if flag.allow.iter().any(|r| r.matches(subject)) {
        return Evaluation::by(Target::Http, Reason::Allow);
    }
    match flag.mode {
        Mode::Legacy | Mode::Dual => Evaluation::by(Target::Socketio, Reason::Mode),
        Mode::New => Evaluation::by(Target::Http, Reason::Mode),
        Mode::Rollout => match flag.sticky.value_in(subject) {
            None => Evaluation::by(Target::Socketio, Reason::NoStickyKey),
            Some(key) => {
                let b = bucket(route, key);
                let transport = if b < u32::from(flag.percent.basis_points()) {
                    Target::Http
                } else {
                    Target::Socketio
                };
                Evaluation {
                    transport,
                    reason: Reason::Percent,
                    bucket: Some(b),
                }
            }
        },
    }
}

/// Whether a request on `used` is misrouted: the route is in `dual` or `rollout` and the
/// request came on the other side than its subject's evaluated transport. A strict
/// refusal ([`Enforcement::Refused`] in `dual`/`rollout`) is a misrouted request too;
/// this is what `switchyard_misrouted_total` counts.
#[inline]
pub fn misrouted(evaluation: Evaluation, mode: Mode, used: Transport) -> bool {
    matches!(mode, Mode::Dual | Mode::Rollout) && Target::of(used) != evaluation.transport
}

/// What a new request gets (SPEC section 5, "Enforcement on new requests"). Running
/// streams are never re-decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Enforcement {
    /// Served; `misrouted` when counted in `switchyard_misrouted_total`.
    Allowed { misrouted: bool },
    /// Refused: HTTP 409 `route_not_migrated` or Socket.IO `route_migrated`, by the
    /// transport the request came on.
    Refused,
}

impl Enforcement {
    /// Decides from the subject's evaluation on the route, the route's `mode` and
    /// `strict`, and the transport the request came on:
    /// - `legacy`: HTTP is refused unless the subject is evaluated to HTTP (`allow`).
    /// - `new`: Socket.IO is refused unless the subject is evaluated to Socket.IO (`deny`).
    /// - `dual`, `rollout`: both served; [`misrouted`] when on the other side than the
    ///   evaluated transport, refused when also `strict`.
    pub fn decide(
        evaluation: Evaluation,
        mode: Mode,
        strict: bool,
        used: Transport,
    ) -> Enforcement {
        let side = Target::of(used);
        match mode {
            Mode::Legacy if side == Target::Http && evaluation.transport == Target::Socketio => {
                Enforcement::Refused
            }
            Mode::New if side == Target::Socketio && evaluation.transport == Target::Http => {
                Enforcement::Refused
            }
            Mode::Legacy | Mode::New => Enforcement::Allowed { misrouted: false },
            Mode::Dual | Mode::Rollout => {
                let misrouted = misrouted(evaluation, mode, used);
                if strict && misrouted {
                    Enforcement::Refused
                } else {
                    Enforcement::Allowed { misrouted }
                }
            }
        }
    }

    pub fn is_allowed(self) -> bool {
        matches!(self, Enforcement::Allowed { .. })
    }
}

// The evaluation methods of the model's types live here, with the evaluation: the model
// knows nothing of it.
impl RouteFlag {
    /// Evaluates this flag for `subject` on `route` (see [`evaluate`]).
    #[inline]
    pub fn evaluate(&self, route: &str, subject: &Subject) -> Evaluation {
        evaluate(self, route, subject)
    }

    /// What a new request of `subject` on `used` gets (see [`Enforcement`]).
    #[inline]
    pub fn enforce(&self, route: &str, subject: &Subject, used: Transport) -> Enforcement {
        Enforcement::decide(self.evaluate(route, subject), self.mode, self.strict, used)
    }
}

impl Flags {
    /// Evaluates route `name` for `subject` (see [`evaluate`]).
    #[inline]
    pub fn evaluate(&self, name: &str, subject: &Subject) -> Evaluation {
        evaluate(self.route(name), name, subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::model::{Percent, Sticky, SubjectRef};
    use proptest::prelude::*;

    fn mm(seed: u32, s: &[u8]) -> u32 {
        murmur3_x86_32(seed, &[s])
    }

    #[test]
    fn murmur3_published_vectors() {
        assert_eq!(mm(0, b""), 0);
        assert_eq!(mm(1, b""), 0x514E_28B7);
        assert_eq!(mm(0xffff_ffff, b""), 0x81F1_6F39);
        assert_eq!(mm(0, b"\xff\xff\xff\xff"), 0x7629_3B50);
        assert_eq!(mm(0, b"\x21\x43\x65\x87"), 0xF55B_516B);
        assert_eq!(mm(0x5082_EDEE, b"\x21\x43\x65\x87"), 0x2362_F9DE);
        assert_eq!(mm(0, b"\x21\x43\x65"), 0x7E4A_8634);
        assert_eq!(mm(0, b"\x21\x43"), 0xA0F7_B07A);
        assert_eq!(mm(0, b"\x21"), 0x7266_1CF4);
        assert_eq!(mm(0, b"\0\0\0\0"), 0x2362_F9DE);
        assert_eq!(mm(0, b"hello"), 0x248B_FA47);
        assert_eq!(mm(0, b"abc"), 0xB3DD_93FA);
        assert_eq!(
            mm(
                0,
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            ),
            0xEE92_5B90
        );
        assert_eq!(
            mm(0, b"The quick brown fox jumps over the lazy dog"),
            0x2E4F_F723
        );
        assert_eq!(mm(0x9747_b28c, b"aaaa"), 0x5A97_808A);
        assert_eq!(mm(0x9747_b28c, b"aaa"), 0x283E_0130);
        assert_eq!(mm(0x9747_b28c, b"aa"), 0x5D21_1726);
        assert_eq!(mm(0x9747_b28c, b"a"), 0x7FA0_9EA6);
        assert_eq!(mm(0x9747_b28c, b"Hello, world!"), 0x2488_4CBA);
        assert_eq!(mm(0x9747_b28c, "ππππππππ".as_bytes()), 0xD580_63C1);
        assert_eq!(
            mm(0x9747_b28c, b"The quick brown fox jumps over the lazy dog"),
            0x2FA8_26CD
        );
    }

    #[test]
    fn murmur3_every_split_gives_the_same_hash() {
        let input = b"The quick brown fox jumps over the lazy dog";
        let whole = mm(0, input);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let parts: [&[u8]; 3] = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(murmur3_x86_32(0, &parts), whole, "{i} {j}");
            }
        }
        let bytes: Vec<&[u8]> = input.iter().map(std::slice::from_ref).collect();
        assert_eq!(murmur3_x86_32(0, &bytes), whole);
        assert_eq!(murmur3_x86_32(0, &[]), mm(0, b""));
        assert_eq!(
            murmur3_x86_32(0, &[b"", b"hel", b"", b"lo", b""]),
            0x248B_FA47
        );
    }

    proptest! {
        #[test]
        fn murmur3_split_invariance(
            seed in any::<u32>(),
            data in prop::collection::vec(any::<u8>(), 0..64),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut parts: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for c in cuts {
                parts.push(&data[start..c]);
                start = c;
            }
            parts.push(&data[start..]);
            prop_assert_eq!(murmur3_x86_32(seed, &parts), murmur3_x86_32(seed, &[&data]));
        }
    }

    /// Pinned forever: changing any of these moves subjects between transports.
    #[test]
    fn pinned_buckets() {
        for (route, key, expected) in PINNED {
            assert_eq!(bucket(route, key), *expected, "{route}:{key}");
        }
    }

    const PINNED: &[(&str, &str, u32)] = &[
        // SPEC section 5.
        ("chat", "alice", 2265),
        ("agent", "user-42", 252),
        // Computed once by this implementation (and checked against an independent one).
        ("chat", "bob", 1239),
        ("chat", "user-1", 1574),
        ("chat", "user-42", 8251),
        ("tools", "alice", 5927),
        ("agent", "alice", 6976),
        ("chat", "a:b:c", 6977),
        ("chat", "ünïcødé", 8008),
        ("tools", "tenant:acme", 6252),
        ("tools", "0", 1478),
        ("agent", "3f1c2a9e-6b1d-4d7e-9a55-0c2f4b8e7d21", 6500),
        ("agent", "user-1234567", 3016),
        // The function is defined for an empty key, though evaluation never buckets one.
        ("chat", "", 1888),
    ];

    fn subject(user: Option<&str>, session: Option<&str>, tenant: Option<&str>) -> Subject {
        Subject {
            user: user.map(Into::into),
            session: session.map(Into::into),
            tenant: tenant.map(Into::into),
        }
    }

    fn r(s: &str) -> SubjectRef {
        s.parse().unwrap()
    }

    fn rollout(bp: u16, sticky: Sticky) -> RouteFlag {
        RouteFlag {
            percent: Percent::from_basis_points(bp).unwrap(),
            sticky,
            ..RouteFlag::new(Mode::Rollout)
        }
    }

    #[test]
    fn evaluation_order_and_reasons() {
        let alice = subject(Some("alice"), Some("s1"), Some("acme"));
        let bob = subject(Some("bob"), None, Some("acme"));
        let nobody = subject(None, None, None);
        let http = Target::Http;
        let sio = Target::Socketio;

        let mut flag = rollout(2266, Sticky::User);
        let e = evaluate(&flag, "chat", &alice);
        assert_eq!(
            e,
            Evaluation {
                transport: http,
                reason: Reason::Percent,
                bucket: Some(2265)
            }
        );
        flag.percent = Percent::from_basis_points(2265).unwrap();
        let e = evaluate(&flag, "chat", &alice);
        assert_eq!(
            e,
            Evaluation {
                transport: sio,
                reason: Reason::Percent,
                bucket: Some(2265)
            }
        );
        assert_eq!(
            evaluate(&flag, "chat", &nobody),
            Evaluation {
                transport: sio,
                reason: Reason::NoStickyKey,
                bucket: None
            }
        );
        assert_eq!(
            evaluate(&flag, "chat", &subject(Some(""), None, None)).reason,
            Reason::NoStickyKey
        );
        flag.sticky = Sticky::Session;
        assert_eq!(evaluate(&flag, "chat", &bob).reason, Reason::NoStickyKey);
        assert_eq!(
            evaluate(&flag, "chat", &alice).bucket,
            Some(bucket("chat", "s1"))
        );
        flag.sticky = Sticky::Tenant;
        assert_eq!(
            evaluate(&flag, "chat", &bob).bucket,
            Some(bucket("chat", "acme"))
        );

        // allow, then deny on top: deny wins, whatever the key kind.
        flag.allow = vec![r("user:alice")];
        assert_eq!(
            evaluate(&flag, "chat", &alice),
            Evaluation::by(http, Reason::Allow)
        );
        assert_eq!(evaluate(&flag, "chat", &bob).reason, Reason::Percent);
        flag.deny = vec![r("session:s1")];
        assert_eq!(
            evaluate(&flag, "chat", &alice),
            Evaluation::by(sio, Reason::Deny)
        );
        flag.deny = vec![r("tenant:acme")];
        assert_eq!(
            evaluate(&flag, "chat", &alice),
            Evaluation::by(sio, Reason::Deny)
        );
        assert_eq!(
            evaluate(&flag, "chat", &bob),
            Evaluation::by(sio, Reason::Deny)
        );

        for (mode, t) in [(Mode::Legacy, sio), (Mode::Dual, sio), (Mode::New, http)] {
            let flag = RouteFlag {
                percent: Percent::FULL,
                ..RouteFlag::new(mode)
            };
            assert_eq!(
                evaluate(&flag, "chat", &alice),
                Evaluation::by(t, Reason::Mode)
            );
            assert_eq!(
                evaluate(&flag, "chat", &nobody),
                Evaluation::by(t, Reason::Mode)
            );
        }
        assert_eq!(
            evaluate(&rollout(10_000, Sticky::User), "chat", &alice).transport,
            http
        );
        assert_eq!(
            evaluate(&rollout(0, Sticky::User), "chat", &alice).transport,
            sio
        );
    }

    #[test]
    fn evaluation_serialises_to_the_api_shape() {
        let e = Evaluation {
            transport: Target::Http,
            reason: Reason::Percent,
            bucket: Some(1734),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"transport":"http","reason":"percent","bucket":1734}"#
        );
        let e = Evaluation::by(Target::Socketio, Reason::NoStickyKey);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"transport":"socketio","reason":"no_sticky_key","bucket":null}"#
        );
        for reason in [
            Reason::Deny,
            Reason::Allow,
            Reason::Mode,
            Reason::Percent,
            Reason::NoStickyKey,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        for t in [Target::Http, Target::Socketio] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Who {
        /// No list entry; a rollout at 0 %: evaluated to Socket.IO by percent.
        Plain,
        /// No list entry; a rollout at 100 %: evaluated to HTTP by percent.
        PlainIn,
        /// `allow`ed, on a rollout at 0 %.
        Allowed,
        /// `deny`ed, on a rollout at 100 %.
        Denied,
    }

    /// Every mode × subject × strict, against [socketio, ndjson, sse]:
    /// `A` allowed, `M` allowed but misrouted, `R` refused.
    #[test]
    fn enforcement_table() {
        use Mode::*;
        use Who::*;
        #[rustfmt::skip]
        let table: &[(Mode, Who, bool, &str)] = &[
            (Legacy,  Plain,   false, "ARR"), (Legacy,  Plain,   true, "ARR"),
            (Legacy,  PlainIn, false, "ARR"), (Legacy,  PlainIn, true, "ARR"),
            (Legacy,  Allowed, false, "AAA"), (Legacy,  Allowed, true, "AAA"),
            (Legacy,  Denied,  false, "ARR"), (Legacy,  Denied,  true, "ARR"),
            (Dual,    Plain,   false, "AMM"), (Dual,    Plain,   true, "ARR"),
            (Dual,    PlainIn, false, "AMM"), (Dual,    PlainIn, true, "ARR"),
            (Dual,    Allowed, false, "MAA"), (Dual,    Allowed, true, "RAA"),
            (Dual,    Denied,  false, "AMM"), (Dual,    Denied,  true, "ARR"),
            (Rollout, Plain,   false, "AMM"), (Rollout, Plain,   true, "ARR"),
            (Rollout, PlainIn, false, "MAA"), (Rollout, PlainIn, true, "RAA"),
            (Rollout, Allowed, false, "MAA"), (Rollout, Allowed, true, "RAA"),
            (Rollout, Denied,  false, "AMM"), (Rollout, Denied,  true, "ARR"),
            (New,     Plain,   false, "RAA"), (New,     Plain,   true, "RAA"),
            (New,     PlainIn, false, "RAA"), (New,     PlainIn, true, "RAA"),
            (New,     Allowed, false, "RAA"), (New,     Allowed, true, "RAA"),
            (New,     Denied,  false, "AAA"), (New,     Denied,  true, "AAA"),
        ];
        assert_eq!(table.len(), 4 * 4 * 2);
        let s = subject(Some("u1"), Some("s1"), Some("t1"));
        for &(mode, who, strict, expected) in table {
            let mut flag = RouteFlag {
                strict,
                ..RouteFlag::new(mode)
            };
            flag.percent = match who {
                PlainIn | Denied => Percent::FULL,
                Plain | Allowed => Percent::ZERO,
            };
            match who {
                Allowed => flag.allow = vec![r("session:s1")],
                Denied => flag.deny = vec![r("tenant:t1")],
                Plain | PlainIn => {}
            }
            let e = evaluate(&flag, "chat", &s);
            let used = [Transport::Socketio, Transport::Ndjson, Transport::Sse];
            let got: String = used
                .iter()
                .map(|&t| {
                    let decided = Enforcement::decide(e, mode, strict, t);
                    assert_eq!(decided, flag.enforce("chat", &s, t));
                    let m = misrouted(e, mode, t);
                    match decided {
                        Enforcement::Allowed { misrouted: true } => {
                            assert!(m);
                            'M'
                        }
                        Enforcement::Allowed { misrouted: false } => {
                            assert!(!m);
                            'A'
                        }
                        Enforcement::Refused => {
                            // A strict refusal is a misrouted request; a mode refusal is not.
                            assert_eq!(m, strict && matches!(mode, Dual | Rollout));
                            'R'
                        }
                    }
                })
                .collect();
            assert_eq!(
                got, expected,
                "{mode:?} {who:?} strict={strict} evaluated {e:?}"
            );
        }
    }

    proptest! {
        /// Raising `percent` only ever moves subjects from Socket.IO to HTTP.
        #[test]
        fn raising_percent_is_monotonic(
            route in "[a-z_-]{1,12}",
            key in "\\PC{0,24}",
            a in 0u16..=10_000,
            b in 0u16..=10_000,
        ) {
            let (p1, p2) = (a.min(b), a.max(b));
            let s = subject(Some(&key), None, None);
            let e1 = evaluate(&rollout(p1, Sticky::User), &route, &s);
            let e2 = evaluate(&rollout(p2, Sticky::User), &route, &s);
            if e1.transport == Target::Http {
                prop_assert_eq!(e2.transport, Target::Http);
            }
            prop_assert_eq!(e1.bucket, e2.bucket);
            if !key.is_empty() {
                prop_assert!(e1.bucket.is_some_and(|b| b < BUCKETS));
            }
        }
    }

    /// Over 100 000 subjects the HTTP share is within 0.5 points of `percent`.
    #[test]
    fn http_share_tracks_percent() {
        const N: u32 = 100_000;
        for bp in [100u16, 1000, 2537, 5000, 9900] {
            let flag = rollout(bp, Sticky::User);
            let mut http = 0u32;
            let mut s = subject(None, None, None);
            for i in 0..N {
                s.user = Some(format!("user-{i}"));
                if evaluate(&flag, "chat", &s).transport == Target::Http {
                    http += 1;
                }
            }
            // Shares in basis points: |http/N − bp/10 000| ≤ 50 bp, in integers.
            let share_bp = u64::from(http) * 10_000 / u64::from(N);
            let diff = share_bp.abs_diff(u64::from(bp));
            assert!(diff <= 50, "percent {bp} bp: http share {share_bp} bp");
        }
    }
}
