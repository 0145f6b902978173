"""Services served over real HTTP on loopback ports, inside the test's event loop (for browsers)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn

from switchboard import services as registry


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def serving(name: str, settings, port: int):
    """Run one service's app with uvicorn on 127.0.0.1:port until the block ends."""
    app = registry.module(name).create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(600):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"{name} did not start on port {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
