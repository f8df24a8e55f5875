// Pre-stream refusals that need a bridge of their own: 401 with auth on, 429 (stream and
// connection limits, retried by option with the bridge's Retry-After), 503 while draining.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { stream, StreamRefusedError, isChunk } from "../dist/index.js";
import { startBridge, jwt, assertWellFormed, waitFor, droppingFetch } from "./helpers.mjs";

test("401 unauthorized without a token; a valid bearer token streams (and resumes with it)", async () => {
  const secret = "test-secret-0123456789";
  const bridge = await startBridge({ env: { SWITCHYARD_AUTH__JWT_SECRET: secret } });
  try {
    for (const headers of [{}, { authorization: "Bearer not-a-jwt" }]) {
      await assert.rejects(stream("chat", { messages: [] }, { baseUrl: bridge.url, headers }).next(), (e) => {
        assert.ok(e instanceof StreamRefusedError);
        assert.equal(e.status, 401);
        assert.equal(e.error_type, "unauthorized");
        return true;
      });
    }
    const headers = { authorization: `Bearer ${jwt(secret, { sub: "alice", tenant: "acme" })}` };
    let reconnects = 0;
    const events = await stream("chat", { messages: [{ role: "user", content: "signed in" }] }, {
      baseUrl: bridge.url,
      headers,
      fetch: droppingFetch(300),
      retry: { baseDelayMs: 1 },
      onReconnect: () => reconnects++,
    }).collect();
    assert.equal(reconnects, 1, "the resume (with the same token) happened");
    assertWellFormed(assert, events);
    assert.equal(events.filter(isChunk).map((c) => c.data.text).join(""), "signed in");
  } finally {
    await bridge.stop();
  }
});

test("429 over_capacity at limits.max_streams; retried by option until a slot frees", async () => {
  const bridge = await startBridge({ env: { SWITCHYARD_LIMITS__MAX_STREAMS: "1" } });
  try {
    const ac = new AbortController();
    const first = stream("chat", { options: { chunks: 1000, interval_ms: 20 } }, {
      baseUrl: bridge.url,
      signal: ac.signal,
    });
    await first.next();
    await assert.rejects(stream("chat", {}, { baseUrl: bridge.url }).next(), (e) => {
      assert.ok(e instanceof StreamRefusedError);
      assert.equal(e.status, 429);
      assert.equal(e.error_type, "over_capacity");
      assert.equal(e.retryable, true);
      return true;
    });
    // With retries, the second stream waits; freeing the slot (cancelling the first
    // stream on the server) lets it through.
    const retries = [];
    const second = stream("chat", { messages: [{ role: "user", content: "my turn" }] }, {
      baseUrl: bridge.url,
      retry: { overloaded: 200, baseDelayMs: 20, maxDelayMs: 100 },
      onRetry: (info) => {
        retries.push(info);
        if (retries.length === 2) ac.abort();
      },
    });
    const events = await second.collect();
    assertWellFormed(assert, events);
    assert.ok(retries.length >= 2);
    assert.ok(retries.every((r) => r.error.error_type === "over_capacity"));
    await assert.rejects(first.next(), (e) => e.name === "AbortError");
  } finally {
    await bridge.stop();
  }
});

test("429 at limits.max_connections carries Retry-After, which the retry honours", async () => {
  const bridge = await startBridge({ env: { SWITCHYARD_LIMITS__MAX_CONNECTIONS: "2" } });
  const held = [];
  try {
    // Two idle connections fill the limit.
    for (let i = 0; i < 2; i++) {
      const s = net.connect(bridge.port, "127.0.0.1");
      await new Promise((r) => s.once("connect", r));
      held.push(s);
    }
    await waitFor(async () => {
      const r = await fetch(`${bridge.url}/api/ai/chat/unified`, { method: "POST", body: "{}" }).catch(() => null);
      await r?.body?.cancel();
      return r?.status === 429;
    }, { what: "the connection limit to bite" });
    await assert.rejects(stream("chat", {}, { baseUrl: bridge.url }).next(), (e) => {
      assert.equal(e.status, 429);
      assert.equal(e.error_type, "over_capacity");
      assert.equal(e.retryAfterMs, 1000);
      return true;
    });
    const delays = [];
    const started = Date.now();
    const events = await stream("chat", { messages: [{ role: "user", content: "let in" }] }, {
      baseUrl: bridge.url,
      retry: { overloaded: 5 },
      onRetry: ({ delayMs }) => {
        delays.push(delayMs);
        for (const s of held.splice(0)) s.destroy(); // the connections go away
      },
    }).collect();
    assertWellFormed(assert, events);
    assert.deepEqual(delays.slice(0, 1), [1000], "waited the bridge's Retry-After: 1");
    assert.ok(Date.now() - started >= 950);
  } finally {
    for (const s of held) s.destroy();
    await bridge.stop();
  }
});

test("503 draining while the bridge shuts down", async () => {
  const bridge = await startBridge({ env: { SWITCHYARD_SHUTDOWN__GRACE_SECS: "30" } });
  try {
    const running = stream("chat", { options: { chunks: 40, interval_ms: 50 } }, { baseUrl: bridge.url });
    await running.next();
    bridge.proc.kill("SIGTERM");
    const err = await waitFor(async () => {
      try {
        await stream("chat", {}, { baseUrl: bridge.url }).next();
        return null;
      } catch (e) {
        return e instanceof StreamRefusedError ? e : null;
      }
    }, { what: "a 503" });
    assert.equal(err.status, 503);
    assert.equal(err.error_type, "draining");
    assert.equal(err.retryable, true);
    // The running stream finishes where it started.
    const rest = [];
    for await (const e of running) rest.push(e);
    assert.equal(rest.at(-1).data.reason, "completed");
  } finally {
    await bridge.stop();
  }
});
