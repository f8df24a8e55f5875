// The built ESM package in headless Chromium (Debian's `chromium`, driven by
// playwright-core; never a downloaded browser): a page served by a tiny static server of
// the test's own runs streams against the real bridge (a cross-origin bridge, listed in
// cors.allowed_origins), including through the cutting proxy. The test reads what the
// page saw with page.evaluate, checks that the page loaded nothing from anywhere but the
// test's own loopback servers, and saves a screenshot under test-artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { execFileSync } from "node:child_process";
import { readFile, mkdir } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join, normalize } from "node:path";
import { chromium } from "playwright-core";
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
const ARTIFACTS = join(PKG, "test-artifacts");

const MESSAGE = "héllo wörld 世界 🎉 naïve café ☕";

// The page keeps what it saw in window.__result (set once, at the end or on the first
// uncaught error) and shows its progress in #status, for the screenshot.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>switchyard client</title>
<style>body { font: 14px monospace; margin: 16px; } h1 { font-size: 16px; }</style>
<h1>@switchyard/client in Chromium</h1>
<pre id="status">loading /dist/index.js</pre>
<script type="module">
const statusEl = document.getElementById("status");
const show = (line) => (statusEl.textContent += "\\n" + line);
const finish = (out) => {
  if (window.__result === undefined) window.__result = out;
  show(out.error !== undefined ? "error: " + out.error : "done");
};
window.addEventListener("error", (e) => finish({ error: String(e.message) }));
window.addEventListener("unhandledrejection", (e) => finish({ error: String(e.reason && e.reason.stack || e.reason) }));
const q = new URLSearchParams(location.search);
const bridge = q.get("bridge"), proxy = q.get("proxy"), id = q.get("id"), n = Number(q.get("n") || 20);
const ask = (content, extra) => Object.assign({ messages: [{ role: "user", content }] }, extra);
const out = { userAgent: navigator.userAgent };
try {
  const { stream, transportFor, isChunk, StreamRefusedError } = await import("/dist/index.js");
  out.ndjson = await stream("chat", ask(${JSON.stringify(MESSAGE)}, { options: { tool_calls: 1 } }), { baseUrl: bridge }).collect();
  show("ndjson: " + out.ndjson.length + " events");
  const sse = stream("chat", ask(${JSON.stringify(MESSAGE)}), { baseUrl: bridge, format: "sse", requestId: false });
  out.sse = await sse.collect();
  out.sseRequestId = sse.requestId;
  show("sse: " + out.sse.length + " events, request id " + sse.requestId);
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
  show("through the cutting proxy: " + n + " streams, " + reconnects + " reconnects");
  // Abort cancels on the server.
  const ac = new AbortController();
  const s = stream("chat", { request_id: id, options: { chunks: 500, interval_ms: 20 } }, { baseUrl: bridge, signal: ac.signal });
  let chunks = 0;
  try {
    for await (const e of s) if (isChunk(e) && ++chunks === 2) ac.abort();
  } catch (e) {
    out.abortError = e.name;
  }
  show("abort: " + out.abortError);
  try {
    await stream("chat", { options: { chunks: "many" } }, { baseUrl: bridge }).next();
  } catch (e) {
    out.refused = { isTyped: e instanceof StreamRefusedError, status: e.status, error_type: e.error_type };
  }
  show("refused: " + JSON.stringify(out.refused));
  out.transport = await transportFor("chat", { user: "alice" }, { baseUrl: bridge });
  show("transport for alice: " + out.transport);
} catch (e) {
  out.error = String(e && e.stack || e);
}
finish(out);
</script>`;

let server;
let bridge;
let proxy;
let browser;

before(async () => {
  if (!CHROMIUM) return;
  server = http.createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
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
  await browser?.close().catch(() => {});
  await proxy?.close();
  await bridge?.stop();
  await new Promise((r) => (server ? server.close(r) : r()));
});

test("the package in headless Chromium", { skip: CHROMIUM ? false : "no chromium on PATH", timeout: 120_000 }, async () => {
  const origin = `http://127.0.0.1:${server.address().port}`;
  const id = `browser-abort-${Date.now()}`;
  const url = `${origin}/index.html?bridge=${encodeURIComponent(bridge.url)}&proxy=${encodeURIComponent(proxy.url)}&id=${id}&n=${process.env.BROWSER_CUT_STREAMS ?? 20}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(`${r.method()} ${r.url()}`));
  const consoleErrors = [];
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  let crashed = false;
  page.on("crash", () => (crashed = true));
  try {
    await page.goto(url, { waitUntil: "domcontentloaded", timeout: 15_000 });
    // Condition-polled: the page sets window.__result once, when done or on an error.
    await page.waitForFunction(() => window.__result !== undefined, null, { polling: 100, timeout: 90_000 });
    const out = await page.evaluate(() => window.__result);
    if (out.error !== undefined) console.log(`page error: ${out.error}\nconsole errors: ${consoleErrors.join("\n")}`);
    assert.equal(crashed, false, "the page crashed");
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

    // Everything the page asked for came from the test's own loopback servers: the page
    // and the built package from the static server, the streams from the bridge and the
    // proxy.
    const allowed = new Set([origin, bridge.url, proxy.url]);
    const foreign = requests.filter((r) => !allowed.has(new URL(r.slice(r.indexOf(" ") + 1)).origin));
    assert.deepEqual(foreign, [], "the page made requests outside the test's servers");
    assert.ok(requests.includes(`GET ${origin}/dist/index.js`), "the page loaded the built package from the static server");
    assert.ok(requests.some((r) => r.startsWith(`POST ${proxy.url}/`)), "the page streamed through the proxy");
    assert.ok(requests.some((r) => r.startsWith(`POST ${bridge.url}/`)), "the page streamed from the bridge");
    console.log(
      `browser: ${out.reconnects} reconnects over ${proxy.stats.cuts} proxy cuts, ${requests.length} requests; ${out.userAgent}`,
    );
  } finally {
    await mkdir(ARTIFACTS, { recursive: true });
    await page
      .screenshot({ path: join(ARTIFACTS, "browser.png"), fullPage: true, timeout: 10_000 })
      .catch((e) => console.log(`no screenshot: ${e.message}`));
    await context.close().catch(() => {});
    await browser.close();
    browser = undefined;
  }
});
