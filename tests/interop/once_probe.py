#!/usr/bin/env python3
"""once_probe.py: twin of once_probe.js with python-socketio 5.x (AsyncClient).

Same JSON spec and output; see the header of tests/interop/once_probe.js.
Run: tests/interop/.venv/bin/python tests/interop/once_probe.py '<json spec>'
"""
import asyncio
import json
import os
import re
import sys

import socketio

spec = json.loads(sys.argv[1])
chunks = {}
completes = {}
FIRST = re.compile(r"^q(\d+) $")
FULL = re.compile(r"^q(\d+) ")


def bump(m, i):
    m[i] = m.get(i, 0) + 1


async def connect(session_id):
    client = socketio.AsyncClient(reconnection=False)
    waiting = {}

    @client.on("chat_chunk")
    async def on_chunk(m):
        hit = FIRST.match(m.get("chunk") or "")
        if hit:
            bump(chunks, int(hit.group(1)))

    @client.on("chat_complete")
    async def on_complete(m):
        hit = FULL.match(m.get("full_response") or "")
        if not hit:
            return
        i = int(hit.group(1))
        bump(completes, i)
        fut = waiting.pop(i, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    auth = {"session_id": session_id} if spec["join"] == "auth" else None
    await client.connect(spec["url"], transports=spec["transports"], auth=auth, wait_timeout=10)
    return client, waiting


async def step(what, i, awaitable):
    try:
        return await awaitable
    except Exception as e:
        raise RuntimeError(f"stream q{i}: {what}: {type(e).__name__} {e}") from e


async def stream(client, waiting, i, session_id):
    if spec["join"] == "join":
        await step("join ack", i, client.call("join", {"session_id": session_id}, timeout=20))
    done = asyncio.get_running_loop().create_future()
    waiting[i] = done
    ack = await step("chat_message ack", i, client.call(
        "chat_message", {"message": f"q{i} alpha beta gamma", "session_id": session_id}, timeout=20
    ))
    if not isinstance(ack, dict) or "request_id" not in ack:
        raise RuntimeError(f"stream q{i} refused: {ack}")
    await step("chat_complete", i, asyncio.wait_for(done, 20))
    await step("probe join ack", i, client.call("join", {"session_id": f"{session_id}-probe"}, timeout=20))
    await asyncio.sleep(spec["grace_ms"] / 1000)


async def worker(w, indices):
    pid = os.getpid()
    if spec["connection"] == "long":
        client, waiting = await connect(f"once-{pid}-w{w}")
        for i in indices:
            session = f"once-{pid}-{i}" if spec["join"] == "join" else f"once-{pid}-w{w}"
            await stream(client, waiting, i, session)
        await client.disconnect()
    else:
        for i in indices:
            client, waiting = await step("connect", i, connect(f"once-{pid}-{i}"))
            await stream(client, waiting, i, f"once-{pid}-{i}")
            await client.disconnect()


async def main():
    parallel = spec.get("parallel", 1)
    lanes = [[] for _ in range(parallel)]
    for i in range(spec["streams"]):
        lanes[i % parallel].append(i)
    await asyncio.gather(*(worker(w, lane) for w, lane in enumerate(lanes) if lane))
    duplicates = missing = 0
    examples = []
    for i in range(spec["streams"]):
        c, d = chunks.get(i, 0), completes.get(i, 0)
        if c == 0 or d == 0:
            missing += 1
        if c > 1 or d > 1:
            duplicates += 1
            if len(examples) < 5:
                examples.append({"stream": i, "first_chunks": c, "completes": d})
    print(json.dumps({"streams": spec["streams"], "duplicates": duplicates, "missing": missing,
                      "examples": examples}), flush=True)


try:
    asyncio.run(main())
except Exception as e:  # reported to the test as one line
    print(json.dumps({"fatal": f"{type(e).__name__}: {e}"}), flush=True)
    sys.exit(1)
