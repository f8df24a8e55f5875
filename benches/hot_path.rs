//! The per-event hot path: hub append + cursor read + NDJSON frame, with and without the
//! per-event metrics count (`cargo bench --bench hot_path`). The ratio of the two is the
//! cost of counting.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use switchyard::engine::Sink;
use switchyard::event::EventKind;
use switchyard::hub::{Batch, Hub, HubConfig};
use switchyard::metrics::Metrics;
use switchyard::request::{RequestId, Transport};
use switchyard::routes::Routes;
use switchyard::transport::encode::{Wire, http_frame};

const ROUTES: &str =
    "[[route]]\nname = \"chat\"\nhttp = \"/chat\"\nengine = { kind = \"script\" }\n";

fn hot_path(c: &mut Criterion) {
    let Ok(routes) = Routes::parse(ROUTES, "bench") else {
        return;
    };
    let Some(route) = routes.get("chat").cloned() else {
        return;
    };
    let metrics = Metrics::new(&routes);
    let hub = Hub::new(HubConfig {
        max_streams: 10,
        max_streams_per_subject: 0,
        replay_max_bytes: 1 << 20,
        retention: Duration::from_secs(60),
    });
    let counters = metrics.subscriber("chat", Transport::Ndjson);
    let mut group = c.benchmark_group("per_event");
    for counting in [false, true] {
        let id = RequestId::parse(if counting { "counted" } else { "plain" }).ok();
        let Some(id) = id else { return };
        let Ok((stream, mut cursor)) = hub.create(
            id,
            route.clone(),
            None,
            None,
            Transport::Ndjson,
            metrics.stream(&route.name, Transport::Ndjson),
        ) else {
            return;
        };
        stream.start();
        let name = if counting {
            "append_read_encode_count"
        } else {
            "append_read_encode"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                stream.emit(EventKind::Chunk, json!({"text": "sixteen bytes ok"}));
                if let Some(Batch::Events(entries)) = cursor.try_batch(1) {
                    for e in &entries {
                        black_box(http_frame(e, &stream, Wire::Ndjson));
                        if counting {
                            counters.delivered(e.event.event);
                        }
                    }
                }
            })
        });
    }
    group.finish();
    c.bench_function("count_one_event", |b| {
        b.iter(|| counters.delivered(black_box(EventKind::Chunk)))
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
