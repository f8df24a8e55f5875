// Test support: the real bridge on an ephemeral port, its admin API, a TCP proxy that
// cuts connections, and waiting on conditions (never fixed sleeps).
import { spawn } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import { createHmac } from "node:crypto";

export const HERE = dirname(fileURLToPath(import.meta.url));
export const PKG = resolve(HERE, "..");
export const REPO = resolve(PKG, "../..");
export const ADMIN_TOKEN = "test-admin-token";

export function bridgeBinary() {
  if (process.env.SWITCHYARD_BIN) return process.env.SWITCHYARD_BIN;
  const target = process.env.CARGO_TARGET_DIR
    ? resolve(REPO, process.env.CARGO_TARGET_DIR)
    : join(REPO, "target");
  return join(target, "debug", "switchyard");
}

/** Resolves with the value `fn` returns once it is truthy; rejects after `timeoutMs`. */
export async function waitFor(fn, { timeoutMs = 10_000, what = "condition", stepMs = 10 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/**
 * Starts the bridge binary with a temporary copy of the shipped flags (and optionally of
 * routes.toml with extra routes appended). Returns {url, port, proc, dir, stop, admin, ...}.
 * `adminToken` is the admin API's token (`null`: none, e.g. when `env` names tokens);
 * `env` is added to (and wins over) the bridge's environment. Also used by the ops
 * console's browser test (tests/console).
 */
export async function startBridge({ env = {}, extraRoutes = "", flags = null, adminToken = ADMIN_TOKEN } = {}) {
  const bin = bridgeBinary();
  if (!existsSync(bin)) {
    throw new Error(`the bridge binary is missing: ${bin} (run \`cargo build\`, or set SWITCHYARD_BIN)`);
  }
  const dir = mkdtempSync(join(tmpdir(), "switchyard-js-"));
  const flagsDir = join(dir, "flags");
  // The shipped flags only (a checkout's own flags/flags.toml is runtime state): the
  // bridge creates flags.toml from the example, as on a first run.
  mkdirSync(flagsDir);
  cpSync(join(REPO, "flags", "flags.example.toml"), join(flagsDir, "flags.example.toml"));
  if (flags !== null) writeFileSync(join(flagsDir, "flags.toml"), flags);
  const routesFile = join(dir, "routes.toml");
  writeFileSync(routesFile, readFileSync(join(REPO, "routes.toml"), "utf8") + "\n" + extraRoutes);
  // The bridge writes its bound address here once it listens (`serve --ready-file`).
  const readyFile = join(dir, "ready.json");
  const proc = spawn(bin, ["serve", "--listen", "127.0.0.1:0", "--ready-file", readyFile], {
    cwd: dir,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME ?? dir,
      NO_COLOR: "1",
      RUST_LOG: "warn,switchyard=info",
      SWITCHYARD_FLAGS_DIR: flagsDir,
      SWITCHYARD_ROUTES_FILE: routesFile,
      ...(adminToken ? { SWITCHYARD_ADMIN__TOKEN: adminToken } : {}),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  let exited = null;
  const exit = new Promise((r) =>
    proc.on("exit", (code, signal) => {
      exited = { code, signal };
      r(exited);
    }),
  );
  proc.stdout.setEncoding("utf8");
  proc.stderr.setEncoding("utf8");
  proc.stdout.on("data", (d) => (output += d));
  proc.stderr.on("data", (d) => (output += d));
  let ready;
  try {
    ready = await waitFor(
      () => {
        if (exited) throw new Error(`the bridge exited before listening (${JSON.stringify(exited)}):\n${output}`);
        return existsSync(readyFile) && JSON.parse(readFileSync(readyFile, "utf8"));
      },
      { timeoutMs: 20_000, what: "the bridge's ready file" },
    );
  } catch (e) {
    proc.kill("SIGKILL");
    throw new Error(`the bridge did not start: ${e.message}\n${output}`);
  }
  const port = Number(ready.listen.split(":").pop());
  const url = `http://127.0.0.1:${port}`;
  const bridge = {
    url,
    port,
    proc,
    dir,
    exit,
    get output() {
      return output;
    },
    async admin(method, path, body) {
      const res = await fetch(url + path, {
        method,
        headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
      return JSON.parse(text);
    },
    /** Puts a whole flag table for `route` in force and waits until evaluation shows it. */
    async setFlag(route, table) {
      return bridge.admin("PUT", `/admin/flags/${route}`, table);
    },
    async stop() {
      if (exited) return exited;
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), 15_000);
      const r = await exit;
      clearTimeout(t);
      rmSync(dir, { recursive: true, force: true });
      return r;
    },
  };
  return bridge;
}

/** Reads a whole NDJSON answer of the bridge (e.g. a resume from the start) as envelopes. */
export async function readNdjson(url, init = {}) {
  const res = await fetch(url, init);
  const text = await res.text();
  if (!res.ok) throw new Error(`${url}: ${res.status} ${text}`);
  return text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l));
}

/** An HS256 JWT with `exp`, as the bridge's auth expects. */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const payload = { exp: Math.floor(Date.now() / 1000) + 600, ...claims };
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(payload)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/**
 * A TCP proxy in front of `target` that cuts every connection after a random number of
 * bytes from the server (`cutBytes()` per connection; Infinity: never). Counts cuts.
 */
export async function startCuttingProxy(targetPort, cutBytes) {
  const sockets = new Set();
  const stats = { connections: 0, cuts: 0 };
  const server = net.createServer((client) => {
    stats.connections++;
    const budget = cutBytes();
    const upstream = net.connect(targetPort, "127.0.0.1");
    sockets.add(client);
    sockets.add(upstream);
    let passed = 0;
    let cut = false;
    const kill = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => {
      if (cut) return;
      if (passed + d.length > budget) {
        const n = Math.max(0, budget - passed);
        cut = true;
        stats.cuts++;
        if (n > 0) client.write(d.subarray(0, n));
        // Half the cuts end the connection cleanly (FIN), half reset it.
        if (Math.random() < 0.5) {
          client.end(() => kill());
          upstream.destroy();
        } else {
          client.resetAndDestroy ? client.resetAndDestroy() : client.destroy();
          upstream.destroy();
        }
        return;
      }
      passed += d.length;
      client.write(d);
    });
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
    client.on("error", kill);
    upstream.on("error", kill);
    client.on("close", kill);
    upstream.on("close", () => {
      if (!cut) client.end();
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  return {
    url: `http://127.0.0.1:${port}`,
    stats,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Checks the rules of SPEC section 1 on what the app received. */
export function assertWellFormed(assert, events) {
  assert.ok(events.length >= 3, `too few events: ${events.length}`);
  events.forEach((e, i) => assert.equal(e.seq, i, `event ${i} has seq ${e.seq}`));
  assert.equal(events[0].event, "status_update");
  assert.equal(events[0].data.status, "started");
  assert.equal(events.at(-1).event, "end");
  assert.equal(events.filter((e) => e.event === "end").length, 1);
  assert.ok(["completion", "error"].includes(events.at(-2).event));
}

/**
 * A fetch whose first response body breaks after `cutAfter` bytes and whose later GETs
 * (the resumes) wait for `gate`: the connection "drops" and stays down until released.
 */
export function droppingFetch(cutAfter, gate = Promise.resolve()) {
  let first = true;
  return async (url, init = {}) => {
    if ((init.method ?? "GET") === "GET") await gate;
    const res = await fetch(url, init);
    if (!first || !res.ok) return res;
    first = false;
    const reader = res.body.getReader();
    let passed = 0;
    const body = new ReadableStream({
      async pull(c) {
        const r = await reader.read();
        if (r.done) return c.close();
        if (passed + r.value.length > cutAfter) {
          c.enqueue(r.value.subarray(0, cutAfter - passed));
          reader.cancel().catch(() => {});
          return c.error(new TypeError("network error"));
        }
        passed += r.value.length;
        c.enqueue(r.value);
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
}

