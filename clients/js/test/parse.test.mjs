// The wire parsers alone: lines, SSE fields and multi-byte UTF-8 characters split at
// every possible byte, CRLF and lone CR line ends, comments, heartbeats.
import { test } from "node:test";
import assert from "node:assert/strict";
import { NdjsonParser, SseParser, stream } from "../dist/index.js";

const enc = new TextEncoder();

function feed(parser, bytes, cuts) {
  const frames = [];
  let at = 0;
  for (const c of [...cuts, bytes.length]) {
    frames.push(...parser.push(bytes.subarray(at, c)));
    at = c;
  }
  return frames;
}

function* splits(n) {
  for (let i = 0; i <= n; i++) yield [i]; // every single cut
  yield Array.from({ length: n }, (_, i) => i); // one byte at a time
  for (let k = 0; k < 50; k++) {
    const cuts = [];
    let at = 0;
    while ((at += 1 + Math.floor(Math.random() * 7)) < n) cuts.push(at);
    yield cuts;
  }
}

const events = [
  { event: "status_update", seq: 0, data: { status: "started", metadata: { request_id: "r", route: "chat" } } },
  { event: "chunk", seq: 1, data: { text: "héllo " } },
  { event: "chunk", seq: 2, data: { text: "世界 🎉 " } },
  { event: "chunk", seq: 3, data: { text: "naïve\nline" } },
  { event: "completion", seq: 4, data: { status: "complete", output: "héllo 世界 🎉 naïve\nline" } },
  { event: "end", seq: 5, data: { reason: "completed" } },
];

test("NDJSON: whole lines whatever the splits, LF or CRLF", () => {
  for (const eol of ["\n", "\r\n"]) {
    const text = events.map((e) => JSON.stringify(e)).join(eol) + eol + eol;
    const bytes = enc.encode(text);
    for (const cuts of splits(bytes.length)) {
      const p = new NdjsonParser();
      const frames = feed(p, bytes, cuts);
      assert.deepEqual(frames.map((f) => JSON.parse(f.text)), events);
      assert.equal(p.pending, false);
    }
  }
});

test("NDJSON: a partial last line is pending, not a frame", () => {
  const p = new NdjsonParser();
  assert.deepEqual(p.push(enc.encode('{"event":"chunk","seq":0,"data":{"text":"a"}}\n{"event":"ch')).length, 1);
  assert.equal(p.pending, true);
});

test("SSE: named frames, heartbeats and comments, whatever the splits and line ends", () => {
  for (const eol of ["\n", "\r\n", "\r"]) {
    let text = ": hello" + eol;
    for (const e of events) {
      text += `id: ${e.seq}${eol}event: ${e.event}${eol}data: ${JSON.stringify(e.data)}${eol}${eol}`;
      if (e.seq === 2) text += `event: heartbeat${eol}data: {"timestamp":1}${eol}${eol}: heartbeat${eol}`;
    }
    const bytes = enc.encode(text);
    for (const cuts of splits(bytes.length)) {
      const frames = feed(new SseParser(), bytes, cuts);
      const got = frames.map((f) => ({ id: f.id, event: f.event, data: JSON.parse(f.text) }));
      const want = [];
      for (const e of events) {
        want.push({ id: String(e.seq), event: e.event, data: e.data });
        if (e.seq === 2) want.push({ id: undefined, event: "heartbeat", data: { timestamp: 1 } });
      }
      assert.deepEqual(got, want, `eol ${JSON.stringify(eol)} cuts ${cuts}`);
    }
  }
});

test("SSE: multi-line data, a field without a space, data-only frames", () => {
  const p = new SseParser();
  const frames = p.push(enc.encode('data:{"a":\ndata: 1}\n\ndata: {"type":"x"}\n\n'));
  assert.deepEqual(frames, [{ text: '{"a":\n1}' }, { text: '{"type":"x"}' }]);
});

/** A fetch whose answer arrives one byte per read. */
function byteFetch(text, headers = {}) {
  return async () => {
    const bytes = enc.encode(text);
    let i = 0;
    const body = new ReadableStream({
      pull(c) {
        if (i < bytes.length) c.enqueue(bytes.subarray(i, ++i));
        else c.close();
      },
    });
    return new Response(body, { status: 200, headers });
  };
}

test("stream(): events whose bytes arrive one at a time", async () => {
  const ndjson = events.map((e) => JSON.stringify(e) + "\n").join("");
  const got = await stream("chat", {}, { baseUrl: "http://bridge.invalid", fetch: byteFetch(ndjson, { "x-request-id": "r" }) }).collect();
  assert.deepEqual(got, events);
  const sse = events.map((e) => `id: ${e.seq}\nevent: ${e.event}\ndata: ${JSON.stringify(e.data)}\n\n`).join("");
  const got2 = await stream("chat", {}, { baseUrl: "http://bridge.invalid", format: "sse", fetch: byteFetch(sse) }).collect();
  assert.deepEqual(got2, events);
});

test("stream(): a line that is not JSON is a typed protocol_error", async () => {
  await assert.rejects(
    stream("chat", {}, { baseUrl: "http://bridge.invalid", fetch: byteFetch("<html>oops</html>\n") }).collect(),
    (e) => e.error_type === "protocol_error",
  );
});
