#!/usr/bin/env node
/*
 * once_probe.js: many chat streams through real socket.io-client 4.x sockets that are
 * both the requester and members of the stream's session room, counting how often each
 * stream arrives. Twin of once_probe.py (python-socketio); the Rust test
 * tests/e2e/socketio.rs drives both.
 *
 * Run: node tests/interop/once_probe.js '<json spec>'
 *   {"url": "http://127.0.0.1:PORT", "transports": ["websocket"],
 *    "join": "auth" | "join",      // session from the handshake auth, or a `join` per stream
 *    "connection": "new" | "long", // a new socket per stream, or one per worker
 *    "streams": 200, "parallel": 8, "grace_ms": 50}
 * Stream i asks for the message "q<i> alpha beta gamma" (4 chunks, the first "q<i> ").
 * After each stream's chat_complete the socket waits a `join` round trip and grace_ms
 * more, so a second copy in flight arrives before the socket moves on or closes.
 * Prints one JSON line: {"streams", "duplicates", "missing", "examples"}; exit 0, or 1
 * on a connection or protocol failure (with {"fatal": message}).
 */
'use strict';
const { io } = require('socket.io-client');

const spec = JSON.parse(process.argv[2]);
const chunks = new Map(); // i -> first chunks seen
const completes = new Map(); // i -> completes seen
const bump = (m, i) => m.set(i, (m.get(i) || 0) + 1);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function connect(sessionId) {
  const opts = { transports: spec.transports, reconnection: false, forceNew: true };
  if (spec.join === 'auth') opts.auth = { session_id: sessionId };
  const socket = io(spec.url, opts);
  const waiting = new Map(); // i -> resolve of its chat_complete
  socket.on('chat_chunk', (m) => {
    const hit = /^q(\d+) $/.exec(m.chunk);
    if (hit) bump(chunks, Number(hit[1]));
  });
  socket.on('chat_complete', (m) => {
    const hit = /^q(\d+) /.exec(m.full_response || '');
    if (!hit) return;
    const i = Number(hit[1]);
    bump(completes, i);
    const done = waiting.get(i);
    if (done) { waiting.delete(i); done(); }
  });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve({ socket, waiting }));
    socket.once('connect_error', (e) => reject(new Error(`connect_error: ${e.message}`)));
  });
}

function ack(socket, event, data) {
  return socket.timeout(20000).emitWithAck(event, data);
}

async function stream(conn, i, sessionId) {
  if (spec.join === 'join') await ack(conn.socket, 'join', { session_id: sessionId });
  const complete = new Promise((resolve, reject) => {
    conn.waiting.set(i, resolve);
    setTimeout(() => reject(new Error(`stream q${i}: no chat_complete in 20 s`)), 20000).unref();
  });
  const a = await ack(conn.socket, 'chat_message', { message: `q${i} alpha beta gamma`, session_id: sessionId });
  if (!a || !a.request_id) throw new Error(`stream q${i} refused: ${JSON.stringify(a)}`);
  await complete;
  await ack(conn.socket, 'join', { session_id: `${sessionId}-probe` });
  await sleep(spec.grace_ms);
}

async function worker(w, indices) {
  const session = (i) => `once-${process.pid}-${spec.connection === 'new' ? i : `w${w}`}`;
  if (spec.connection === 'long') {
    const conn = await connect(session(indices[0]));
    for (const i of indices) await stream(conn, i, spec.join === 'join' ? `once-${process.pid}-${i}` : session(i));
    conn.socket.close();
  } else {
    for (const i of indices) {
      const conn = await connect(session(i));
      await stream(conn, i, session(i));
      conn.socket.close();
    }
  }
}

(async () => {
  const parallel = spec.parallel || 1;
  const lanes = Array.from({ length: parallel }, () => []);
  for (let i = 0; i < spec.streams; i++) lanes[i % parallel].push(i);
  await Promise.all(lanes.filter((l) => l.length).map((l, w) => worker(w, l)));
  let duplicates = 0;
  let missing = 0;
  const examples = [];
  for (let i = 0; i < spec.streams; i++) {
    const c = chunks.get(i) || 0;
    const d = completes.get(i) || 0;
    if (c === 0 || d === 0) missing++;
    if (c > 1 || d > 1) {
      duplicates++;
      if (examples.length < 5) examples.push({ stream: i, first_chunks: c, completes: d });
    }
  }
  process.stdout.write(JSON.stringify({ streams: spec.streams, duplicates, missing, examples }) + '\n');
  process.exit(0);
})().catch((e) => {
  process.stdout.write(JSON.stringify({ fatal: String(e && e.message ? e.message : e) }) + '\n');
  process.exit(1);
});
