#!/usr/bin/env node
/*
 * sio_client.js: scriptable real Socket.IO client (Node) for Switchyard's
 * Rust interop tests. Twin of sio_client.py (python-socketio); both follow
 * the same contract, documented here.
 *
 * Install deps once:  scripts/interop-setup
 * Run:                node tests/interop/sio_client.js '<json spec>'
 *
 * SPEC (one JSON object as the only argument)
 *   {
 *     "url": "http://127.0.0.1:PORT",      // required, no path
 *     "namespace": "/",                    // optional, default "/"
 *     "transports": ["websocket"],         // or ["polling"] or ["polling","websocket"]
 *                                          // (default ["polling","websocket"])
 *     "auth": {"token": "..."},            // optional handshake auth (protocol v5).
 *                                          // With "client":"v2" the fields go into
 *                                          // the query string instead (no auth in v2).
 *     "query": {"k": "v"},                 // optional extra query-string params
 *     "path": "/socket.io",                // optional server path, default "/socket.io"
 *     "client": "v4",                      // JS only: "v4" (default, socket.io-client 4.x,
 *                                          // protocol v5) or "v2" (socket.io-client 2.x,
 *                                          // protocol v4). Ignored by the Python client.
 *     "with_credentials": false,           // JS v4 only: socket.io-client's withCredentials
 *                                          // (under Node it turns on engine.io-client's
 *                                          // cookie jar: cookies set by the server or a load
 *                                          // balancer are sent back). Default false.
 *     "connect_timeout_ms": 5000,          // optional, default 5000
 *     "global_timeout_ms": 60000,          // optional, default 60000
 *     "steps": [ ... ]                     // run in order after connect
 *   }
 *
 * STEPS (objects; the first known key decides the kind)
 *   {"emit": "ev", "data": {...}}            emit ev with ONE argument (data). Use
 *                                            "args": [a, b] for several, or neither
 *                                            for none.
 *   {"emit": "ev", "data": {...}, "ack": true, "timeout_ms": 10000}
 *                                            emit with an ack callback and WAIT for
 *                                            the ack; prints an "ack" line.
 *   {"wait_for": "ev", "count": 1, "timeout_ms": 10000}
 *                                            wait until >= count "ev" events have
 *                                            been received in total since connect
 *                                            (events received earlier count too).
 *   {"wait_any": ["a", "b"], "count": 1, "timeout_ms": 10000}
 *                                            same, over the sum of several names.
 *   {"sleep_ms": 100}
 *   {"wait_stdin": true, "timeout_ms": N}    print {"type":"waiting"}, then wait for
 *                                            one line on stdin (timeout_ms optional,
 *                                            default: only the global timeout). If the
 *                                            line is a JSON object that is a step, it
 *                                            runs next (a timeout in it reports this
 *                                            wait_stdin's index). EOF on stdin = fatal.
 *   {"disconnect": true}                     client-side disconnect; remaining steps
 *                                            are skipped, then "done", exit 0.
 *   {"wait_disconnect": true, "timeout_ms": 10000}
 *                                            wait until the server disconnects us
 *                                            (returns at once if already disconnected).
 *
 * OUTPUT: JSON Lines on stdout, one object per line, flushed per line.
 *   {"type":"connect","id":<socket id>}   (the namespace's sid; v2 client on a
 *                                          non-root namespace: "/ns#<engine id>")
 *   {"type":"connect_error","message":<string|null>,"data":<any|null>}   then exit 3
 *       (server refusal, transport failure, or no connect within
 *        connect_timeout_ms -> message "timeout"). socketioxide refusals carry
 *       only a message, so data is null. Transport failures: JS v4/v2 say
 *       "websocket error" / "xhr poll error"; Python says "Connection error"
 *       (websocket) or aiohttp's text, e.g. "Cannot connect to host ..."
 *       (polling). Only the exit code and "timeout" are portable.
 *       v2 client against a socket.io 2.x server whose middleware set err.data:
 *       message null, data = err.data (that server sends only err.data).
 *   {"type":"event","event":<name>,"data":<first arg|null>,"args":[<all args>]}
 *       for EVERY incoming event, in arrival order. If the server asked for an
 *       ack, it is answered at once with no arguments (python-socketio does the
 *       same), and the ack function is not listed in args.
 *   {"type":"ack","event":<name>,"data":<first ack arg|null>,"args":[<all ack args>]}
 *   {"type":"waiting"}                                          (wait_stdin)
 *   {"type":"disconnect","reason":<string|null>}
 *   {"type":"done"}                                             then exit 0
 *   {"type":"timeout","step":<index>}                           then exit 2
 *       (step -1 = global_timeout_ms expired)
 *   {"type":"fatal","message":<string>}                         then exit 1
 *       (bad spec, unknown step, emit while disconnected, stdin EOF, and
 *        "disconnected (<reason>) while waiting for ...": the connection
 *        dropped during wait_for / wait_any / an ack wait and the condition
 *        was still unmet 200 ms later; events that arrived before the drop
 *        still count)
 *   {"type":"error","message":...,"data":...}   v2 only: an 'error' event after
 *       connect (informational, the script continues)
 *   done / timeout / fatal / connect_error are always the LAST line. Before
 *   exiting, a still-open connection is closed cleanly (for done this is
 *   reported with a disconnect line before "done"; after timeout/fatal it is
 *   silent).
 *   Binary payloads are printed as {"_binary": "<base64>"}.
 *
 * Reconnection is disabled. Disconnect reasons are each library's own strings:
 *   socket.io-client v4/v2: "io server disconnect", "io client disconnect",
 *                           "transport close", "transport error", "ping timeout"
 *   python-socketio >= 5.12: "server disconnect", "client disconnect",
 *                            "transport error" (null on older versions)
 * Exit codes: 0 done, 1 fatal, 2 timeout, 3 connect_error.
 *
 * KNOWN CLIENT QUIRKS (real behaviour, deliberately not papered over)
 *   - python-socketio client-side disconnect: python-engineio closes the
 *     transport before the namespace DISCONNECT packet leaves, so the server
 *     sees a transport close, not a namespace disconnect. (The script does
 *     flush already-queued emits first, so a trailing emit is not lost.)
 *   - python-engineio refuses polling payloads with more than 16 packets
 *     ("Too many packets in payload"): the Python client then drops with
 *     reason "transport error". A server that batches more than 16 packets
 *     into one long-poll response breaks python-socketio over polling.
 *   - The JS clients' client-side disconnect sends a proper namespace
 *     DISCONNECT ("client namespace disconnect" on the server).
 */
'use strict';

const readline = require('readline');

const GRACE_MS = 200; // how long to keep waiting for in-flight events after a drop

// ---------------------------------------------------------------- output ---
let terminal = false; // set once a final line (done/timeout/fatal/connect_error) is out

function out(obj) {
  if (terminal) return;
  // stdout is a pipe when driven by the tests: writes are synchronous on Linux.
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// Make any incoming value JSON-friendly: binaries -> {"_binary": base64},
// functions/undefined -> null (or dropped in objects).
function toJson(v) {
  if (v === undefined || typeof v === 'function') return null;
  if (Buffer.isBuffer(v)) return { _binary: v.toString('base64') };
  if (v instanceof ArrayBuffer) return { _binary: Buffer.from(v).toString('base64') };
  if (ArrayBuffer.isView(v)) {
    return { _binary: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') };
  }
  if (Array.isArray(v)) return v.map(toJson);
  if (v !== null && typeof v === 'object') {
    const o = {};
    for (const [k, x] of Object.entries(v)) {
      if (x !== undefined && typeof x !== 'function') o[k] = toJson(x);
    }
    return o;
  }
  return v;
}

// ----------------------------------------------------------------- state ---
let socket = null;
let connected = false;
let disconnectedAt = null; // ms timestamp of the last disconnect
let disconnectReason = null;
const counts = new Map(); // event name -> number received
const stdinLines = [];
let stdinEof = false;
let rl = null;
let globalTimer = null;
let connectTimer = null;
const stepTimers = new Set(); // timers owned by steps; cleared on finish

function later(fn, ms) {
  const t = setTimeout(() => { stepTimers.delete(t); fn(); }, ms);
  stepTimers.add(t);
  return t;
}
function cancel(t) {
  if (t) { clearTimeout(t); stepTimers.delete(t); }
}

// Waiters re-check their predicate on every state change.
const waiters = new Set();
function notify() {
  for (const w of Array.from(waiters)) w.check();
}

class StepTimeout extends Error {}
class Fatal extends Error {}

// Resolve when pred() is true. Rejects with StepTimeout after timeoutMs
// (Infinity = never), or Fatal if failOnDisconnect and the connection dropped
// more than GRACE_MS ago without pred() becoming true.
function waitUntil(pred, timeoutMs, failOnDisconnect, what) {
  return new Promise((resolve, reject) => {
    let timer = null;
    let graceTimer = null;
    const w = {
      check() {
        if (pred()) return done(null);
        if (failOnDisconnect && !connected && disconnectedAt !== null) {
          const since = Date.now() - disconnectedAt;
          if (since >= GRACE_MS) {
            return done(new Fatal(`disconnected (${disconnectReason}) while waiting for ${what}`));
          }
          if (!graceTimer) graceTimer = later(() => w.check(), GRACE_MS - since + 5);
        }
      },
    };
    function done(err) {
      waiters.delete(w);
      cancel(timer);
      cancel(graceTimer);
      if (err) reject(err); else resolve();
    }
    waiters.add(w);
    if (Number.isFinite(timeoutMs)) {
      timer = later(() => done(new StepTimeout(what)), timeoutMs);
    }
    w.check();
  });
}

// ------------------------------------------------------------- finishing ---
let finishing = false;

function finish(code) {
  if (finishing) return;
  finishing = true;
  terminal = true;
  clearTimeout(globalTimer);
  clearTimeout(connectTimer);
  for (const t of stepTimers) clearTimeout(t);
  stepTimers.clear();
  if (rl) rl.close();
  process.stdin.destroy();
  process.exitCode = code;
  try {
    if (socket) {
      // disconnect() sends the DISCONNECT packet and closes the transport;
      // for a socket still connecting it just aborts.
      if (socket.connected) socket.disconnect();
      else if (typeof socket.close === 'function') socket.close();
    }
  } catch (_) { /* best effort */ }
  // Let pending I/O (the DISCONNECT packet / polling POST) drain so the server
  // sees a clean close; the process exits on its own when idle. Hard stop as a
  // backstop (unref'd: it does not itself keep the process alive).
  setTimeout(() => process.exit(code), 1500).unref();
}

function fatal(message) {
  out({ type: 'fatal', message: String(message) });
  finish(1);
}

// ------------------------------------------------------------------ spec ---
let spec;
try {
  if (process.argv.length < 3) throw new Error('usage: node sio_client.js \'<json spec>\'');
  spec = JSON.parse(process.argv[2]);
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) throw new Error('spec must be a JSON object');
  if (typeof spec.url !== 'string') throw new Error('spec.url (string) is required');
} catch (e) {
  fatal(`bad spec: ${e.message}`);
  return; // top-level return is fine in a CommonJS script
}

const namespace = spec.namespace || '/';
const transports = spec.transports || ['polling', 'websocket'];
const connectTimeoutMs = spec.connect_timeout_ms ?? 5000;
const globalTimeoutMs = spec.global_timeout_ms ?? 60000;
const steps = Array.isArray(spec.steps) ? spec.steps : [];
const clientVersion = spec.client || 'v4';

globalTimer = setTimeout(() => {
  out({ type: 'timeout', step: -1 });
  finish(2);
}, globalTimeoutMs);

// ---------------------------------------------------------- event intake ---
function onIncoming(name, args) {
  // A trailing function is the server's ack request: answer it (no args).
  let ack = null;
  if (args.length && typeof args[args.length - 1] === 'function') ack = args.pop();
  counts.set(name, (counts.get(name) || 0) + 1);
  const jargs = args.map(toJson);
  out({ type: 'event', event: name, data: jargs.length ? jargs[0] : null, args: jargs });
  if (ack) ack();
  notify();
}

function normaliseError(err) {
  // v4: Error with .message (+ .data from the server's CONNECT_ERROR packet).
  // v2: Error (transport failure) or the raw ERROR packet payload: a string,
  // {"message": ...} (socketioxide), or a socket.io 2.x server's bare err.data
  // object (no "message" key: then message is null and data is the object).
  if (err instanceof Error) return { message: err.message, data: toJson(err.data ?? null) };
  if (typeof err === 'string') return { message: err, data: null };
  if (err && typeof err === 'object') {
    if ('message' in err) return { message: String(err.message), data: toJson(err.data ?? null) };
    return { message: null, data: toJson(err) };
  }
  return { message: String(err), data: null };
}

let everConnected = false;
function onConnectFailed(err) {
  if (everConnected || finishing) return;
  out({ type: 'connect_error', ...normaliseError(err) });
  finish(3);
}

function onConnect() {
  if (everConnected) return;
  everConnected = true;
  connected = true;
  clearTimeout(connectTimer);
  out({ type: 'connect', id: socket.id ?? null });
  notify();
  runSteps().catch((e) => fatal(e && e.stack ? e.stack : e));
}

function onDisconnect(reason) {
  if (!connected) return;
  connected = false;
  disconnectedAt = Date.now();
  disconnectReason = reason ?? null;
  out({ type: 'disconnect', reason: disconnectReason });
  notify();
}

// --------------------------------------------------------------- connect ---
process.on('uncaughtException', (e) => fatal(e && e.stack ? e.stack : e));

try {
  const target = new URL(spec.url);
  target.pathname = namespace;
  const query = Object.assign({}, spec.query || {});
  if (clientVersion === 'v4') {
    const { io } = require('socket.io-client');
    socket = io(target.toString(), {
      transports,
      auth: spec.auth || undefined,
      query,
      path: spec.path || '/socket.io',
      reconnection: false,
      timeout: connectTimeoutMs,
      forceNew: true,
      withCredentials: spec.with_credentials === true,
    });
    socket.onAny((name, ...args) => onIncoming(name, args));
    socket.on('connect', onConnect);
    socket.on('connect_error', onConnectFailed);
    socket.on('disconnect', onDisconnect);
  } else if (clientVersion === 'v2') {
    const io2 = require('socket.io-client-v2');
    Object.assign(query, spec.auth || {}); // protocol v4 has no auth payload
    socket = io2(target.toString(), {
      transports,
      query,
      path: spec.path || '/socket.io',
      reconnection: false,
      timeout: connectTimeoutMs,
      forceNew: true,
    });
    // socket.io-client 2.x has no onAny: hook the packet dispatcher instead.
    socket.onevent = function (packet) {
      const args = (packet.data || []).slice();
      const name = args.shift();
      if (packet.id != null) args.push(this.ack(packet.id));
      onIncoming(name, args);
    };
    socket.on('connect', onConnect);
    socket.on('connect_error', onConnectFailed); // transport-level failure
    socket.on('connect_timeout', () => onConnectFailed('timeout'));
    socket.on('error', (err) => { // ERROR packet, e.g. middleware refusal
      if (!everConnected) onConnectFailed(err);
      else out({ type: 'error', ...normaliseError(err) });
    });
    socket.on('disconnect', onDisconnect);
  } else {
    throw new Error(`unknown client ${JSON.stringify(clientVersion)} (want "v4" or "v2")`);
  }
} catch (e) {
  fatal(`bad spec: ${e.message}`);
}

// Covers the namespace CONNECT round-trip too (the library timeout does not).
if (!finishing) connectTimer = setTimeout(() => onConnectFailed('timeout'), connectTimeoutMs);

// ----------------------------------------------------------------- steps ---
const STEP_KINDS = ['emit', 'wait_for', 'wait_any', 'sleep_ms', 'wait_stdin', 'disconnect', 'wait_disconnect'];

function stepKind(step) {
  if (step === null || typeof step !== 'object' || Array.isArray(step)) return null;
  return STEP_KINDS.find((k) => k in step) || null;
}

function timeoutOf(step, dflt) {
  return step.timeout_ms ?? dflt;
}

function countOf(names) {
  return names.reduce((n, name) => n + (counts.get(name) || 0), 0);
}

function ensureStdinReader() {
  if (!rl) {
    rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
    rl.on('line', (line) => { stdinLines.push(line); notify(); });
    rl.on('close', () => { stdinEof = true; notify(); });
  }
}

// Runs one step; returns a step injected via stdin (or null), or 'stop'.
async function runStep(step, idx) {
  const kind = stepKind(step);
  switch (kind) {
    case 'emit': {
      if (!connected) throw new Fatal(`step ${idx}: emit "${step.emit}" while disconnected`);
      let args = [];
      if (Array.isArray(step.args)) args = step.args;
      else if ('data' in step) args = [step.data];
      if (!step.ack) {
        socket.emit(step.emit, ...args);
        return null;
      }
      let acked = false;
      socket.emit(step.emit, ...args, (...reply) => {
        // Printed right here so it keeps its place among incoming events.
        const jargs = reply.map(toJson);
        out({ type: 'ack', event: step.emit, data: jargs.length ? jargs[0] : null, args: jargs });
        acked = true;
        notify();
      });
      await waitUntil(() => acked, timeoutOf(step, 10000), true, `ack of "${step.emit}"`);
      return null;
    }
    case 'wait_for':
    case 'wait_any': {
      const names = kind === 'wait_for' ? [step.wait_for] : step.wait_any;
      if (!Array.isArray(names)) throw new Fatal(`step ${idx}: wait_any wants an array`);
      const count = step.count ?? 1;
      await waitUntil(() => countOf(names) >= count, timeoutOf(step, 10000), true,
        `${count} x ${JSON.stringify(names)}`);
      return null;
    }
    case 'sleep_ms':
      await new Promise((r) => later(r, step.sleep_ms));
      return null;
    case 'wait_stdin': {
      out({ type: 'waiting' });
      ensureStdinReader();
      await waitUntil(() => stdinLines.length > 0 || stdinEof, timeoutOf(step, Infinity), false, 'stdin');
      if (!stdinLines.length) throw new Fatal(`step ${idx}: stdin closed while waiting for a line`);
      const line = stdinLines.shift();
      let injected = null;
      try { injected = JSON.parse(line); } catch (_) { /* plain line: just a signal */ }
      return stepKind(injected) ? injected : null;
    }
    case 'disconnect':
      if (connected) socket.disconnect(); // emits 'disconnect' synchronously
      return 'stop';
    case 'wait_disconnect':
      await waitUntil(() => !connected, timeoutOf(step, 10000), false, 'disconnect');
      return null;
    default:
      throw new Fatal(`step ${idx}: unknown step ${JSON.stringify(step)}`);
  }
}

async function runSteps() {
  let i = 0;
  try {
    outer:
    for (; i < steps.length; i++) {
      let step = steps[i];
      while (step) {
        if (finishing) return;
        const next = await runStep(step, i);
        if (next === 'stop') break outer;
        step = next;
      }
    }
  } catch (e) {
    if (finishing) return;
    if (e instanceof StepTimeout) {
      out({ type: 'timeout', step: i });
      finish(2);
    } else if (e instanceof Fatal) {
      fatal(e.message);
    } else {
      fatal(e && e.stack ? e.stack : e);
    }
    return;
  }
  if (finishing) return;
  if (connected) socket.disconnect(); // prints the disconnect line first
  out({ type: 'done' });
  finish(0);
}
