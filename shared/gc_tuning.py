"""The garbage collector of a service process: fewer young collections, and no full one walking startup objects.

CPython's default (700, 10, 10) runs a young collection every 700 net container allocations and a
full one every 100 of them; a full collection walks every tracked object of the process (FastStream,
pydantic, FastAPI, asyncpg: a few hundred thousand) and holds the event loop meanwhile. Measured on
the bench (docs/performance.md, "Sixteenth session"): the assigner worker ran 44 full collections of
up to 302 ms in a run, and they were most of its apply p99. So a service process:

- raises the young threshold (`SWITCHBOARD_GC_THRESHOLD0`, 20000 by default), so the churn of a
  batch's short-lived objects (freed by reference counting anyway) rarely triggers a collection;
- once started, collects once and `gc.freeze()`s what is alive: modules, models, the app, the pools
  move to the permanent generation, which no later collection walks.

Cycles are still collected, only less often. `tune` is for a service process (`switchboard run`);
test processes keep Python's defaults, since `settle` does nothing in a process that did not `tune`.
Every collection's pause is observed in `switchboard_gc_pause_seconds{generation}`.
"""

from __future__ import annotations

import gc
import time

from shared.metrics import GC_PAUSE

_tuned = False
_started = 0.0  # when the running collection started (collections never overlap)


def tune(threshold0: int) -> None:
    """Set the young threshold (0 keeps Python's) and start observing pauses; `settle` will then freeze."""
    global _tuned
    if threshold0:
        _, t1, t2 = gc.get_threshold()
        gc.set_threshold(threshold0, t1, t2)
    if _observe not in gc.callbacks:
        gc.callbacks.append(_observe)
    _tuned = True


def settle() -> None:
    """Once a tuned process has started: collect, then freeze every surviving object out of later collections."""
    if not _tuned:
        return
    gc.collect()
    gc.freeze()


def _observe(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - _started)
