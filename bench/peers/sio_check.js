#!/usr/bin/env node
/*
 * sio_check.js: the Socket.IO side of bench/peers/verify, with the real socket.io-client
 * 4.x from tests/interop/node_modules (scripts/interop-setup installs it).
 *
 *   node sio_check.js '{"url": "http://127.0.0.1:PORT", "transports": ["websocket"],
 *                       "payload": {...}, "repeat": 1, "grace_ms": 300}'
 *
 * Connects once, emits `chat_message` with `payload` and an ack callback `repeat` times in
 * sequence, each time waiting for `chat_complete`. The first round is recorded: the ack,
 * then every event received (name and first argument) until `grace_ms` after
 * `chat_complete`, so stray events show up. Every later round is checked against the
 * workload (ack {request_id}, N chunk events of generated_chunk(i, S), chat_complete with
 * their concatenation, nothing else). Prints one JSON object:
 *   {"ack": ..., "events": [[name, data], ...], "rounds": n, "errors": n,
 *    "first_error": str|null, "elapsed_ms": n}   (elapsed_ms: rounds 2..repeat)
 * and exits (0, or 1 on a connection failure or timeout), without waiting for the
 * transport to wind down.
 */
"use strict";

const path = require("node:path");

const CLIENT = process.env.SIO_CLIENT ||
  path.resolve(__dirname, "../../tests/interop/node_modules/socket.io-client");
const { io } = require(CLIENT);

const spec = JSON.parse(process.argv[2]);
const repeat = spec.repeat || 1;
const graceMs = spec.grace_ms ?? 300;
const timeoutMs = spec.timeout_ms ?? 30000;
const options = (spec.payload && spec.payload.options) || {};
const chunks = options.chunks ?? 1;
const chunkBytes = options.chunk_bytes ?? 16;

const ALPHABET = "abcdefghijklmnopqrstuvwxyz";
function generatedChunk(i, len) {
  let s = "";
  for (let j = 0; j < len; j++) s += ALPHABET[(i + j) % 26];
  return s;
}
const expected = Array.from({ length: chunks }, (_, i) => generatedChunk(i, chunkBytes));
const expectedFull = expected.join("");

function finish(result, code) {
  process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(code));
}

const socket = io(spec.url, {
  transports: spec.transports || ["polling", "websocket"],
  reconnection: false,
  timeout: 10000,
});
const timer = setTimeout(
  () => finish({ fatal: `timeout after ${timeoutMs} ms`, ...result }, 1),
  timeoutMs,
);
const result = { ack: null, events: [], rounds: 0, errors: 0, first_error: null, elapsed_ms: 0 };

// Per round: what arrived since its emit.
let round = null;
socket.onAny((name, data) => {
  if (round) round.events.push([name, data]);
  else if (result.rounds === 0) result.events.push([name, data]); // before any emit
  if (round && name === "chat_complete") round.done();
});

function runRound() {
  return new Promise((resolve) => {
    round = { events: [], ack: undefined, done: null };
    round.done = resolve;
    socket.emit("chat_message", spec.payload, (ack) => {
      if (round) round.ack = ack;
    });
  });
}

function check(r) {
  const ack = r.ack;
  if (!ack || typeof ack.request_id !== "string") return `bad ack ${JSON.stringify(ack)}`;
  if (r.events.length !== chunks + 1) return `${r.events.length} events, expected ${chunks + 1}`;
  for (let i = 0; i < chunks; i++) {
    const [name, data] = r.events[i];
    if (name !== "chat_chunk" || !data || data.chunk !== expected[i]) {
      return `event ${i}: ${name} ${JSON.stringify(data).slice(0, 80)}`;
    }
  }
  const [name, data] = r.events[chunks];
  if (name !== "chat_complete" || !data || data.full_response !== expectedFull) {
    return `last event: ${name}`;
  }
  return null;
}

socket.on("connect_error", (e) => finish({ fatal: `connect_error: ${e.message}` }, 1));
socket.on("connect", async () => {
  let start = process.hrtime.bigint();
  for (let k = 0; k < repeat; k++) {
    await runRound();
    if (k === 0) {
      // Record: let stray events after chat_complete arrive too.
      await new Promise((r) => setTimeout(r, graceMs));
      result.ack = round.ack === undefined ? null : round.ack;
      result.events.push(...round.events);
      start = process.hrtime.bigint(); // time the later rounds only
    }
    const err = check(round);
    if (err) {
      result.errors++;
      result.first_error ??= `round ${k}: ${err}`;
    }
    result.rounds++;
  }
  result.elapsed_ms = Number(process.hrtime.bigint() - start) / 1e6;
  clearTimeout(timer);
  finish(result, 0);
});
