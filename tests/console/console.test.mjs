// The ops console in a real browser: Debian's chromium driven by playwright-core (never a
// downloaded browser) against the real bridge binary, started here on an ephemeral port
// with its own flags directory and admin tokens, while traffic runs on both transports
// (NDJSON and SSE over fetch, Socket.IO with socket.io-client). An operator signs in,
// watches the counters move, moves a route to rollout 10 %, checks the evaluation and the
// audit, loses a race against a CLI edit (shown as a conflict, nothing overwritten), rolls
// back, and a wrong token is refused. The page must load nothing from anywhere but the
// bridge. Screenshots go to test-artifacts/. Every wait is on a condition.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";
import { startBridge, bridgeBinary } from "../../clients/js/test/helpers.mjs";
import { io } from "socket.io-client";

const HERE = dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = join(HERE, "test-artifacts");
const ALICE = "alice-console-token";
const OPS = "ops-cli-token";
const TIMEOUT = 20_000;

function findChromium() {
  if (process.env.CHROMIUM_BIN) return process.env.CHROMIUM_BIN;
  for (const name of ["chromium", "chromium-browser"]) {
    try {
      return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim();
    } catch {
      /* next */
    }
  }
  throw new Error("no chromium on PATH (Debian: sudo apt-get install chromium), or set CHROMIUM_BIN");
}

/** Resolves with what `fn` returns once it is truthy; rejects after `timeoutMs`. */
async function waitFor(fn, what, timeoutMs = TIMEOUT) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The bridge binary (started by the client package's test spawner, with the shipped
 * routes and a fresh copy of the shipped flags) with two named admin tokens. */
async function startConsoleBridge() {
  const bridge = await startBridge({
    adminToken: null,
    env: { RUST_LOG: "info", SWITCHYARD_ADMIN__TOKENS__ALICE: ALICE, SWITCHYARD_ADMIN__TOKENS__OPS: OPS },
  });
  return Object.assign(bridge, {
    bin: bridgeBinary(),
    flagsFile: join(bridge.dir, "flags", "flags.toml"),
    /** The admin API as the `ops` token: {status, body}, whatever the status. */
    async admin(method, path, body) {
      const res = await fetch(bridge.url + path, {
        method,
        headers: { authorization: `Bearer ${OPS}`, "content-type": "application/json" },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      return { status: res.status, body: await res.json() };
    },
  });
}

/**
 * Traffic on both transports until stopped: two loops of HTTP streams (NDJSON and SSE
 * alternately, 300 distinct users) and three Socket.IO clients emitting the chat route's
 * legacy request. Refusals (after a rollback, say) are counted, not failures.
 */
function startTraffic(url) {
  const counts = { ndjson: 0, sse: 0, socketio: 0, refused: 0 };
  let stopped = false;
  const body = JSON.stringify({ messages: [{ role: "user", content: "hello from the console test" }], options: { chunks: 8, interval_ms: 40 } });
  const sockets = [0, 1, 2].map((i) => io(url, { transports: ["websocket"], auth: { user_id: `sio-user-${i}` } }));
  const pace = () => new Promise((r) => setTimeout(r, 40)); // load pacing, not a wait
  const http = async (offset) => {
    for (let i = offset; !stopped; i += 2) {
      const sse = i % 4 < 2;
      try {
        const res = await fetch(`${url}/api/ai/chat/unified`, {
          method: "POST",
          headers: { "content-type": "application/json", accept: sse ? "text/event-stream" : "application/x-ndjson", "x-user-id": `user-${i % 300}` },
          body,
        });
        await res.text();
        if (res.ok) counts[sse ? "sse" : "ndjson"]++;
        else counts.refused++;
      } catch {
        counts.refused++;
      }
      await pace();
    }
  };
  const sio = async () => {
    for (let i = 0; !stopped; i++) {
      const s = sockets[i % sockets.length];
      if (s.connected) {
        s.emit("chat_message", { message: "hello over socket.io", session_id: `sess-${i}`, options: { chunks: 8, interval_ms: 40 } }, (ack) => {
          if (ack && ack.request_id) counts.socketio++;
          else counts.refused++;
        });
      }
      await pace();
    }
  };
  const loops = [http(0), http(1), sio()];
  return {
    counts,
    async stop() {
      stopped = true;
      await Promise.all(loops);
      for (const s of sockets) s.close();
    },
  };
}

let bridge;
let traffic;
let browser;

before(async () => {
  bridge = await startConsoleBridge();
  traffic = startTraffic(bridge.url);
  browser = await chromium.launch({
    executablePath: findChromium(),
    headless: true,
    timeout: 30_000,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await browser?.close().catch(() => {});
  await traffic?.stop();
  await bridge?.stop();
});

/** A page that records every request it makes and every error it logs. */
async function openPage(name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const seen = { requests: [], errors: [] };
  page.on("request", (r) => seen.requests.push({ method: r.method(), url: r.url(), headers: r.headers() }));
  page.on("pageerror", (e) => seen.errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    // A refused API call is logged by Chromium itself; anything else (a CSP violation,
    // a script error) is a failure.
    if (m.type() === "error" && !/Failed to load resource: the server responded with a status of (401|403|409)/.test(m.text())) {
      seen.errors.push(`console: ${m.text()}`);
    }
  });
  page.setDefaultTimeout(TIMEOUT);
  return { context, page, seen, shot: (file) => page.screenshot({ path: join(ARTIFACTS, file), fullPage: true }).catch((e) => console.log(`no screenshot ${file}: ${e.message}`)) };
}

function assertOnlyTheBridge(seen) {
  const foreign = seen.requests.filter((r) => new URL(r.url).origin !== bridge.url);
  assert.deepEqual(foreign, [], "the page made requests outside the bridge");
  for (const r of seen.requests) {
    for (const t of [ALICE, OPS, "not-the-token"]) assert.ok(!r.url.includes(t), `a token in a URL: ${r.url}`);
  }
  assert.deepEqual(seen.errors, [], "the page logged errors");
}

test("an operator runs a cutover from the console", { timeout: 180_000 }, async () => {
  const { context, page, seen, shot } = await openPage("operator");
  try {
    // /console redirects to the page, which is locked down by its CSP.
    const resp = await page.goto(`${bridge.url}/console`, { waitUntil: "domcontentloaded" });
    assert.equal(new URL(page.url()).pathname, "/console/");
    assert.match(resp.headers()["content-security-policy"], /^default-src 'self'/);

    // Sign in with the keyboard: a named token, whose name is the actor.
    await page.getByLabel("Admin token").fill(ALICE);
    await page.getByLabel("Admin token").press("Enter");
    await page.getByText("Signed in as alice").waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("switchyard.adminToken")), ALICE);
    const apiCalls = seen.requests.filter((r) => r.url.includes("/admin/"));
    assert.ok(apiCalls.length > 0 && apiCalls.every((r) => r.headers.authorization === `Bearer ${ALICE}`));
    await page.getByText(/Last reload of the flags file: OK/).waitFor();
    for (const route of ["chat", "agent", "tools"]) await page.locator(`article[data-route="${route}"]`).waitFor();
    const chat = page.locator('article[data-route="chat"]');
    assert.match(await chat.locator(".mode").textContent(), /Mode: dual/);
    const order = await page.locator("article[data-route]").evaluateAll((as) => as.map((a) => a.dataset.route));
    assert.deepEqual(order, ["chat", "agent", "tools"], "routes in routes.toml order");

    // An invalid hand edit of the flags file shows, with its error and the flags in
    // force; putting the file back clears it.
    const good = readFileSync(bridge.flagsFile, "utf8");
    writeFileSync(bridge.flagsFile, 'version = 2\n[route.chat]\nmode = "sideways"\n');
    const reload = page.locator("#reload");
    await waitFor(async () => /FAILED/.test(await reload.textContent()), "the failed reload on the page");
    assert.match(await reload.textContent(), /sideways.*In force: the last good flags, version 1\./s);
    await shot("invalid-edit.png");
    writeFileSync(bridge.flagsFile, good);
    await waitFor(async () => /flags file: OK/.test(await reload.textContent()), "the reload to recover");

    // The live counters move, on every transport, without reloading the page.
    const started = async () => (await chat.getAttribute("data-started")).split(",").map(Number);
    const first = await waitFor(async () => {
      const s = await started();
      return s.every((n) => n > 0) && s;
    }, "requests on every transport");
    await waitFor(async () => (await started()).every((n, i) => n > first[i]), "the counters to move");
    const requestsRow = chat.locator("tr", { hasText: "requests" });
    await waitFor(async () => /\/s\)/.test(await requestsRow.textContent()), "a rate per second");
    assert.match(await chat.locator(".share").textContent(), /Served over HTTP: \d+\.\d %/);

    // The evaluation API: alice on chat, before the change.
    await page.getByLabel("Route", { exact: true }).selectOption("chat");
    await page.getByLabel("User").fill("alice");
    await page.getByRole("button", { name: "Evaluate" }).click();
    await waitFor(async () => /reason: mode/.test(await page.locator("#eval-result").textContent()), "alice's evaluation");
    assert.match(await page.locator("#eval-result").textContent(), /Socket\.IO .*bucket none/);

    // The staged recipe: rollout 10 %, confirmed after a diff and an estimate.
    await chat.getByLabel("Stage").selectOption({ label: "rollout 10 %" });
    await chat.getByRole("button", { name: "Review stage…" }).click();
    const dialog = page.locator("#confirm");
    await dialog.waitFor();
    const diff = await page.locator("#confirm-diff").textContent();
    assert.match(diff, /mode \(changes\)dualrollout/);
    assert.match(diff, /percent \(changes\)0 %10 %/);
    await waitFor(async () => /Of the last \d+ subjects seen on chat, about \d+\.\d % would move/.test(await page.locator("#confirm-move").textContent()), "the estimate");
    await shot("confirm.png");
    await page.getByRole("button", { name: "Apply change" }).click();
    await waitFor(async () => /Mode: rollout 10 %/.test(await chat.locator(".mode").textContent()), "chat in rollout 10 %");
    const flags = await bridge.admin("GET", "/admin/flags");
    assert.equal(flags.body.routes.chat.mode, "rollout");
    assert.equal(flags.body.routes.chat.percent, 10);

    // The evaluation changes: alice's bucket (2265) is above the 10 % cut.
    await page.getByRole("button", { name: "Evaluate" }).click();
    await waitFor(async () => /reason: percent/.test(await page.locator("#eval-result").textContent()), "alice's new evaluation");
    assert.match(await page.locator("#eval-result").textContent(), /Socket\.IO .*bucket 2265/);

    // The audit shows who did what, as a diff; the filter narrows it to a route.
    const audit = page.locator("#audit");
    await waitFor(async () => /alicechat\d+mode: dual → rolloutpercent: 0 % → 10 %/.test(await audit.locator("tr").first().textContent()), "the audit entry");
    await page.locator("#audit-route").selectOption("agent");
    await waitFor(async () => /No changes recorded/.test(await audit.textContent()), "the filtered audit");
    await page.locator("#audit-route").selectOption("");
    await waitFor(async () => /alice/.test(await audit.textContent()), "the whole audit");

    // Counters keep moving in rollout; the screenshot for the README is taken here.
    const inRollout = await started();
    await waitFor(async () => (await started()).some((n, i) => n > inRollout[i]), "the counters to move in rollout");
    await shot("console.png");

    // A concurrent edit from the CLI while the operator edits: the save is a conflict.
    await chat.getByRole("button", { name: "Edit table…" }).click();
    await chat.getByLabel("Percent (rollout)").fill("50");
    await promisify(execFile)(bridge.bin, ["flags", "set", "chat", "--mode", "rollout", "--percent", "20", "--url", bridge.url], {
      env: { PATH: process.env.PATH, SWITCHYARD_ADMIN_TOKEN: OPS, SWITCHYARD_ACTOR: "cli-operator" },
    });
    await chat.getByRole("button", { name: "Review change…" }).click();
    await dialog.waitFor();
    await page.getByRole("button", { name: "Apply change" }).click();
    const conflict = page.locator('#confirm-error[data-kind="conflict"]');
    await conflict.waitFor();
    assert.match(await conflict.textContent(), /Conflict: .*NOT applied/);
    await shot("conflict.png");
    const after = await bridge.admin("GET", "/admin/flags");
    assert.equal(after.body.routes.chat.percent, 20, "the CLI's edit stands");
    await page.keyboard.press("Escape");
    await dialog.waitFor({ state: "hidden" });
    await waitFor(async () => /Mode: rollout 20 %/.test(await chat.locator(".mode").textContent()), "the CLI's edit on the page");
    await waitFor(async () => /cli-operator \(ops\)/.test(await audit.textContent()), "the CLI's edit in the audit");

    // The kill switch.
    await chat.getByRole("button", { name: "Roll back to legacy" }).click();
    await dialog.waitFor();
    assert.match(await page.locator("#confirm-diff").textContent(), /mode \(changes\)rolloutlegacy/);
    await page.getByRole("button", { name: "Roll back now" }).click();
    await waitFor(async () => /Mode: legacy/.test(await chat.locator(".mode").textContent()), "chat back in legacy");
    await waitFor(async () => /alicechat\d+mode: rollout → legacy/.test(await audit.locator("tr").first().textContent()), "the rollback in the audit");
    const refused = await fetch(`${bridge.url}/api/ai/chat/unified`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-user-id": "user-1" },
      body: JSON.stringify({ messages: [{ role: "user", content: "hi" }] }),
    });
    assert.equal(refused.status, 409);
    assert.equal((await refused.json()).error.error_type, "route_not_migrated");
    await waitFor(async () => Number((await chat.locator('tr:has-text("refused") td[data-transport="ndjson"]').textContent()).replace(/,/g, "")) > 0, "refusals counted");
    await shot("rolled-back.png");

    assertOnlyTheBridge(seen);
    assert.ok(!bridge.output.includes(ALICE) && !bridge.output.includes(OPS), "a token in the bridge's logs");
    console.log(`traffic: ${JSON.stringify(traffic.counts)}; the page made ${seen.requests.length} requests, all to the bridge`);
  } finally {
    await shot("last.png");
    await context.close().catch(() => {});
  }
});

test("a wrong or missing token is refused plainly", { timeout: 60_000 }, async () => {
  const missing = await fetch(`${bridge.url}/admin/stats`);
  assert.equal(missing.status, 401);
  assert.equal((await missing.json()).error.error_type, "unauthorized");
  const { context, page, seen, shot } = await openPage("refused");
  try {
    await page.goto(`${bridge.url}/console/`, { waitUntil: "domcontentloaded" });
    await page.getByLabel("Admin token").fill("not-the-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    const error = page.locator("#login-error");
    await error.waitFor();
    assert.match(await error.textContent(), /refused this: 403 forbidden — the admin token was refused/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("switchyard.adminToken")), null);
    assert.ok(await page.locator("#app").isHidden());
    await shot("refused.png");

    // A token that stops working while signed in (revoked, say): the next refresh signs
    // out and says why.
    await page.getByLabel("Admin token").fill(ALICE);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByText("Signed in as alice").waitFor();
    assert.ok(await error.isHidden());
    await page.evaluate(() => sessionStorage.setItem("switchyard.adminToken", "not-the-token"));
    await error.waitFor();
    assert.match(await error.textContent(), /403 forbidden/);
    assert.ok(await page.locator("#app").isHidden());
    assert.equal(await page.evaluate(() => sessionStorage.getItem("switchyard.adminToken")), null);
    assertOnlyTheBridge(seen);
  } finally {
    await context.close().catch(() => {});
  }
});
