"""Operators' pulls, releases and completions, applied in group transactions.

Every such request used to be its own transaction of eight or nine statements and a commit; with
hundreds of operators the assigner spent its time in round trips and WAL flushes. Requests now
queue here; each worker takes everything queued (up to `max_batch`) and applies it as one
transaction (`usecases.Assigner.operator_batch`), so a busy floor pays a dozen statements and one commit per
batch instead of per request. A lone request is applied at once: nothing waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg

from services.assigner import metrics
from services.assigner.usecases import Assigner, OperatorCommand, Pulled
from shared.errors import ApiError
from shared.retry import Backoff

log = logging.getLogger("switchboard.assigner.batcher")
RETRIES = 3  # a deadlock or serialization failure retries the whole batch


class OperatorBatcher:
    """Queue of operator commands and the workers that apply them in batches."""

    def __init__(self, store: Assigner, *, workers: int = 2, max_batch: int = 128):
        self.store = store
        self.workers = workers
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[OperatorCommand, asyncio.Future]] = asyncio.Queue()

    async def pull(self, operator_id: str) -> tuple[Pulled, dict | None]:
        """The operator's next chat (or its current one at capacity) with the chat view."""
        return await self._submit(OperatorCommand("pull", operator_id))

    async def release(self, operator_id: str, assignment_id: uuid.UUID) -> str:
        """Hand the assignment back to the queue; returns the chat id."""
        return await self._submit(OperatorCommand("release", operator_id, assignment_id))

    async def complete(self, operator_id: str, assignment_id: uuid.UUID) -> str:
        """Complete the chat of the operator's active assignment; returns the chat id."""
        return await self._submit(OperatorCommand("complete", operator_id, assignment_id))

    async def _submit(self, command: OperatorCommand):
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((command, future))
        return await future

    async def run(self) -> None:
        """Run the workers until cancelled; then refuse what is still queued (503, retry-safe)."""
        try:
            await asyncio.gather(*(self._worker() for _ in range(self.workers)))
        finally:
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_exception(ApiError(503, "shutting_down", "the assigner is stopping; retry",
                                                  headers={"Retry-After": "1"}))

    async def _worker(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # A caller that went away before its batch started is not applied.
            batch = [(c, f) for c, f in batch if not f.done()]
            if batch:
                await self._apply(batch)

    async def _apply(self, batch: list[tuple[OperatorCommand, asyncio.Future]]) -> None:
        metrics.OPERATOR_BATCH_COMMANDS.observe(len(batch))
        backoff = None
        for attempt in range(1, RETRIES + 1):
            try:
                results, changes = await self.store.operator_batch([c for c, _ in batch])
                break
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                if attempt < RETRIES:
                    log.warning("operator batch retried", extra={"error": repr(exc), "attempt": attempt})
                    # Jittered, so the two workers that deadlocked do not collide again in step.
                    backoff = backoff or Backoff("operator batch", base=0.005, cap=0.05)
                    await backoff.wait()
                    continue
                _fail(batch, exc)
                return
            except PER_COMMAND as exc:
                # Data the database or the event contract refuses belongs to one command: apply the
                # others without it, each alone, so only its caller gets the error (a 4xx).
                if len(batch) == 1:
                    _fail(batch, _refusal(exc))
                    return
                for item in batch:
                    await self._apply([item])
                return
            except Exception as exc:  # Postgres down and the like: every caller gets it (503 in the API)
                _fail(batch, exc)
                return
        self.store.count_outcomes(changes)
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


# Failures caused by one command's own data (class 22 and 23 errors, a model refusing a value), not by
# the database being away: a batch failing so is split, and each command retried alone.
PER_COMMAND = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError)


def _refusal(exc: Exception) -> ApiError:
    """The answer for a command that failed alone on its own data: a 4xx naming why, never a 500."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return ApiError(409, "conflict", f"the command conflicts with the chat's current state; retry ({exc})")
    return ApiError(422, "invalid_command", f"the command's data was refused: {exc}")


def _fail(batch, exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
