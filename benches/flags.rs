//! Cost of one flag evaluation (`cargo bench --bench flags`; `-- --quick` for a short run).
//! Criterion reports the time per iteration, i.e. ns per evaluation.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::flags::{Flags, Mode, Percent, RouteFlag, Sticky, SubjectRef, evaluate};
use switchyard::request::Subject;

fn subject_ref(s: &str) -> SubjectRef {
    match s.parse() {
        Ok(r) => r,
        Err(e) => unreachable!("{e}"),
    }
}

fn rollout() -> RouteFlag {
    RouteFlag {
        mode: Mode::Rollout,
        percent: Percent::from_basis_points(2537).unwrap_or_default(),
        sticky: Sticky::User,
        allow: vec![subject_ref("user:alice"), subject_ref("session:qa-1")],
        deny: vec![subject_ref("tenant:acme"), subject_ref("user:mallory")],
        strict: false,
    }
}

fn subject(user: &str, tenant: &str) -> Subject {
    Subject {
        user: Some(user.into()),
        session: Some("3f1c2a9e-6b1d-4d7e-9a55-0c2f4b8e7d21".into()),
        tenant: Some(tenant.into()),
    }
}

fn bench(c: &mut Criterion) {
    let flag = rollout();
    let user = subject("user-1234567", "globex");
    let denied = subject("user-1234567", "acme");

    c.bench_function("evaluate/rollout_sticky_user", |b| {
        b.iter(|| evaluate(black_box(&flag), black_box("chat"), black_box(&user)))
    });
    c.bench_function("evaluate/deny_hit", |b| {
        b.iter(|| evaluate(black_box(&flag), black_box("chat"), black_box(&denied)))
    });

    // Through the route map, as the request path does it: lookup + evaluate.
    let mut flags = Flags {
        version: 7,
        ..Flags::default()
    };
    for name in ["agent", "chat", "tools"] {
        flags.routes.insert(name.into(), rollout());
    }
    c.bench_function("flags/lookup_and_evaluate", |b| {
        b.iter(|| black_box(&flags).evaluate(black_box("chat"), black_box(&user)))
    });

    // A long deny list that misses: the linear scan's worst case.
    let mut long = rollout();
    long.deny = (0..100)
        .map(|i| subject_ref(&format!("user:blocked-{i}")))
        .collect();
    c.bench_function("evaluate/deny_list_100_miss", |b| {
        b.iter(|| evaluate(black_box(&long), black_box("chat"), black_box(&user)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
