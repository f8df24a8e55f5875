// The built ESM package in headless Chromium (Debian's `chromium`): a page served by a
// tiny static server of the test's own runs streams against the real bridge (a
// cross-origin bridge, listed in cors.allowed_origins), including through the cutting
// proxy, and posts what it saw back to the server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { spawn, execFileSync } from "node:child_process";
import { readFile, mkdtemp, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join, normalize } from "node:path";
import { tmpdir } from "node:os";
import { startBridge, startCuttingProxy, assertWellFormed, PKG, readNdjson } from "./helpers.mjs";

function findChromium() {
  if (process.env.CHROMIUM_BIN) return process.env.CHROMIUM_BIN;
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim();
    } catch {
      /* next */
    }
  }
  return null;
}
const CHROMIUM = findChromium();

const MESSAGE = "héllo wörld 世界 🎉 naïve café ☕";

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>switchyard client</title>
<script type="module">
import { stream, transportFor, isChunk, isEnd, StreamRefusedError } from "/dist/index.js";
const q = new URLSearchParams(location.search);
const bridge = q.get("bridge"), proxy = q.get("proxy"), id = q.get("id"), n = Number(q.get("n") || 20);
const report = (out) => fetch("/result", { method: "POST", body: JSON.stringify(out) });
window.addEventListener("error", (e) => report({ error: String(e.message) }));
window.addEventListener("unhandledrejection", (e) => report({ error: String(e.reason && e.reason.stack || e.reason) }));
const ask = (content, extra) => Object.assign({ messages: [{ role: "user", content }] }, extra);
const out = { userAgent: navigator.userAgent };
try {
  out.ndjson = await stream("chat", ask(${JSON.stringify(MESSAGE)}, { options: { tool_calls: 1 } }), { baseUrl: bridge }).collect();
  const sse = stream("chat", ask(${JSON.stringify(MESSAGE)}), { baseUrl: bridge, format: "sse", requestId: false });
  out.sse = await sse.collect();
  out.sseRequestId = sse.requestId;
  // Through the cutting proxy: resumed by itself. Chromium also resends by itself a POST
  // whose reused connection closed before any answer: the bridge then answers 409
  // duplicate_request to the copy, which the client must resume, not report.
  // (BROWSER_CUT_STREAMS sets how many streams; 20 by default.)
  let reconnects = 0;
  out.cut = [];
  for (let i = 0; i < n; i++) {
    out.cut.push(await stream("chat", { options: { chunks: 120, chunk_bytes: 8 } }, {
      baseUrl: proxy, format: i % 2 ? "sse" : "ndjson",
      retry: { baseDelayMs: 2, maxDelayMs: 40, maxAttempts: 40 },
      onReconnect: () => reconnects++,
    }).collect());
  }
  out.reconnects = reconnects;
  // Abort cancels on the server.
  const ac = new AbortController();
  const s = stream("chat", { request_id: id, options: { chunks: 500, interval_ms: 20 } }, { baseUrl: bridge, signal: ac.signal });
  let chunks = 0;
  try {
    for await (const e of s) if (isChunk(e) && ++chunks === 2) ac.abort();
  } catch (e) {
    out.abortError = e.name;
  }
  try {
    await stream("chat", { options: { chunks: "many" } }, { baseUrl: bridge }).next();
  } catch (e) {
    out.refused = { isTyped: e instanceof StreamRefusedError, status: e.status, error_type: e.error_type };
  }
  out.transport = await transportFor("chat", { user: "alice" }, { baseUrl: bridge });
} catch (e) {
  out.error = String(e && e.stack || e);
}
await report(out);
</script>`;

let server;
let bridge;
let proxy;
let resultResolve;
const result = new Promise((r) => (resultResolve = r));

before(async () => {
  if (!CHROMIUM) return;
  server = http.createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (req.method === "POST" && path === "/result") {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        res.end("ok");
        resultResolve(JSON.parse(body));
      });
      return;
    }
    if (path === "/" || path === "/index.html") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      return res.end(PAGE);
    }
    if (path.startsWith("/dist/")) {
      const file = normalize(join(PKG, path));
      if (file.startsWith(join(PKG, "dist")) && existsSync(file)) {
        res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
        return res.end(await readFile(file));
      }
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const origin = `http://127.0.0.1:${server.address().port}`;
  bridge = await startBridge({ env: { SWITCHYARD_CORS__ALLOWED_ORIGINS: JSON.stringify([origin]) } });
  proxy = await startCuttingProxy(bridge.port, () => 300 + Math.floor(Math.random() * 3000));
});

after(async () => {
  await proxy?.close();
  await bridge?.stop();
  await new Promise((r) => (server ? server.close(r) : r()));
});

test("the package in headless Chromium", { skip: CHROMIUM ? false : "no chromium on PATH", timeout: 90_000 }, async () => {
  const profile = await mkdtemp(join(tmpdir(), "switchyard-chromium-"));
  const id = `browser-abort-${Date.now()}`;
  const page = `http://127.0.0.1:${server.address().port}/index.html?bridge=${encodeURIComponent(bridge.url)}&proxy=${encodeURIComponent(proxy.url)}&id=${id}&n=${process.env.BROWSER_CUT_STREAMS ?? 20}`;
  const browser = spawn(
    CHROMIUM,
    [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--no-default-browser-check",
      `--user-data-dir=${profile}`,
      page,
    ],
    { stdio: ["ignore", "ignore", "pipe"], detached: true },
  );
  let stderr = "";
  browser.stderr.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
  const exited = new Promise((r) => browser.on("exit", r));
  try {
    const out = await Promise.race([
      result,
      exited.then((code) => {
        throw new Error(`chromium exited (${code}) before the page reported:\n${stderr}`);
      }),
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error(`no result from the page within 60 s:\n${stderr}`)), 60_000).unref(),
      ),
    ]);
    if (out.error !== undefined) console.log(`page error: ${out.error}`);
    assert.equal(out.error, undefined, out.error);
    assert.match(out.userAgent, /Chrome/);
    for (const events of [out.ndjson, out.sse]) {
      assertWellFormed(assert, events);
      assert.equal(events.filter((e) => e.event === "chunk").map((e) => e.data.text).join(""), MESSAGE);
      assert.equal(events.at(-2).data.output, MESSAGE);
    }
    assert.equal(out.ndjson.filter((e) => e.event === "tool_event").length, 2);
    assert.equal(out.sseRequestId, out.sse[0].data.metadata.request_id, "x-request-id is readable cross-origin");
    for (const events of out.cut) {
      assertWellFormed(assert, events);
      assert.equal(events.filter((e) => e.event === "chunk").length, 120);
    }
    assert.ok(out.reconnects > 0, "the proxy cut the browser's connections and it resumed");
    assert.equal(out.abortError, "AbortError");
    const replay = await readNdjson(`${bridge.url}/api/streams/${id}`);
    assert.equal(replay.at(-1).data.reason, "cancelled");
    assert.deepEqual(out.refused, { isTyped: true, status: 400, error_type: "invalid_request" });
    assert.equal(out.transport, "socketio");
    console.log(`browser: ${out.reconnects} reconnects over ${proxy.stats.cuts} proxy cuts; ${out.userAgent}`);
  } finally {
    try {
      process.kill(-browser.pid, "SIGKILL");
    } catch {
      /* already gone */
    }
    await exited;
    await rm(profile, { recursive: true, force: true });
  }
});
