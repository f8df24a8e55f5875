#!/usr/bin/env python3
"""sio_client.py: scriptable real Socket.IO client (python-socketio 5.x
AsyncClient) for Switchyard's Rust interop tests.

Twin of sio_client.js: SAME command-line contract, same JSON Lines output.
The full contract (spec keys, steps, output lines, exit codes) is documented
at the top of tests/interop/sio_client.js; summary:

  Install deps once:  scripts/interop-setup
  Run:                tests/interop/.venv/bin/python tests/interop/sio_client.py '<json spec>'

  spec:  {"url": "http://127.0.0.1:PORT", "namespace": "/",
          "transports": ["websocket"] | ["polling"] | ["polling","websocket"],
          "auth": {...}, "query": {...}, "path": "/socket.io",
          "connect_timeout_ms": 5000, "global_timeout_ms": 60000,
          "steps": [...]}
         ("client" is JS-only and ignored here: python-socketio speaks
          protocol v5 only.)
  steps: {"emit": ev, "data": x | "args": [..], "ack": bool, "timeout_ms": n}
         {"wait_for": ev, "count": n, "timeout_ms": n}
         {"wait_any": [ev, ...], "count": n, "timeout_ms": n}
         {"sleep_ms": n}
         {"wait_stdin": true, "timeout_ms": n?}  (a JSON step on the line runs next)
         {"disconnect": true}
         {"wait_disconnect": true, "timeout_ms": n}
  output (one JSON object per line, flushed):
         connect {id} | connect_error {message, data} (exit 3) |
         event {event, data, args} | ack {event, data, args} | waiting |
         disconnect {reason} | done (exit 0) | timeout {step} (exit 2, -1 = global) |
         fatal {message} (exit 1)

Python-specific notes:
  * python-socketio answers server ack requests automatically (no arguments);
    the JS twin does the same on purpose.
  * Disconnect reasons are python-socketio's: "server disconnect",
    "client disconnect", "transport error" (null before python-socketio 5.12).
  * Every incoming event is handled in its own asyncio task (python-engineio
    does that); ordering is still arrival order because the handler prints
    before any await. A transport drop may be reported while such tasks are
    still queued, hence the short grace period before "disconnected while
    waiting" turns fatal.
  * Reconnection is disabled (AsyncClient(reconnection=False)).
  * Known quirks (see the JS header): a client-side disconnect reaches the
    server as a transport close, not a namespace disconnect; polling
    responses with more than 16 packets are rejected by python-engineio
    ("Too many packets in payload") and the client drops with reason
    "transport error".
"""
import asyncio
import base64
import json
import os
import sys
import threading
import time

GRACE_S = 0.2  # keep waiting this long for in-flight events after a drop

try:
    sys.stdout.reconfigure(encoding="utf-8")
except Exception:  # pragma: no cover
    pass

# ------------------------------------------------------------------ output --
_terminal = False  # set once a final line (done/timeout/fatal/connect_error) is out


def out(obj, final=False):
    global _terminal
    if _terminal:
        return
    if final:
        _terminal = True
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def to_json(v):
    """Make an incoming value JSON-friendly; binaries -> {"_binary": b64}."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"_binary": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): to_json(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def hard_exit(code):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        # os._exit: no interpreter shutdown, so a blocked stdin reader thread
        # or half-closed aiohttp session can never make us hang.
        os._exit(code)


def fatal_exit(message, code=1):
    out({"type": "fatal", "message": str(message)}, final=True)
    hard_exit(code)


class StepTimeout(Exception):
    pass


class Fatal(Exception):
    pass


# ------------------------------------------------------------------- spec ---
def parse_spec():
    if len(sys.argv) < 2:
        raise ValueError("usage: sio_client.py '<json spec>'")
    spec = json.loads(sys.argv[1])
    if not isinstance(spec, dict):
        raise ValueError("spec must be a JSON object")
    if not isinstance(spec.get("url"), str):
        raise ValueError("spec.url (string) is required")
    from urllib.parse import urlsplit
    u = urlsplit(spec["url"])
    if u.scheme not in ("http", "https", "ws", "wss") or not u.netloc:
        raise ValueError("Invalid URL")
    return spec


STEP_KINDS = ("emit", "wait_for", "wait_any", "sleep_ms", "wait_stdin",
              "disconnect", "wait_disconnect")


def step_kind(step):
    if not isinstance(step, dict):
        return None
    for k in STEP_KINDS:
        if k in step:
            return k
    return None


def normalise_error(data):
    """connect_error handler payload -> (message, data).

    socketio CONNECT_ERROR packets arrive as {"message": ..., "data"?: ...};
    transport failures arrive as a string (python-engineio's message) or the
    server's JSON error body."""
    if isinstance(data, dict):
        if "message" in data:
            return (None if data["message"] is None else str(data["message"]),
                    to_json(data.get("data")))
        return None, to_json(data)
    if data is None:
        return None, None
    return str(data), None


# ------------------------------------------------------------------ client --
class Runner:
    def __init__(self, spec):
        import socketio  # imported late so a bad venv gives a JSON fatal line

        self.spec = spec
        self.ns = spec.get("namespace") or "/"
        self.transports = spec.get("transports") or ["polling", "websocket"]
        ct = spec.get("connect_timeout_ms")
        self.connect_timeout = (5000 if ct is None else ct) / 1000.0
        self.steps = spec.get("steps") or []
        self.counts = {}
        self.connected = False
        self.ever_connected = False
        self.disconnected_at = None
        self.disconnect_reason = None
        self.connect_error_printed = False
        self.changed = asyncio.Event()
        self.stdin_lines = []
        self.stdin_eof = False
        self.stdin_thread = None
        self.loop = asyncio.get_running_loop()

        self.sio = socketio.AsyncClient(reconnection=False, logger=False,
                                        engineio_logger=False)
        ns = self.ns

        @self.sio.on("connect", namespace=ns)
        async def _on_connect():
            self.connected = True
            self.ever_connected = True
            out({"type": "connect", "id": self.sio.get_sid(ns)})
            self.notify()

        @self.sio.on("connect_error", namespace=ns)
        async def _on_connect_error(data=None, *_rest):
            if self.ever_connected or self.connect_error_printed:
                return
            message, edata = normalise_error(data)
            self.connect_error_printed = True
            out({"type": "connect_error", "message": message, "data": edata},
                final=True)

        @self.sio.on("disconnect", namespace=ns)
        async def _on_disconnect(reason=None):
            if not self.connected:
                return
            self.connected = False
            self.disconnected_at = time.monotonic()
            self.disconnect_reason = None if reason is None else str(reason)
            out({"type": "disconnect", "reason": self.disconnect_reason})
            self.notify()

        @self.sio.on("*", namespace=ns)
        async def _on_any(event, *args):
            # No await before out(): keeps arrival order (see module doc).
            self.counts[event] = self.counts.get(event, 0) + 1
            jargs = [to_json(a) for a in args]
            out({"type": "event", "event": event,
                 "data": jargs[0] if jargs else None, "args": jargs})
            self.notify()
            return None  # => python-socketio acks server requests with no args

    # -------------------------------------------------------------- waits --
    def notify(self):
        self.changed.set()

    async def wait_until(self, pred, timeout_s, fail_on_disconnect, what):
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if pred():
                return
            now = time.monotonic()
            slice_s = None
            if fail_on_disconnect and not self.connected and self.disconnected_at is not None:
                since = now - self.disconnected_at
                if since >= GRACE_S:
                    raise Fatal("disconnected (%s) while waiting for %s"
                                % (self.disconnect_reason, what))
                slice_s = GRACE_S - since + 0.005
            if deadline is not None:
                if now >= deadline:
                    raise StepTimeout(what)
                left = deadline - now
                slice_s = left if slice_s is None else min(slice_s, left)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), slice_s)
            except asyncio.TimeoutError:
                pass

    def _start_stdin_reader(self):
        if self.stdin_thread is not None:
            return

        def reader():
            stream = sys.stdin.buffer
            while True:
                line = stream.readline()
                if not line:
                    self.loop.call_soon_threadsafe(self._stdin_eof)
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                self.loop.call_soon_threadsafe(self._stdin_line, text)

        self.stdin_thread = threading.Thread(target=reader, daemon=True)
        self.stdin_thread.start()

    def _stdin_line(self, text):
        self.stdin_lines.append(text)
        self.notify()

    def _stdin_eof(self):
        self.stdin_eof = True
        self.notify()

    # -------------------------------------------------------------- steps --
    async def run_step(self, step, idx):
        """Run one step; return an injected step, None, or "stop"."""
        kind = step_kind(step)
        sio, ns = self.sio, self.ns
        if kind == "emit":
            event = step["emit"]
            if not self.connected:
                raise Fatal('step %d: emit "%s" while disconnected' % (idx, event))
            if isinstance(step.get("args"), list):
                args = tuple(step["args"])
            elif "data" in step:
                args = (step["data"],)
            else:
                args = ()
            if not step.get("ack"):
                await sio.emit(event, args, namespace=ns)
                return None
            acked = []

            def on_ack(*reply):
                # Printed right here so it keeps its place among incoming events.
                jargs = [to_json(a) for a in reply]
                out({"type": "ack", "event": event,
                     "data": jargs[0] if jargs else None, "args": jargs})
                acked.append(True)
                self.notify()

            await sio.emit(event, args, namespace=ns, callback=on_ack)
            await self.wait_until(lambda: bool(acked), step.get("timeout_ms", 10000) / 1000.0,
                                  True, 'ack of "%s"' % event)
            return None
        if kind in ("wait_for", "wait_any"):
            names = [step["wait_for"]] if kind == "wait_for" else step["wait_any"]
            if not isinstance(names, list):
                raise Fatal("step %d: wait_any wants an array" % idx)
            count = step.get("count", 1)
            await self.wait_until(
                lambda: sum(self.counts.get(n, 0) for n in names) >= count,
                step.get("timeout_ms", 10000) / 1000.0, True,
                "%d x %s" % (count, json.dumps(names, separators=(",", ":"))))
            return None
        if kind == "sleep_ms":
            await asyncio.sleep(step["sleep_ms"] / 1000.0)
            return None
        if kind == "wait_stdin":
            out({"type": "waiting"})
            self._start_stdin_reader()
            t = step.get("timeout_ms")
            await self.wait_until(lambda: bool(self.stdin_lines) or self.stdin_eof,
                                  None if t is None else t / 1000.0, False, "stdin")
            if not self.stdin_lines:
                raise Fatal("step %d: stdin closed while waiting for a line" % idx)
            line = self.stdin_lines.pop(0)
            try:
                injected = json.loads(line)
            except ValueError:
                injected = None  # plain line: just a signal
            return injected if step_kind(injected) else None
        if kind == "disconnect":
            if self.connected:
                await self.flush_and_disconnect()  # runs the disconnect handler
            return "stop"
        if kind == "wait_disconnect":
            await self.wait_until(lambda: not self.connected,
                                  step.get("timeout_ms", 10000) / 1000.0, False,
                                  "disconnect")
            return None
        raise Fatal("step %d: unknown step %s" % (idx, json.dumps(step, separators=(",", ":"))))

    async def connect(self):
        spec = self.spec
        url = spec["url"].rstrip("/")
        query = spec.get("query")
        if query:
            from urllib.parse import urlencode
            url += ("&" if "?" in url else "?") + urlencode(query)
        path = (spec.get("path") or "/socket.io").strip("/")
        import socketio

        try:
            await asyncio.wait_for(
                self.sio.connect(url, auth=spec.get("auth"),
                                 transports=self.transports,
                                 namespaces=[self.ns], socketio_path=path,
                                 wait_timeout=self.connect_timeout),
                self.connect_timeout)
        except asyncio.TimeoutError:
            self._connect_failed("timeout")
        except socketio.exceptions.ConnectionError as exc:
            # The connect_error handler normally printed the details already.
            self._connect_failed(str(exc))
        if not self.ever_connected:  # e.g. connect() returned without namespace
            self._connect_failed("timeout")

    async def flush_and_disconnect(self):
        """Client-side disconnect that first lets python-engineio's write loop
        send everything already queued: sio.disconnect() alone closes the
        transport before queued packets go out, so a trailing emit would be
        lost. (The namespace DISCONNECT packet that sio.disconnect() itself
        queues still loses that race: the server sees a transport close. That
        is real python-socketio behaviour and is left alone.)"""
        await self.drain()
        await self.sio.disconnect()

    async def drain(self, timeout_s=2.0):
        queue = getattr(self.sio.eio, "queue", None)
        if queue is None or not hasattr(queue, "join"):
            return
        try:
            await asyncio.wait_for(queue.join(), timeout_s)
        except asyncio.TimeoutError:
            pass

    def _connect_failed(self, message):
        if not self.connect_error_printed:
            self.connect_error_printed = True
            out({"type": "connect_error", "message": message, "data": None}, final=True)
        raise ConnectFailed()

    async def run(self):
        await self.connect()
        i = 0
        try:
            while i < len(self.steps):
                step = self.steps[i]
                stop = False
                while step is not None:
                    nxt = await self.run_step(step, i)
                    if nxt == "stop":
                        stop = True
                        break
                    step = nxt
                if stop:
                    break
                i += 1
        except StepTimeout:
            out({"type": "timeout", "step": i}, final=True)
            return 2
        except Fatal as exc:
            out({"type": "fatal", "message": str(exc)}, final=True)
            return 1
        if self.connected:
            await self.flush_and_disconnect()  # prints the disconnect line first
        out({"type": "done"}, final=True)
        return 0

    async def close_quietly(self):
        """Best-effort clean close after a final line (output is muted)."""
        try:
            if self.sio.connected or self.sio.eio.state == "connected":
                await asyncio.wait_for(self.flush_and_disconnect(), 1.5)
        except BaseException:
            pass


class ConnectFailed(Exception):
    pass


async def amain(spec):
    gt = spec.get("global_timeout_ms")
    global_timeout = (60000 if gt is None else gt) / 1000.0
    runner = Runner(spec)
    task = asyncio.ensure_future(runner.run())
    try:
        code = await asyncio.wait_for(asyncio.shield(task), global_timeout)
    except asyncio.TimeoutError:
        task.cancel()
        out({"type": "timeout", "step": -1}, final=True)
        code = 2
    except ConnectFailed:
        code = 3
    await runner.close_quietly()
    hard_exit(code)  # from inside the loop: skip asyncio.run()'s task teardown


def main():
    try:
        spec = parse_spec()
    except Exception as exc:
        fatal_exit("bad spec: %s" % exc)
        return
    try:
        asyncio.run(amain(spec))  # exits the process itself
    except BaseException as exc:  # anything unexpected: report, never hang
        import traceback
        traceback.print_exc(file=sys.stderr)
        fatal_exit("%s: %s" % (type(exc).__name__, exc))
    hard_exit(1)


if __name__ == "__main__":
    main()
