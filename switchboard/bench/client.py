"""A minimal keep-alive HTTP/1.1 client for the load generator, which shares the machine's cores with
what it measures: it does only what the bench's own requests need."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse


class HttpError(Exception):
    """The request got no HTTP answer (connection refused or lost, timeout)."""


class Conn:
    """One keep-alive connection; requests are sequential on it (one per simulated actor)."""

    def __init__(self, base: str):
        u = urlparse(base)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:
                pass
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, token: str | None = None, body: bytes | None = None, timeout: float = 30.0
    ) -> tuple[int, bytes]:
        """(status, body); reconnects once when a kept-alive connection was closed by the server."""
        for attempt in (1, 2):
            fresh = self.writer is None
            try:
                if fresh:
                    await self._open()
                return await asyncio.wait_for(self._exchange(method, path, token, body), timeout)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                await self.close()
                if fresh or attempt == 2:
                    raise HttpError(repr(exc)) from None
            except TimeoutError:
                await self.close()
                raise HttpError(f"timeout after {timeout}s") from None
        raise HttpError("unreachable")

    async def _exchange(self, method, path, token, body) -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        if body is not None:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(body) if body else 0}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(parts)
        elif length is not None:
            data = await self.reader.readexactly(length) if length else b""
        elif status in (204, 304) or method == "HEAD":
            data = b""
        else:
            data = await self.reader.read()
            close = True
        if close:
            await self.close()
        return status, data


async def http_get(base: str, path: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a connection of its own: (status, body)."""
    conn = Conn(base)
    try:
        return await conn.request("GET", path, token, timeout=timeout)
    finally:
        await conn.close()
