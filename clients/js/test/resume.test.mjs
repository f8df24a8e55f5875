// Resume: connections cut at random points by a TCP proxy the test owns; every event
// reaches the app exactly once, in order. And the typed errors when resume is impossible.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { stream, isChunk, isCompletion, ResumeError } from "../dist/index.js";
import { startBridge, startCuttingProxy, assertWellFormed, readNdjson, waitFor, droppingFetch } from "./helpers.mjs";

let bridge;
let small;

before(async () => {
  [bridge, small] = await Promise.all([
    startBridge(),
    // A bridge whose logs are small and whose finished streams go quickly: resume gaps.
    startBridge({
      env: {
        SWITCHYARD_REPLAY__MAX_BYTES: "65536",
        SWITCHYARD_LIMITS__MAX_LAG_BYTES: "65536",
        SWITCHYARD_REPLAY__RETENTION_SECS: "1",
      },
    }),
  ]);
});
after(async () => {
  await Promise.all([bridge?.stop(), small?.stop()]);
});

const VOCAB = ["héllo", "wörld", "世界", "🎉", "naïve", "café", "☕", "ĳssel", "日本語", "Ωmega", "plain", "ascii"];

function job(i) {
  const format = i % 2 === 0 ? "ndjson" : "sse";
  if (i % 3 === 0) {
    return { format, body: { options: { chunks: 150, chunk_bytes: 8, interval_ms: i % 2 } }, text: null, chunks: 150 };
  }
  const words = Array.from({ length: 120 + (i % 7) * 10 }, (_, k) => VOCAB[(i + k * 5) % VOCAB.length] + k);
  const text = words.join(" ");
  return { format, body: { messages: [{ role: "user", content: text }] }, text, chunks: words.length };
}

test("hundreds of random cuts: zero lost or duplicated events", { timeout: 90_000 }, async () => {
  // 8% of the connections are cut within their first 300 bytes (in the response head,
  // or before it: the POST's answer is lost), the rest after 300 to 5000 bytes (a
  // stream is 7 to 12 KB, its completion line alone about 1.3 KB).
  const proxy = await startCuttingProxy(bridge.port, () =>
    Math.random() < 0.08 ? Math.floor(Math.random() * 300) : 300 + Math.floor(Math.random() * 4700),
  );
  const STREAMS = 72;
  const CONCURRENCY = 8;
  let reconnects = 0;
  let beforeFirstEvent = 0;
  let delivered = 0;
  let next = 0;
  const results = [];
  async function worker() {
    while (next < STREAMS) {
      const i = next++;
      const j = job(i);
      const events = [];
      const s = stream("chat", j.body, {
        baseUrl: proxy.url,
        format: j.format,
        retry: { baseDelayMs: 2, maxDelayMs: 40, maxAttempts: 40 },
        onReconnect: ({ after }) => {
          reconnects++;
          if (after === -1) beforeFirstEvent++;
        },
        onEvent: () => delivered++,
      });
      for await (const e of s) events.push(e);
      results.push({ i, j, events });
    }
  }
  try {
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  } finally {
    await proxy.close();
  }
  let lost = 0;
  let duplicated = 0;
  for (const { i, j, events } of results) {
    const seqs = events.map((e) => e.seq);
    const unique = new Set(seqs);
    duplicated += seqs.length - unique.size;
    const max = Math.max(...seqs);
    lost += max + 1 - unique.size;
    assertWellFormed(assert, events);
    const chunks = events.filter(isChunk);
    assert.equal(chunks.length, j.chunks, `stream ${i}: chunk count`);
    const text = chunks.map((c) => c.data.text).join("");
    if (j.text !== null) assert.equal(text, j.text, `stream ${i}: text`);
    else assert.equal(text.length, 150 * 8);
    assert.equal(events.find(isCompletion).data.output, text, `stream ${i}: completion.output`);
    assert.equal(events.at(-1).data.reason, "completed");
  }
  console.log(
    `resume: ${results.length} streams, ${proxy.stats.connections} connections, ${proxy.stats.cuts} cuts, ` +
      `${reconnects} reconnects (${beforeFirstEvent} before the first event), ${delivered} events delivered, ` +
      `${lost} lost, ${duplicated} duplicated`,
  );
  assert.equal(results.length, STREAMS);
  assert.equal(lost, 0);
  assert.equal(duplicated, 0);
  assert.ok(proxy.stats.cuts >= 200, `only ${proxy.stats.cuts} cuts`);
});

test("410 resume_gap: the events missed were evicted meanwhile", { timeout: 30_000 }, async () => {
  const id = `gap-${Date.now()}`;
  let release;
  const gate = new Promise((r) => (release = r));
  const s = stream("chat", { request_id: id, options: { chunks: 3000, chunk_bytes: 64 } }, {
    baseUrl: small.url,
    fetch: droppingFetch(600, gate),
    retry: { baseDelayMs: 1, maxDelayMs: 5 },
  });
  const got = [];
  const reading = (async () => {
    for await (const e of s) got.push(e);
  })();
  reading.catch(() => {});
  await waitFor(() => got.length > 0, { what: "the stream to start" });
  // The stream runs on (its log, 64 KiB, keeps only its tail once written out): wait
  // for its end, which the tail still holds.
  const tail = await waitFor(async () => {
    const r = await readNdjson(`${small.url}/api/streams/${id}?after=2999`);
    return r.at(-1)?.event === "end" ? r : null;
  }, { what: "the stream's end" });
  assert.equal(tail.at(-1).data.reason, "completed");
  const head = await fetch(`${small.url}/api/streams/${id}?after=-1`);
  await head.body?.cancel();
  assert.equal(head.status, 410, "its first events are gone");
  release();
  await assert.rejects(reading, (e) => {
    assert.ok(e instanceof ResumeError, String(e));
    assert.equal(e.status, 410);
    assert.equal(e.error_type, "resume_gap");
    assert.equal(e.requestId, id);
    return true;
  });
  assert.ok(got.length > 0 && got.length < 100, `${got.length} events before the drop`);
});

test("404 unknown_stream: the stream expired before the resume", { timeout: 30_000 }, async () => {
  const id = `gone-${Date.now()}`;
  let release;
  const gate = new Promise((r) => (release = r));
  const s = stream("chat", { request_id: id, options: { chunks: 50, chunk_bytes: 16 } }, {
    baseUrl: small.url,
    fetch: droppingFetch(400, gate),
    retry: { baseDelayMs: 1, maxDelayMs: 5 },
  });
  let got = 0;
  const s2 = s;
  const reading = (async () => {
    for await (const _ of s2) got++;
  })();
  reading.catch(() => {});
  await waitFor(() => got > 0, { what: "the stream to start" });
  // Wait (on the bridge's own answer, no fixed sleep) until the stream is forgotten.
  await waitFor(
    async () => {
      const r = await fetch(`${small.url}/api/streams/${id}`);
      await r.body?.cancel();
      return r.status === 404;
    },
    { timeoutMs: 20_000, what: "the stream to expire", stepMs: 100 },
  );
  release();
  await assert.rejects(reading, (e) => {
    assert.ok(e instanceof ResumeError, String(e));
    assert.equal(e.status, 404);
    assert.equal(e.error_type, "unknown_stream");
    return true;
  });
});

test("without resume, a drop is a typed connection_lost", async () => {
  let release;
  const gate = new Promise((r) => (release = r));
  release();
  await assert.rejects(
    stream("chat", { options: { chunks: 200 } }, {
      baseUrl: bridge.url,
      fetch: droppingFetch(500, gate),
      retry: { resume: false },
    }).collect(),
    (e) => e instanceof ResumeError && e.error_type === "connection_lost",
  );
});

test("a POST that never reached the bridge is sent again, once", async () => {
  let posts = 0;
  const flaky = async (url, init = {}) => {
    if (init.method === "POST" && ++posts === 1) throw new TypeError("fetch failed");
    return fetch(url, init);
  };
  const reconnects = [];
  const s = stream("chat", { messages: [{ role: "user", content: "second time lucky" }] }, {
    baseUrl: bridge.url,
    fetch: flaky,
    retry: { baseDelayMs: 1 },
    onReconnect: (r) => reconnects.push(r),
  });
  const events = await s.collect();
  assertWellFormed(assert, events);
  assert.equal(posts, 2);
  assert.equal(reconnects.length, 1, "one resume attempt found nothing (404), then the POST again");
  assert.equal(events[0].data.metadata.request_id, s.requestId);
});

test("a POST sent twice underneath (a transparent retry) is resumed, not refused", async () => {
  let posts = 0;
  const doubling = async (url, init = {}) => {
    if (init.method === "POST" && ++posts === 1) {
      // The first copy starts the stream; its answer is lost and the request goes again.
      const lost = await fetch(url, init);
      await lost.body?.cancel();
      posts++;
    }
    return fetch(url, init);
  };
  const events = await stream("chat", { messages: [{ role: "user", content: "sent twice" }] }, {
    baseUrl: bridge.url,
    fetch: doubling,
    retry: { baseDelayMs: 1 },
  }).collect();
  assert.equal(posts, 2);
  assertWellFormed(assert, events);
  assert.equal(events.filter(isChunk).map((c) => c.data.text).join(""), "sent twice");
  // With a request id of the app's own, a duplicate is the app's to resolve.
  posts = 0;
  await assert.rejects(
    stream("chat", { request_id: `dup-${Date.now()}`, options: { chunks: 100, interval_ms: 10 } }, {
      baseUrl: bridge.url,
      fetch: doubling,
    }).next(),
    (e) => e.status === 409 && e.error_type === "duplicate_request",
  );
});
