"""One request batcher: concurrent requests queue up and are applied together, each caller answered alone.

Behind ingest's coalescer (claim → publish → mark per round) and the assigner's operator batches
(one transaction per batch). A worker takes everything queued, up to `max_batch`, and applies it
with one call; a lone request is applied at once (nothing waits for a batch to fill). The apply
function returns one result per request, in order: a value, or an exception for that caller
only; if it raises, every caller of the batch gets that exception. At shutdown, whatever is still
queued, and whatever arrives after, is answered 503 `shutting_down` (safe to retry: never applied).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from shared.errors import ApiError

Request = TypeVar("Request")
Result = TypeVar("Result")
ApplyRequests = Callable[[list[Request]], Awaitable[Sequence["Result | BaseException"]]]


class Batcher(Generic[Request, Result]):
    """A queue of requests and the workers that apply them in batches of up to `max_batch`."""

    def __init__(self, apply: ApplyRequests, *, max_batch: int, workers: int = 1, stopping: str = "the service"):
        self._apply = apply
        self.max_batch = max_batch
        self.workers = workers
        self.stopping = stopping
        self._queue: asyncio.Queue[tuple[Request, asyncio.Future]] = asyncio.Queue()
        self._in_flight = 0
        self._closed = False
        self._task: asyncio.Task | None = None

    async def submit(self, request: Request) -> Result:
        """Queue the request; its own result once its batch is applied (or its own exception)."""
        if self._closed:
            raise self._shutting_down()
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, future))
        return await future

    async def run(self) -> None:
        """Run the workers until cancelled; then refuse what is still queued (503, retry-safe)."""
        try:
            await asyncio.gather(*(self._worker() for _ in range(self.workers)))
        finally:
            self._closed = True
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_exception(self._shutting_down())

    def start(self) -> None:
        """Run the workers in a task of their own (for owners without a supervised loop)."""
        self._task = asyncio.create_task(self.run(), name=f"batcher:{self.stopping}")

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Apply what is queued (bounded), then stop; later requests are answered 503."""
        if self._task is None:
            return
        deadline = asyncio.get_running_loop().time() + drain_timeout_s
        while (not self._queue.empty() or self._in_flight) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def _shutting_down(self) -> ApiError:
        return ApiError(503, "shutting_down", f"{self.stopping} is stopping; retry", headers={"Retry-After": "1"})

    async def _worker(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # A caller that went away before its batch started is not applied.
            batch = [(r, f) for r, f in batch if not f.done()]
            if not batch:
                continue
            self._in_flight += 1
            try:
                await self._answer(batch)
            finally:
                self._in_flight -= 1

    async def _answer(self, batch: list[tuple[Request, asyncio.Future]]) -> None:
        try:
            results = await self._apply([r for r, _ in batch])
        except Exception as exc:  # the whole batch failed: every caller gets it, as a lone call would
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
