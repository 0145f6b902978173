"""Fault injection for crash tests: a process SIGKILLs itself at a named point of its work.

Off unless the environment asks for it, and then only in the process that got the variables:

- `SWITCHBOARD_FAULT_POINT`: the point to die at, one of `POINTS` (unset or empty: no fault).
- `SWITCHBOARD_FAULT_HIT`: die on the Nth time the point is reached (default 1).

`reached(name)` is called where a crash is hardest to get right: `outbox_after_ack` (the relay's
records are acknowledged by Kafka, their outbox rows are not deleted yet) and
`consumer_after_apply` (a consumer's batch is committed in Postgres, its Kafka offsets are not).
A crash test restarts a process with these set to land a SIGKILL exactly inside such a window,
which a kill at a fixed time hits only by luck. Unset, `reached` is a string comparison.
"""

from __future__ import annotations

import os
import signal
import sys

POINTS = frozenset({"outbox_after_ack", "consumer_after_apply"})

_point = os.environ.get("SWITCHBOARD_FAULT_POINT", "")
_hit = int(os.environ.get("SWITCHBOARD_FAULT_HIT", "1") or "1")
_count = 0
if _point and _point not in POINTS:
    raise RuntimeError(f"SWITCHBOARD_FAULT_POINT={_point!r} is not one of {', '.join(sorted(POINTS))}")


def reached(name: str) -> None:
    """Die here (SIGKILL, no cleanup, as a power cut) if this is the armed point's Nth arrival."""
    global _count
    if name != _point:
        return
    _count += 1
    if _count >= _hit:
        # One line a test can find in the process's log; the kill itself leaves no other trace.
        print(f"fault injected: SIGKILL at {name} (arrival {_count})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
