"""`switchboard up` and `make run` stop everything they started on SIGTERM and SIGHUP, as on Ctrl-C.

Real processes: `up` runs in its own process group with its own ports, database, topic prefix and
local dir (pid files, logs), so it never touches the shared Kafka/Postgres or anyone else's run (its
`down` stops only infrastructure whose marker is in that local dir: none). The signal goes to the
`up` (or `make`) pid only; every service pid it started must be gone within a bound.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from switchboard import services as registry
from tests import harness
from tests.e2e.procs import PYTHON, REPO, free_port

START_BOUND_S = 150
STOP_BOUND_S = 60


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (read from /proc by pid, never by name)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def up_env(local: Path, database_url: str, prefix: str, bootstrap: str) -> dict[str, str]:
    """An environment of its own: nothing SWITCHBOARD_* inherited, fresh ports, database, prefix, local dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    ports: set[int] = set()
    while len(ports) < len(registry.PROCESSES):
        ports.add(free_port())
    for name, port in zip(registry.PROCESSES, sorted(ports)):
        env[f"SWITCHBOARD_{name.upper()}_PORT"] = str(port)
    env.update(
        SWITCHBOARD_LOCAL_DIR=str(local),
        SWITCHBOARD_DATABASE_URL=database_url,
        SWITCHBOARD_TOPIC_PREFIX=prefix,
        SWITCHBOARD_TOPIC_PARTITIONS="1",
        SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        SWITCHBOARD_DB_POOL_MIN="1",
        SWITCHBOARD_DB_POOL_MAX="4",
        SWITCHBOARD_LOG_LEVEL="WARNING",
    )
    return env


def service_pids(local: Path, names) -> dict[str, int]:
    """The pids `up` recorded for `names`, once every pid file exists."""
    pids = {}
    for name in names:
        try:
            pids[name] = int((local / f"{name}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            pass
    return pids


@pytest.mark.parametrize(
    "launcher,sig,to_group",
    [
        pytest.param("up", signal.SIGINT, False, id="up-sigint-as-ctrl-c"),
        pytest.param("up", signal.SIGTERM, False, id="up-sigterm"),
        pytest.param("up", signal.SIGHUP, False, id="up-sighup"),
        pytest.param("make", signal.SIGTERM, False, id="make-run-sigterm"),
        # A hangup reaches the terminal's whole foreground group (make and `up`): GNU make itself does not
        # pass SIGHUP on to its child, it waits for it.
        pytest.param("make", signal.SIGHUP, True, id="make-run-sighup-to-its-group"),
        # make killed outright: `up` learns it from the kernel (parent-death signal) and stops everything.
        pytest.param("make", signal.SIGKILL, False, id="make-run-sigkill"),
    ],
)
async def test_a_stop_signal_to_the_launcher_stops_every_process_it_started(infra, tmp_path, launcher, sig, to_group):
    local = tmp_path / "local"
    name = f"sb_up_{uuid.uuid4().hex[:10]}"
    database_url = harness.with_db(infra["database_url"], name)
    prefix = f"u{uuid.uuid4().hex[:8]}."
    env = up_env(local, database_url, prefix, infra["bootstrap"])
    # make run starts the demo too; `-o` keeps make from reinstalling the venv in the middle of a test.
    argv = (
        [PYTHON, "-m", "switchboard", "up", "--no-demo"]
        if launcher == "up"
        else ["make", "--no-print-directory", "-o", ".venv/.installed", "run"]
    )
    names = (*registry.PROCESSES, "demo") if launcher == "make" else tuple(registry.PROCESSES)
    log = tmp_path / "launcher.log"
    started: dict[str, int] = {}
    up_pids: list[int] = []
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_BOUND_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{launcher} exited early:\n{log.read_text(errors='replace')[-4000:]}"
            if "Switchboard is up" in log.read_text(errors="replace"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not up within {START_BOUND_S}s:\n{log.read_text(errors='replace')[-4000:]}")
        started = service_pids(local, names)
        assert set(started) == set(names), started
        up_pids = [proc.pid] if launcher == "up" else children_of(proc.pid)
        assert len(up_pids) == 1, f"make should run `switchboard up` as its own child: {up_pids}"
        assert all(alive(p) for p in (*started.values(), *up_pids))

        if to_group:  # make's group (make and `up`), never the services: they run in sessions of their own
            os.killpg(proc.pid, sig)
        else:  # the launcher's pid only
            os.kill(proc.pid, sig)

        proc.wait(timeout=STOP_BOUND_S)
        deadline = time.monotonic() + STOP_BOUND_S
        while time.monotonic() < deadline and any(alive(p) for p in (*started.values(), *up_pids)):
            time.sleep(0.2)
        left = {n: p for n, p in {**started, "switchboard up": up_pids[0]}.items() if alive(p)}
        assert left == {}, f"still running after {sig.name}: {left}\n{log.read_text(errors='replace')[-3000:]}"
        if launcher == "up":
            assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
        assert not any(local.glob("*.pid")), sorted(p.name for p in local.glob("*.pid"))
    finally:
        for pid in (*started.values(), *up_pids, *([proc.pid] if proc.poll() is None else [])):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=30)
        await harness.drop_database(infra["database_url"], name)
        await harness.delete_topics(infra["bootstrap"], prefix)
