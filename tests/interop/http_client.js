#!/usr/bin/env node
/*
 * http_client.js: Node's own fetch (undici) as an HTTP client of Switchyard, for the
 * Rust integration tests. Needs Node >= 18 and no package.
 *
 * Run:  node tests/interop/http_client.js '<json spec>'
 *
 * SPEC (one JSON object as the only argument)
 *   {"mode": "oversized", "url": "http://127.0.0.1:PORT/path", "bytes": 1600000,
 *    "tries": 100, "chunked": false}
 *       POSTs a JSON body of `bytes` bytes, `tries` times one after the other, as
 *       fetch does by default (Content-Length), or with "chunked": true as a
 *       ReadableStream (Transfer-Encoding: chunked, no Content-Length). Prints one
 *       line per try:
 *         {"type":"try","i":N,"status":413,"body":<the answer's JSON, or its text>}
 *         {"type":"try","i":N,"error":"EPIPE"}   (the error's code: EPIPE,
 *                                                 ECONNRESET, UND_ERR_SOCKET, ...)
 *   {"mode": "stream", "url": "...", "body": {...}, "headers": {...}}
 *       POSTs `body` as JSON (no Accept header of its own: fetch sends its default
 *       `*\/*`) and reads the answer as a browser app reads an SSE stream with fetch:
 *       response.body.getReader(), a TextDecoder, lines split on "\n", and every
 *       line starting with "data:" parsed as JSON; other lines are skipped. Prints
 *         {"type":"response","status":N,"content_type":"...","request_id":"..."}
 *         {"type":"data","data":<parsed JSON>}     one per data: line, as it arrives
 *
 * Last line: {"type":"done"} (exit 0) or {"type":"fatal","message":"..."} (exit 1).
 */
'use strict';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function errorCode(e) {
  let c = e;
  while (c && c.cause) c = c.cause;
  return (c && (c.code || c.message)) || String(e);
}

async function oversized(spec) {
  const bytes = spec.bytes;
  const prefix = '{"pad":"';
  const suffix = '"}';
  const body = Buffer.alloc(bytes, 'x');
  body.write(prefix, 0);
  body.write(suffix, bytes - suffix.length);
  for (let i = 0; i < spec.tries; i++) {
    const init = { method: 'POST', headers: { 'content-type': 'application/json' } };
    if (spec.chunked) {
      let sent = 0;
      const piece = 64 * 1024;
      init.body = new ReadableStream({
        pull(controller) {
          if (sent >= bytes) return controller.close();
          const end = Math.min(bytes, sent + piece);
          controller.enqueue(new Uint8Array(body.subarray(sent, end)));
          sent = end;
        },
      });
      init.duplex = 'half';
    } else {
      init.body = body;
    }
    try {
      const res = await fetch(spec.url, init);
      const text = await res.text();
      let parsed = text;
      try { parsed = JSON.parse(text); } catch (_) { /* keep the text */ }
      out({ type: 'try', i, status: res.status, body: parsed });
    } catch (e) {
      out({ type: 'try', i, error: errorCode(e) });
    }
  }
}

async function stream(spec) {
  const res = await fetch(spec.url, {
    method: 'POST',
    headers: Object.assign({ 'content-type': 'application/json' }, spec.headers || {}),
    body: JSON.stringify(spec.body),
  });
  out({
    type: 'response',
    status: res.status,
    content_type: res.headers.get('content-type'),
    request_id: res.headers.get('x-request-id'),
  });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  const line = (l) => {
    if (l.endsWith('\r')) l = l.slice(0, -1);
    if (l.startsWith('data:')) out({ type: 'data', data: JSON.parse(l.slice(5).trim()) });
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      line(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
    }
  }
  buffer += decoder.decode();
  if (buffer) line(buffer);
}

(async () => {
  const spec = JSON.parse(process.argv[2] || 'null');
  if (!spec || typeof spec.url !== 'string') throw new Error('spec.url (string) is required');
  if (spec.mode === 'oversized') await oversized(spec);
  else if (spec.mode === 'stream') await stream(spec);
  else throw new Error(`unknown mode ${JSON.stringify(spec.mode)}`);
  out({ type: 'done' });
})().catch((e) => {
  out({ type: 'fatal', message: String(e && e.stack ? e.stack : e) });
  process.exitCode = 1;
});
