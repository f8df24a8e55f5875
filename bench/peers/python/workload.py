"""What both Python peers share: the script engine's workload and the peers' start-up.

Chunk i is `generated_chunk(i, S)`: S lowercase letters, letter j being 'a' + (i + j) % 26.
A request without usable `options` gets one chunk of 16 bytes; an option over the shipped
chat route's maxima is refused, as the bridge refuses it.
"""

import argparse
import os
import uuid
from string import ascii_lowercase

import uvicorn

DEFAULT_PORT = 8080
DEFAULT_CHUNKS = 1
DEFAULT_CHUNK_BYTES = 16
# The shipped chat route's script maxima.
MAX_CHUNKS = 100_000
MAX_CHUNK_BYTES = 65_536
# Like the bridge's script engine, hand the loop over every 128 chunks so one long stream
# does not starve the other connections.
YIELD_EVERY = 128


def generated_chunk(i: int, length: int) -> str:
    start = i % 26
    rotated = ascii_lowercase[start:] + ascii_lowercase[:start]
    return (rotated * (length // 26 + 1))[:length]


OVER_MAXIMUM = {
    "error_type": "invalid_request",
    "message": f"options.chunks is at most {MAX_CHUNKS}, options.chunk_bytes at most {MAX_CHUNK_BYTES}",
}


def _count(value, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default


def plan(payload) -> tuple[int, int, str] | None:
    """(chunks, chunk_bytes, request_id) of a request payload, whatever its shape; None
    when an option is over its maximum."""
    msg = payload if isinstance(payload, dict) else {}
    options = msg.get("options")
    options = options if isinstance(options, dict) else {}
    chunks = _count(options.get("chunks"), DEFAULT_CHUNKS)
    chunk_bytes = _count(options.get("chunk_bytes"), DEFAULT_CHUNK_BYTES) or DEFAULT_CHUNK_BYTES
    if chunks > MAX_CHUNKS or chunk_bytes > MAX_CHUNK_BYTES:
        return None
    request_id = msg.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        request_id = str(uuid.uuid4())
    return chunks, chunk_bytes, request_id


def port_from_args(description: str) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", DEFAULT_PORT)),
        help="port on 127.0.0.1 (default: env PORT, else 8080)",
    )
    return parser.parse_args().port


class _Server(uvicorn.Server):
    """uvicorn's server, saying `listening on HOST:PORT` once its socket accepts."""

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        port = self.servers[0].sockets[0].getsockname()[1]
        print(f"listening on {self.config.host}:{port}", flush=True)


def serve(app, port: int, ws: str) -> None:
    """One uvicorn worker on its fastest stack: uvloop, httptools, no access log.

    `ws`: uvicorn's WebSocket implementation ("auto": websockets' sans-I/O protocol when
    the websockets package is installed; "none" for an HTTP-only app).
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws=ws,
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    _Server(config).run()
