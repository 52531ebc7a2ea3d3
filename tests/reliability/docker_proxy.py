"""The Docker engine's socket, relayed: killing this process is the engine going away.

The fault tests cannot restart the host's real Docker engine (other work shares it), so the
provisioner under test is given this relay as DOCKER_HOST. Killed, every connection through it
breaks at once and new ones are refused, as while dockerd restarts; the test stops the runtime
containers as a restarting engine does (they have no restart policy); started again, the engine
is back with the same state. Bytes pass through untouched, so the provisioner speaks the real
Engine API to the real engine.

    python tests/reliability/docker_proxy.py LISTEN_SOCKET [ENGINE_SOCKET]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys

REQUEST_LINE = re.compile(rb"((?:GET|HEAD|POST|PUT|DELETE) /\S* HTTP/1\.[01])\r\n")
"""Found anywhere in what a client sends (its HTTP client writes a request's headers at once):
a body that happens to hold one is counted too, which errs on the side of seeing more."""


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: bool = False) -> None:
    """Copy one direction of a connection; `requests`: print the request lines seen in it."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            if requests:
                for line in REQUEST_LINE.findall(data):
                    print(line.decode("latin-1"), flush=True)
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def relay(engine: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        engine_r, engine_w = await asyncio.open_unix_connection(engine)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pipe(client_r, engine_w, requests=True), pipe(engine_r, client_w))
    for writer in (client_w, engine_w):
        writer.close()


async def serve(listen: str, engine: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen)
    server = await asyncio.start_unix_server(lambda r, w: relay(engine, r, w), listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "/var/run/docker.sock"))
