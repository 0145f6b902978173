"""Server-Sent Events as the bench reads them: an incremental parser (pure) and one stream on a raw
connection (the load generator shares the cores with what it measures, so no HTTP library per stream)."""

from __future__ import annotations

import asyncio
import codecs
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from switchboard.bench.client import HttpError


@dataclass
class Event:
    """One dispatched event: its type (`message` when none was named), data lines joined, id."""

    event: str
    data: str
    id: str | None = None


@dataclass
class SseParser:
    """Feed it the body's bytes as they come; it returns each complete event once and counts comments.

    The text/event-stream rules the bench needs: lines end in LF, CRLF or CR; a blank line dispatches
    the event; `:` starts a comment (sse-starlette's heartbeat is `: ping`); `data` lines join with LF;
    an event with no data line is not dispatched.
    """

    comments: int = 0
    _buf: str = ""
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by this chunk, in order."""
        text = self._buf + self._decoder.decode(chunk)
        # A CR that ends the chunk may be the first half of a CRLF: it waits for the next chunk.
        held = "\r" if text.endswith("\r") else ""
        text = text[: len(text) - len(held)].replace("\r\n", "\n").replace("\r", "\n")
        *lines, rest = text.split("\n")
        self._buf = rest + held
        out = []
        for line in lines:
            if line == "":
                if self._data:
                    out.append(Event(self._event or "message", "\n".join(self._data), self._id))
                self._event, self._data = "", []
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id":
                self._id = value
        return out


class SseStream:
    """One GET of an event stream on a connection of its own; `events()` yields (arrival time, event)."""

    def __init__(self, base: str, path: str, token: str):
        u = urlparse(base)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.path = path
        self.token = token
        self.parser = SseParser()
        self.opened_at: float | None = None  # when the 200 and its headers were read
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._chunked = False

    async def open(self, timeout: float = 30.0) -> None:
        """Send the request and read the response head; HttpError unless it is a 200 event stream."""
        try:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            head = (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n"
            )
            self.writer.write(head.encode())
            raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await self.close()
            raise HttpError(repr(exc)) from None
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        if status != 200:
            await self.close()
            raise HttpError(f"stream answered {status}")
        self._chunked = any(
            line.lower().startswith("transfer-encoding:") and "chunked" in line.lower() for line in lines[1:]
        )
        self.opened_at = time.time()

    async def chunks(self):
        """The body's bytes as they arrive (chunked transfer coding undone) until the server ends it."""
        try:
            while True:
                if self._chunked:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                    if size == 0:
                        return
                    data = await self.reader.readexactly(size + 2)
                    yield data[:-2]
                else:
                    data = await self.reader.read(65536)
                    if not data:
                        return
                    yield data
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return

    async def events(self):
        """(arrival time, event) for each event, until the stream ends."""
        async for data in self.chunks():
            now = time.time()
            for event in self.parser.feed(data):
                yield now, event

    async def close(self) -> None:
        """Close the connection (the server sees the client go)."""
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:
                pass
        self.reader = self.writer = None
