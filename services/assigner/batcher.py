"""Operators' pulls, releases and completions, applied in group transactions.

Every such request used to be its own transaction of eight or nine statements and a commit; with
hundreds of operators the assigner spent its time in round trips and WAL flushes. Requests now
queue in the shared batcher (shared.batcher); each worker takes everything queued (up to
`max_batch`) and applies it here as one transaction (`usecases.Assigner.operator_batch`), so a busy floor pays
a dozen statements and one commit per batch instead of per request. A lone request is applied at
once: nothing waits for a batch to fill.
"""

from __future__ import annotations

import logging
import uuid

import asyncpg

from services.assigner import metrics
from services.assigner.usecases import Assigner, OperatorCommand, Pulled
from shared.batcher import Batcher
from shared.errors import ApiError
from shared.retry import Backoff

log = logging.getLogger("switchboard.assigner.batcher")
RETRIES = 3  # a deadlock or serialization failure retries the whole batch


class OperatorBatcher:
    """Operator commands, applied in batches by the shared batcher (shared.batcher)."""

    def __init__(self, store: Assigner, *, workers: int = 2, max_batch: int = 128):
        self.store = store
        self._batcher: Batcher[OperatorCommand, object] = Batcher(
            self._apply, max_batch=max_batch, workers=workers, stopping="the assigner"
        )

    @property
    def workers(self) -> int:
        """How many batches may be applied at once."""
        return self._batcher.workers

    @property
    def max_batch(self) -> int:
        """The most commands one batch takes."""
        return self._batcher.max_batch

    async def pull(self, operator_id: str) -> tuple[Pulled, dict | None]:
        """The operator's next chat (or its current one at capacity) with the chat view."""
        return await self._batcher.submit(OperatorCommand("pull", operator_id))  # type: ignore[return-value]

    async def release(self, operator_id: str, assignment_id: uuid.UUID) -> str:
        """Hand the assignment back to the queue; returns the chat id."""
        return await self._batcher.submit(OperatorCommand("release", operator_id, assignment_id))  # type: ignore[return-value]

    async def complete(self, operator_id: str, assignment_id: uuid.UUID) -> str:
        """Complete the chat of the operator's active assignment; returns the chat id."""
        return await self._batcher.submit(OperatorCommand("complete", operator_id, assignment_id))  # type: ignore[return-value]

    async def run(self) -> None:
        """Run the workers until cancelled; then refuse what is still queued (503, retry-safe)."""
        await self._batcher.run()

    async def _apply(self, commands: list[OperatorCommand]) -> list:
        """One transaction for the batch; one result (or the caller's own exception) per command."""
        metrics.OPERATOR_BATCH_COMMANDS.observe(len(commands))
        backoff = None
        for attempt in range(1, RETRIES + 1):
            try:
                results, changes = await self.store.operator_batch(commands)
                break
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                if attempt < RETRIES:
                    log.warning("operator batch retried", extra={"error": repr(exc), "attempt": attempt})
                    # Jittered, so the two workers that deadlocked do not collide again in step.
                    backoff = backoff or Backoff("operator batch", base=0.005, cap=0.05)
                    await backoff.wait()
                    continue
                raise
            except PER_COMMAND as exc:
                # Data the database or the event contract refuses belongs to one command: apply the
                # others without it, each alone, so only its caller gets the error (a 4xx).
                if len(commands) == 1:
                    return [_refusal(exc)]
                return [(await self._apply_alone(c)) for c in commands]
            # Postgres down and the like propagate: every caller gets it (503 in the API).
        self.store.count_outcomes(changes)
        return results

    async def _apply_alone(self, command: OperatorCommand):
        try:
            return (await self._apply([command]))[0]
        except Exception as exc:
            return exc


# Failures caused by one command's own data (class 22 and 23 errors, a model refusing a value), not by
# the database being away: a batch failing so is split, and each command retried alone.
PER_COMMAND = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError)


def _refusal(exc: Exception) -> ApiError:
    """The answer for a command that failed alone on its own data: a 4xx naming why, never a 500."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return ApiError(409, "conflict", f"the command conflicts with the chat's current state; retry ({exc})")
    return ApiError(422, "invalid_command", f"the command's data was refused: {exc}")
