// stream() against the real bridge: every event type, both wire formats, heartbeats, a
// [route.http] dialect read through a mapping, cancel on abort, pre-stream errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import {
  stream,
  isChunk,
  isStatusUpdate,
  isToolEvent,
  isCompletion,
  isData,
  isError,
  isBroker,
  isHeartbeat,
  isEnd,
  StreamRefusedError,
  SwitchyardError,
} from "../dist/index.js";
import { startBridge, readNdjson, assertWellFormed, waitFor } from "./helpers.mjs";

let bridge;
let upstream;

const MESSAGE = "héllo wörld 世界 🎉 naïve café ☕ end";

before(async () => {
  // An upstream NDJSON service whose streams carry the two event types the script
  // engine never makes: `data` and `broker`.
  upstream = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/x-ndjson" });
      const lines = [
        { event: "data", data: { rows: [1, 2, 3], label: "données" } },
        { event: "broker", data: { broker_id: "b-1", value: { price: 42 }, source: "test" } },
        { event: "chunk", data: { text: "from upstream" } },
        { event: "completion", data: { status: "complete" } },
        { event: "end", data: { reason: "completed" } },
      ];
      res.end(lines.map((l) => JSON.stringify(l) + "\n").join(""));
    });
  });
  await new Promise((r) => upstream.listen(0, "127.0.0.1", r));
  const upPort = upstream.address().port;
  bridge = await startBridge({
    env: {
      SWITCHYARD_HEARTBEAT_SECS: "1",
      SWITCHYARD_LIMITS__MAX_BODY_BYTES: "65536",
    },
    extraRoutes: `
[[route]]
name = "upstream"
http = "/api/test/upstream"
engine = { kind = "ndjson", url = "http://127.0.0.1:${upPort}/up", timeout_secs = 10 }

[[route]]
name = "stream"
engine = { kind = "script" }

[route.http]
path = "/api/v1/chat/stream"
request = { messages = [{ role = "user", content = "$.message" }], session_id = "$.session_id", user_id = "$.user_id", metadata = "$.metadata" }
default_format = "sse"
sse_framing = "data_only"

[route.http.emit]
chunk = { payload = { type = "content_chunk", content = "$.data.text" } }
completion = { payload = { type = "complete", message_id = "$.request_id" } }
error = { payload = { type = "error", error = "$.data.message" } }
`,
    flags: `version = 1
[route.chat]
mode = "dual"
[route.agent]
mode = "dual"
[route.tools]
mode = "dual"
[route.upstream]
mode = "dual"
[route.stream]
mode = "dual"
`,
  });
});

after(async () => {
  await bridge?.stop();
  await new Promise((r) => (upstream ? upstream.close(r) : r()));
});

const ask = (content, extra = {}) => ({ messages: [{ role: "user", content }], ...extra });

for (const format of ["ndjson", "sse"]) {
  test(`${format}: chunks, tool events, completion, in order, with multi-byte text`, async () => {
    const seen = [];
    const s = stream("chat", ask(MESSAGE, { options: { tool_calls: 2 } }), {
      baseUrl: bridge.url,
      format,
      onEvent: (e) => seen.push(e),
    });
    const events = [];
    for await (const e of s) events.push(e);
    assertWellFormed(assert, events);
    assert.deepEqual(seen, events, "onEvent sees what the iterator yields");
    assert.ok(isStatusUpdate(events[0]));
    assert.equal(events[0].data.metadata.route, "chat");
    assert.equal(events[0].data.metadata.request_id, s.requestId);
    const tools = events.filter(isToolEvent);
    assert.deepEqual(
      tools.map((t) => t.data.event),
      ["started", "completed", "started", "completed"],
    );
    const text = events.filter(isChunk).map((c) => c.data.text).join("");
    assert.equal(text, MESSAGE);
    const completion = events.find(isCompletion);
    assert.equal(completion.data.status, "complete");
    assert.equal(completion.data.output, MESSAGE);
    assert.equal(events.filter(isEnd)[0].data.reason, "completed");
  });

  test(`${format}: an engine error is an error event, then end {reason: error}`, async () => {
    const events = await stream("chat", ask("a b c d e f", { options: { fail_after: 2 } }), {
      baseUrl: bridge.url,
      format,
    }).collect();
    assertWellFormed(assert, events);
    assert.equal(events.filter(isChunk).length, 2);
    const err = events.at(-2);
    assert.ok(isError(err));
    assert.equal(typeof err.data.error_type, "string");
    assert.equal(typeof err.data.message, "string");
    assert.equal(events.at(-1).data.reason, "error");
  });

  test(`${format}: heartbeats are yielded when asked for, and carry no seq`, async () => {
    const events = await stream("chat", { options: { chunks: 3, interval_ms: 1300 } }, {
      baseUrl: bridge.url,
      format,
      heartbeats: true,
    }).collect();
    const beats = events.filter(isHeartbeat);
    assert.ok(beats.length >= 1, "at least one heartbeat in 3.9 s with heartbeat_secs = 1");
    for (const b of beats) {
      assert.equal(b.seq, undefined);
      assert.equal(typeof b.data.timestamp, "number");
    }
    assertWellFormed(assert, events.filter((e) => !isHeartbeat(e)));
    assert.equal(events.filter(isChunk).length, 3);
  });

  test(`${format}: data and broker events from an upstream engine`, async () => {
    const events = await stream("/api/test/upstream", { q: 1 }, { baseUrl: bridge.url, format }).collect();
    assertWellFormed(assert, events);
    const data = events.find(isData);
    assert.deepEqual(data.data, { rows: [1, 2, 3], label: "données" });
    const broker = events.find(isBroker);
    assert.deepEqual(broker.data, { broker_id: "b-1", value: { price: 42 }, source: "test" });
    assert.equal(events.find(isCompletion).data.output, "from upstream");
  });
}

test("without heartbeats: true, heartbeats are not yielded", async () => {
  const events = await stream("chat", { options: { chunks: 2, interval_ms: 1300 } }, {
    baseUrl: bridge.url,
  }).collect();
  assert.equal(events.filter(isHeartbeat).length, 0);
  assertWellFormed(assert, events);
});

test("a [route.http] dialect (data-only SSE) read through a mapping function", async () => {
  const map = ({ data }) => {
    switch (data.type) {
      case "content_chunk":
        return { event: "chunk", data: { text: data.content } };
      case "complete":
        return [
          { event: "completion", data: { status: "complete" } },
          { event: "end", data: { reason: "completed" } },
        ];
      case "error":
        return [
          { event: "error", data: { error_type: "error", message: data.error } },
          { event: "end", data: { reason: "error" } },
        ];
      default:
        return null;
    }
  };
  const s = stream("/api/v1/chat/stream", { message: MESSAGE, session_id: "dialect-1" }, {
    baseUrl: bridge.url,
    format: "sse",
    map,
  });
  const events = await s.collect();
  assert.equal(events.filter(isChunk).map((c) => c.data.text).join(""), MESSAGE);
  assert.deepEqual(
    events.slice(-2).map((e) => e.event),
    ["completion", "end"],
  );
  events.forEach((e, i) => assert.equal(e.seq, i));
  assert.ok(s.requestId, "the request id comes from x-request-id");
});

test("abort cancels on the server: another subscriber sees end {reason: cancelled}", async () => {
  const id = `abort-${Date.now()}`;
  const ac = new AbortController();
  const s = stream("chat", { request_id: id, options: { chunks: 500, interval_ms: 20 } }, {
    baseUrl: bridge.url,
    signal: ac.signal,
  });
  const first = await s.next();
  assert.equal(first.value.event, "status_update");
  assert.equal(s.requestId, id);
  // A second subscriber of the same stream, following it live.
  const follower = readNdjson(`${bridge.url}/api/streams/${id}?after=-1`);
  let chunks = 0;
  await assert.rejects(
    (async () => {
      for await (const e of s) {
        if (isChunk(e) && ++chunks === 3) ac.abort();
      }
    })(),
    (err) => err.name === "AbortError",
  );
  const seen = await follower;
  assert.equal(seen.at(-1).event, "end");
  assert.equal(seen.at(-1).data.reason, "cancelled");
  assert.equal(seen.at(-2).data.status, "cancelled");
  assert.ok(seen.filter((e) => e.event === "chunk").length < 500);
  // Resume shows it too.
  const replay = await readNdjson(`${bridge.url}/api/streams/${id}`);
  assert.equal(replay.at(-1).data.reason, "cancelled");
});

test("cancel() before the first event still cancels on the server", async () => {
  const id = `cancel-${Date.now()}`;
  const s = stream("chat", { request_id: id, options: { chunks: 500, interval_ms: 20 } }, {
    baseUrl: bridge.url,
  });
  await s.next();
  await s.cancel();
  await assert.rejects(s.next(), (e) => e.name === "AbortError");
  const replay = await waitFor(async () => {
    const r = await readNdjson(`${bridge.url}/api/streams/${id}`);
    return r.at(-1)?.event === "end" ? r : null;
  }, { what: "the cancelled end" });
  assert.equal(replay.at(-1).data.reason, "cancelled");
});

test("400 invalid_request: a bad option, a body that is not an object", async () => {
  for (const body of [{ options: { chunks: "many" } }, { options: { chunks: 10_000_000 } }, [1, 2]]) {
    await assert.rejects(stream("chat", body, { baseUrl: bridge.url }).collect(), (e) => {
      assert.ok(e instanceof StreamRefusedError);
      assert.ok(e instanceof SwitchyardError);
      assert.equal(e.status, 400);
      assert.equal(e.error_type, "invalid_request");
      assert.equal(e.retryable, false);
      return true;
    });
  }
});

test("413 payload_too_large: a body over limits.max_body_bytes", async () => {
  await assert.rejects(stream("chat", ask("x".repeat(70_000)), { baseUrl: bridge.url }).next(), (e) => {
    assert.ok(e instanceof StreamRefusedError);
    assert.equal(e.status, 413);
    assert.equal(e.error_type, "payload_too_large");
    return true;
  });
});

test("409 route_not_migrated: the route's flag is legacy", async () => {
  await bridge.setFlag("chat", { mode: "legacy" });
  try {
    await assert.rejects(stream("chat", ask("hi"), { baseUrl: bridge.url }).next(), (e) => {
      assert.equal(e.status, 409);
      assert.equal(e.error_type, "route_not_migrated");
      return true;
    });
  } finally {
    await bridge.setFlag("chat", { mode: "dual" });
  }
  const events = await stream("chat", ask("hi again"), { baseUrl: bridge.url }).collect();
  assertWellFormed(assert, events);
});

test("an unknown route name is a TypeError naming it", () => {
  assert.throws(() => stream("nope", {}, { baseUrl: bridge.url }), /unknown route "nope"/);
});
