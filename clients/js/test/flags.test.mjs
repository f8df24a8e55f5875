// transportFor() and migratingClient() against the real bridge: the transport follows
// flag changes (rollout, allow, deny), and the legacy path through the real
// socket.io-client 4.x presents the same neutral events as HTTP.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import {
  transportFor,
  evaluateFlag,
  clearFlagCache,
  migratingClient,
  neutralLegacyRoute,
  chatLegacyRoute,
  stream,
  StreamRefusedError,
  isChunk,
} from "../dist/index.js";
import { startBridge, readNdjson, waitFor, assertWellFormed } from "./helpers.mjs";

let bridge;
let socket;

before(async () => {
  bridge = await startBridge();
  socket = io(bridge.url, { transports: ["websocket"], reconnection: false });
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
});
after(async () => {
  socket?.close();
  await bridge?.stop();
});

const alice = { user: "alice", session: "s-alice", tenant: "acme" };
const opts = () => ({ baseUrl: bridge.url, cacheMs: 0 });

test("transportFor follows the flag: mode, rollout percent, allow, deny, sticky key", async () => {
  await bridge.setFlag("chat", { mode: "dual" });
  assert.equal(await transportFor("chat", alice, opts()), "socketio");

  // chat:alice is bucket 2265 (SPEC section 5): HTTP from 22.66 %.
  await bridge.setFlag("chat", { mode: "rollout", percent: 22.65, sticky: "user" });
  let ev = await evaluateFlag("chat", alice, opts());
  assert.deepEqual([ev.transport, ev.reason, ev.bucket], ["socketio", "percent", 2265]);
  await bridge.setFlag("chat", { mode: "rollout", percent: 22.66, sticky: "user" });
  ev = await evaluateFlag("chat", alice, opts());
  assert.deepEqual([ev.transport, ev.reason, ev.bucket], ["http", "percent", 2265]);

  await bridge.setFlag("chat", { mode: "rollout", percent: 100, sticky: "session" });
  ev = await evaluateFlag("chat", { user: "alice" }, opts());
  assert.deepEqual([ev.transport, ev.reason], ["socketio", "no_sticky_key"]);

  await bridge.setFlag("chat", { mode: "legacy", allow: ["user:alice"] });
  assert.equal(await transportFor("chat", alice, opts()), "http");
  assert.equal(await transportFor("chat", { user: "bob" }, opts()), "socketio");

  await bridge.setFlag("chat", { mode: "new", deny: ["tenant:acme"] });
  ev = await evaluateFlag("chat", alice, opts());
  assert.deepEqual([ev.transport, ev.reason], ["socketio", "deny"]);
  assert.equal(await transportFor("chat", { user: "bob", tenant: "other" }, opts()), "http");

  await assert.rejects(transportFor("nope", alice, opts()), (e) => e.status === 404 && e.error_type === "unknown_route");
});

test("evaluations are cached for cacheMs", async () => {
  clearFlagCache();
  await bridge.setFlag("chat", { mode: "legacy" });
  const cached = { baseUrl: bridge.url, cacheMs: 60_000 };
  assert.equal(await transportFor("chat", alice, cached), "socketio");
  await bridge.setFlag("chat", { mode: "new" });
  assert.equal(await transportFor("chat", alice, cached), "socketio", "still the cached answer");
  clearFlagCache();
  assert.equal(await transportFor("chat", alice, cached), "http");
  // A short cache picks the change up by itself.
  await bridge.setFlag("chat", { mode: "legacy" });
  const short = { baseUrl: bridge.url, cacheMs: 50 };
  await transportFor("chat", alice, short);
  await bridge.setFlag("chat", { mode: "new" });
  await waitFor(async () => (await transportFor("chat", alice, short)) === "http", { what: "the cache to expire" });
});

/** The events with what legitimately differs between two streams (the id) left out. */
const shape = (events) =>
  events.map((e) =>
    e.event === "status_update" ? { ...e, data: { ...e.data, metadata: { route: e.data.metadata.route } } } : e,
  );

test("migratingClient: the same neutral events over Socket.IO and over HTTP, as the flag says", async () => {
  const client = migratingClient({ baseUrl: bridge.url, socket, subject: alice, flagsCacheMs: 0 });
  const body = (n) => ({ messages: [{ role: "user", content: "héllo wörld 世界 🎉 ok" }], session_id: `mig-${n}` });

  // legacy: HTTP would be refused (409), so success means Socket.IO.
  await bridge.setFlag("chat", { mode: "legacy" });
  const viaSocket = client.stream("chat", body(1));
  const a = await viaSocket.collect();
  assert.equal(viaSocket.transport, "socketio");

  // new: Socket.IO would be refused (route_migrated), so success means HTTP.
  await bridge.setFlag("chat", { mode: "new" });
  const viaHttp = client.stream("chat", body(2));
  const b = await viaHttp.collect();
  assert.equal(viaHttp.transport, "http");

  assertWellFormed(assert, a);
  assertWellFormed(assert, b);
  assert.deepEqual(shape(a), shape(b));
  assert.equal(a.filter(isChunk).map((c) => c.data.text).join(""), "héllo wörld 世界 🎉 ok");

  // rollout with allow and deny: each subject gets its own transport.
  await bridge.setFlag("chat", { mode: "rollout", percent: 0, allow: ["user:alice"], deny: ["user:carol"] });
  const forAlice = client.stream("chat", body(3));
  await forAlice.collect();
  assert.equal(forAlice.transport, "http");
  const carol = migratingClient({ baseUrl: bridge.url, socket, subject: { user: "carol" }, flagsCacheMs: 0 });
  const forCarol = carol.stream("chat", body(4));
  const c = await forCarol.collect();
  assert.equal(forCarol.transport, "socketio");
  assert.deepEqual(shape(c), shape(b));
});

test("legacy path: engine errors, refusals and cancel as on HTTP", async () => {
  await bridge.setFlag("chat", { mode: "legacy" });
  clearFlagCache(); // answers are cached per bridge, route and subject, across clients
  const client = migratingClient({ baseUrl: bridge.url, socket, subject: alice, flagsCacheMs: 60_000 });

  const failed = await client.stream("chat", { messages: [{ role: "user", content: "a b c d" }], session_id: "err-1", options: { fail_after: 2 } }).collect();
  const overHttp = await stream("chat", { messages: [{ role: "user", content: "a b c d" }], options: { fail_after: 2 } }, { baseUrl: bridge.url }).collect().catch((e) => e);
  assert.equal(overHttp.error_type, "route_not_migrated", "HTTP is refused in legacy mode");
  assert.deepEqual(failed.map((e) => e.event), ["status_update", "chunk", "chunk", "error", "end"]);
  assert.equal(failed.at(-1).data.reason, "error");
  assert.equal(typeof failed.at(-2).data.error_type, "string");

  // A 400 arrives as the ack's error.
  await assert.rejects(
    client.stream("chat", { messages: [], session_id: "bad-1", options: { chunks: "many" } }).collect(),
    (e) => e instanceof StreamRefusedError && e.error_type === "invalid_request",
  );

  // Cancel: the stream ends `cancelled` on the server.
  const id = `sio-cancel-${Date.now()}`;
  const ac = new AbortController();
  const s = client.stream("chat", { request_id: id, session_id: "cancel-1", options: { chunks: 500, interval_ms: 20 } }, { signal: ac.signal });
  let chunks = 0;
  await assert.rejects(
    (async () => {
      for await (const e of s) if (isChunk(e) && ++chunks === 2) ac.abort();
    })(),
    (e) => e.name === "AbortError",
  );
  const replay = await waitFor(async () => {
    const r = await readNdjson(`${bridge.url}/api/streams/${id}`);
    return r.at(-1)?.event === "end" ? r : null;
  }, { what: "the cancelled end" });
  assert.equal(replay.at(-1).data.reason, "cancelled");

  // The flag moved on while the client's answer was cached: the bridge refuses the
  // legacy request with route_migrated, typed.
  await bridge.setFlag("chat", { mode: "new" });
  await assert.rejects(
    client.stream("chat", { messages: [{ role: "user", content: "x" }], session_id: "stale-1" }).collect(),
    (e) => e instanceof StreamRefusedError && e.error_type === "route_migrated",
  );
});

test("a route on the neutral Socket.IO vocabulary (tools)", async () => {
  await bridge.setFlag("tools", { mode: "legacy" });
  const client = migratingClient({
    baseUrl: bridge.url,
    socket,
    subject: alice,
    flagsCacheMs: 0,
    routes: { chat: { legacy: chatLegacyRoute }, tools: { legacy: neutralLegacyRoute("tool_execute") } },
  });
  const body = { messages: [{ role: "user", content: "run the tools" }], options: { tool_calls: 2 } };
  const viaSocket = client.stream("tools", body);
  const a = await viaSocket.collect();
  assert.equal(viaSocket.transport, "socketio");
  await bridge.setFlag("tools", { mode: "new" });
  const viaHttp = client.stream("tools", body);
  const b = await viaHttp.collect();
  assert.equal(viaHttp.transport, "http");
  assertWellFormed(assert, a);
  assert.deepEqual(shape(a), shape(b));
  assert.equal(a.filter((e) => e.event === "tool_event").length, 4);
});

test("strict rollout: subject headers keep a development bridge's HTTP requests on the subject's transport", async () => {
  // chat:alice is bucket 2265: HTTP at 22.66 %.
  await bridge.setFlag("chat", { mode: "rollout", percent: 22.66, sticky: "user", strict: true });
  const withHeaders = migratingClient({ baseUrl: bridge.url, socket, subject: alice, flagsCacheMs: 0, subjectHeaders: true });
  const s = withHeaders.stream("chat", { messages: [{ role: "user", content: "strict" }] });
  assertWellFormed(assert, await s.collect());
  assert.equal(s.transport, "http");
  // Without them the bridge sees an anonymous request (no sticky key: Socket.IO's), refused.
  const without = migratingClient({ baseUrl: bridge.url, socket, subject: alice, flagsCacheMs: 0 });
  await assert.rejects(
    without.stream("chat", { messages: [{ role: "user", content: "strict" }] }).collect(),
    (e) => e instanceof StreamRefusedError && e.status === 409 && e.error_type === "route_not_migrated",
  );
  await bridge.setFlag("chat", { mode: "dual" });
});
