"""A service process's garbage collector: the threshold it sets, the freeze after startup, the pause metric.

Each case runs in a child interpreter: tuning and freezing are process-wide and the test process keeps
Python's defaults.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _child(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_tuned_process_raises_the_young_threshold_and_freezes_what_startup_built():
    seen = _child(
        """
        import gc, json
        from shared import gc_tuning
        before = gc.get_threshold()
        gc_tuning.tune(20000)
        startup = [[i] for i in range(1000)]  # containers alive at startup
        gc_tuning.settle()
        print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                          "oldest": len(gc.get_objects(2))}))
        """
    )
    assert seen["after"] == [20000, seen["before"][1], seen["before"][2]]
    assert seen["frozen"] >= 1000
    assert seen["oldest"] < 1000  # the startup lists are not in the generation full collections walk


def test_zero_keeps_pythons_threshold_and_an_untuned_process_never_freezes():
    seen = _child(
        """
        import gc, json
        from shared import gc_tuning
        gc_tuning.settle()  # not tuned: a test process, nothing happens
        untuned = gc.get_freeze_count()
        before = gc.get_threshold()
        gc_tuning.tune(0)
        print(json.dumps({"untuned": untuned, "same": gc.get_threshold() == before}))
        """
    )
    assert seen == {"untuned": 0, "same": True}


def test_every_collection_is_observed_by_generation():
    seen = _child(
        """
        import gc, json
        from shared import gc_tuning
        from prometheus_client import REGISTRY
        gc_tuning.tune(20000)
        gc_tuning.tune(20000)  # twice: still one callback
        gc.collect(0); gc.collect(2); gc.collect(2)
        count = lambda g: REGISTRY.get_sample_value("switchboard_gc_pause_seconds_count", {"generation": g})
        total = REGISTRY.get_sample_value("switchboard_gc_pause_seconds_sum", {"generation": "2"})
        print(json.dumps({"g0": count("0"), "g2": count("2"), "sum2": total}))
        """
    )
    assert seen["g0"] >= 1
    assert seen["g2"] == 2
    assert seen["sum2"] > 0
