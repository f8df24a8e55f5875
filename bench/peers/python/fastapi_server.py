"""Benchmark peer: FastAPI + StreamingResponse under uvicorn, serving the workload of
Switchyard's `chat` route with the script engine, as NDJSON or SSE
(`Accept: text/event-stream`), with the bridge's exact body bytes and headers.

    .venv/bin/python python/fastapi_server.py [--port N]   (else env PORT, else 8080)

POST /api/ai/chat/unified {options: {chunks, chunk_bytes}, request_id?}: status_update
(started) with {request_id, route: "chat"}, N chunks, completion {status, output}, end
{reason: "completed"}; contiguous seq from 0. Events are encoded with orjson, one body
chunk per event, from an async generator.
"""

import asyncio

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from workload import OVER_MAXIMUM, YIELD_EVERY, generated_chunk, plan, port_from_args, serve

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


def ndjson(seq: int, event: str, data: dict) -> bytes:
    return orjson.dumps({"event": event, "seq": seq, "data": data}) + b"\n"


def sse(seq: int, event: str, data: dict) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event.encode(), orjson.dumps(data))


async def events(encode, request_id: str, chunks: int, chunk_bytes: int):
    yield encode(
        0,
        "status_update",
        {"status": "started", "metadata": {"request_id": request_id, "route": "chat"}},
    )
    parts = []
    for i in range(chunks):
        if i and i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        text = generated_chunk(i, chunk_bytes)
        parts.append(text)
        yield encode(i + 1, "chunk", {"text": text})
    yield encode(chunks + 1, "completion", {"status": "complete", "output": "".join(parts)})
    yield encode(chunks + 2, "end", {"reason": "completed"})


@app.post("/api/ai/chat/unified")
async def chat(request: Request):
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        payload = None
    planned = plan(payload)
    if planned is None:
        return JSONResponse({"error": OVER_MAXIMUM}, status_code=400)
    chunks, chunk_bytes, request_id = planned
    wants_sse = "text/event-stream" in request.headers.get("accept", "")
    headers = {
        # Set as a header, not media_type, so Starlette adds no "; charset=utf-8".
        "content-type": "text/event-stream" if wants_sse else "application/x-ndjson",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
        "x-request-id": request_id,
    }
    body = events(sse if wants_sse else ndjson, request_id, chunks, chunk_bytes)
    return StreamingResponse(body, headers=headers)


if __name__ == "__main__":
    serve(app, port_from_args("FastAPI streaming benchmark peer"), ws="none")
