"""Benchmark peer: python-socketio 5.x (ASGI) under uvicorn, serving the workload of
Switchyard's `chat` route with the script engine, over Socket.IO only (WebSocket and HTTP
long-polling, python-socketio's defaults).

    .venv/bin/python python/sio_server.py [--port N]   (else env PORT, else 8080)

The client emits `chat_message` {options: {chunks, chunk_bytes}, session_id?,
request_id?} with an ack. The handler's return value is the ack, {request_id}; the stream
runs as a background task, so the ack goes out first, then `chat_chunk`
{chunk, session_id, timestamp} per chunk and `chat_complete`
{full_response, session_id, timestamp}, exactly as the bridge emits them.
"""

import asyncio
from datetime import datetime, timezone

import socketio

from workload import OVER_MAXIMUM, YIELD_EVERY, generated_chunk, plan, port_from_args, serve

# python-socketio's defaults: both transports, the stdlib json module, 1 MB
# max_http_buffer_size, no logging.
sio = socketio.AsyncServer(async_mode="asgi")
app = socketio.ASGIApp(sio)


def now() -> str:
    """ISO-8601 UTC with milliseconds, as the bridge's `$.now`."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@sio.on("chat_message")
async def chat_message(sid, data=None):
    planned = plan(data)
    if planned is None:
        return {"error": OVER_MAXIMUM}
    chunks, chunk_bytes, request_id = planned
    session_id = data.get("session_id") if isinstance(data, dict) else None
    if not isinstance(session_id, str):
        session_id = None
    sio.start_background_task(stream, sid, session_id, chunks, chunk_bytes)
    return {"request_id": request_id}


async def stream(sid: str, session_id, chunks: int, chunk_bytes: int) -> None:
    parts = []
    for i in range(chunks):
        if i and i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        chunk = generated_chunk(i, chunk_bytes)
        parts.append(chunk)
        await sio.emit(
            "chat_chunk",
            {"chunk": chunk, "session_id": session_id, "timestamp": now()},
            to=sid,
        )
    await sio.emit(
        "chat_complete",
        {"full_response": "".join(parts), "session_id": session_id, "timestamp": now()},
        to=sid,
    )


if __name__ == "__main__":
    serve(app, port_from_args("python-socketio benchmark peer"), ws="auto")
