#!/usr/bin/env node
/*
 * Benchmark peer: Node socket.io 4.x serving the workload of Switchyard's `chat` route
 * with the script engine, over Socket.IO only (WebSocket and HTTP long-polling, the
 * socket.io defaults).
 *
 *   node server.js [--port N]        (else env PORT, else 8080; binds 127.0.0.1)
 *
 * The client emits `chat_message` {options: {chunks, chunk_bytes}, session_id?,
 * request_id?} with an ack callback. The server acks {request_id} at once, then emits
 * `chat_chunk` {chunk, session_id, timestamp} per chunk and `chat_complete`
 * {full_response, session_id, timestamp}, exactly as the bridge does (same key order,
 * session_id null when absent, timestamp an ISO-8601 UTC string with milliseconds).
 * Chunk i is S lowercase letters, letter j being 'a' + (i + j) % 26. Without usable
 * options: one chunk of 16 bytes. Over the chat route's maxima (100 000 chunks, 65 536
 * bytes): the ack is {error: {error_type: "invalid_request", message}} and nothing follows.
 */
"use strict";

const { createServer } = require("node:http");
const { randomUUID } = require("node:crypto");
const { Server } = require("socket.io");

const DEFAULT_PORT = 8080;
const DEFAULT_CHUNKS = 1;
const DEFAULT_CHUNK_BYTES = 16;
// The shipped chat route's script maxima.
const MAX_CHUNKS = 100000;
const MAX_CHUNK_BYTES = 65536;
// Like the bridge's script engine, give the event loop a turn every 128 chunks so one
// long stream does not starve the other connections.
const YIELD_EVERY = 128;
const OVER_MAXIMUM = {
  error_type: "invalid_request",
  message: `options.chunks is at most ${MAX_CHUNKS}, options.chunk_bytes at most ${MAX_CHUNK_BYTES}`,
};

const ALPHABET = "abcdefghijklmnopqrstuvwxyz";

function port() {
  const args = process.argv.slice(2);
  let given = process.env.PORT;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--port") given = args[++i];
    else if (args[i].startsWith("--port=")) given = args[i].slice(7);
    else {
      console.error(`unknown argument ${args[i]} (usage: node server.js [--port N])`);
      process.exit(2);
    }
  }
  const p = given === undefined ? DEFAULT_PORT : Number(given);
  if (!Number.isInteger(p) || p < 0 || p > 65535) {
    console.error(`bad port ${given}`);
    process.exit(2);
  }
  return p;
}

function count(value, fallback) {
  return Number.isInteger(value) && value >= 0 ? value : fallback;
}

// generated_chunk(i, len) of the script engine.
function generatedChunk(i, len) {
  const start = i % 26;
  const rotated = ALPHABET.slice(start) + ALPHABET.slice(0, start);
  return rotated.repeat(Math.ceil(len / 26)).slice(0, len);
}

// The engine side: an async generator of chunk texts.
async function* generate(chunks, chunkBytes) {
  for (let i = 0; i < chunks; i++) {
    if (i > 0 && i % YIELD_EVERY === 0) await new Promise(setImmediate);
    yield generatedChunk(i, chunkBytes);
  }
}

async function stream(socket, sessionId, chunks, chunkBytes) {
  let full = "";
  for await (const chunk of generate(chunks, chunkBytes)) {
    if (!socket.connected) return;
    full += chunk;
    socket.emit("chat_chunk", {
      chunk,
      session_id: sessionId,
      timestamp: new Date().toISOString(),
    });
  }
  socket.emit("chat_complete", {
    full_response: full,
    session_id: sessionId,
    timestamp: new Date().toISOString(),
  });
}

const httpServer = createServer();
// socket.io's defaults: both transports, the default parser, 1 MB maxHttpBufferSize,
// no per-message deflate. The client bundle is not served.
const io = new Server(httpServer, { serveClient: false });

io.on("connection", (socket) => {
  socket.on("chat_message", (payload, ack) => {
    if (typeof payload === "function") [payload, ack] = [{}, payload];
    const msg = payload !== null && typeof payload === "object" ? payload : {};
    const options = msg.options !== null && typeof msg.options === "object" ? msg.options : {};
    const chunks = count(options.chunks, DEFAULT_CHUNKS);
    const chunkBytes = count(options.chunk_bytes, DEFAULT_CHUNK_BYTES) || DEFAULT_CHUNK_BYTES;
    if (chunks > MAX_CHUNKS || chunkBytes > MAX_CHUNK_BYTES) {
      // Refused, never clamped, as the bridge does (its ack shape; no events).
      if (typeof ack === "function") ack({ error: OVER_MAXIMUM });
      return;
    }
    const requestId = typeof msg.request_id === "string" && msg.request_id ? msg.request_id : randomUUID();
    const sessionId = typeof msg.session_id === "string" ? msg.session_id : null;
    if (typeof ack === "function") ack({ request_id: requestId });
    stream(socket, sessionId, chunks, chunkBytes).catch((e) => console.error("stream failed:", e));
  });
});

httpServer.listen(port(), "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${httpServer.address().port}`);
});
