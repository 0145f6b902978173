"""Services served over real HTTP on loopback ports, inside the test's event loop (for browsers)."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from switchboard import services as registry
from switchboard.bench.processes import free_port as free_port  # one copy, re-exported for the browser tests


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
