"""CPU time and peak memory of the processes the report shows, and which process listens on a port."""

from __future__ import annotations

from pathlib import Path

import psutil


def listener_pid(port: int) -> int | None:
    """The pid listening on a local TCP port (IPv4 or IPv6), or None."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


def pid_in_file(path: Path, first_line: bool = False) -> int | None:
    """The live process whose pid a pid file holds (deploy/local's, or the first line of Postgres's
    postmaster.pid), or None: no file, no number, or no such process (a stale file)."""
    try:
        text = path.read_text()
        pid = int((text.splitlines() or [""])[0] if first_line else text.strip())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def kafka_pid(port: int) -> int | None:
    """The local Kafka broker on `port`: the pid file `switchboard infra up` wrote (deploy/local), else
    the process listening on the port (a broker started some other way)."""
    from deploy.local.paths import local_dir

    return pid_in_file(local_dir() / f"kafka-{port}" / "kafka.pid") or listener_pid(port)


def postgres_pid(data_directory: str | None, port: int) -> int | None:
    """The postmaster: the first line of `postmaster.pid` in the server's data directory (`SHOW
    data_directory`), else the process listening on the port. Every session is its child."""
    found = pid_in_file(Path(data_directory) / "postmaster.pid", first_line=True) if data_directory else None
    return found or listener_pid(port)


def peak_rss_kb(pid: int) -> int | None:
    """The kernel's high-water mark of a process's resident memory (VmHWM), in kB.

    psutil offers the current RSS only: the peak is a field of /proc/<pid>/status it does not read
    on Linux (giampaolo/psutil#383). A sampled maximum of the current RSS would miss short peaks.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, all cores.

    Busy excludes idle, I/O wait and steal: steal is time the hypervisor gave to other guests while
    this one wanted to run.
    """
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq, t.steal


def cpu_seconds(proc: psutil.Process, reaped_children: bool = False) -> float:
    """User + system CPU seconds of a process (plus those of its children it waited for)."""
    times = proc.cpu_times()
    return times.user + times.system + ((times.children_user + times.children_system) if reaped_children else 0.0)


class Watched:
    """The processes whose CPU and memory the report shows."""

    def __init__(self):
        self.pids: dict[str, int] = {}
        self.postgres_pid: int | None = None
        self._procs: dict[int, psutil.Process] = {}

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def _cpu_s(self, pid: int, reaped_children: bool = False) -> float | None:
        try:
            return cpu_seconds(self._proc(pid), reaped_children)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each watched process, all Postgres sessions, and the machine."""
        out = {}
        for name, pid in self.pids.items():
            v = self._cpu_s(pid)
            if v is not None:
                out[name] = v
        if self.postgres_pid:
            # Sessions come and go: a backend that exited is counted in the postmaster's reaped
            # children time, so the total only grows (a bare sum over live pids can go down).
            total = self._cpu_s(self.postgres_pid, reaped_children=True) or 0.0
            try:
                sessions = self._proc(self.postgres_pid).children()
            except psutil.Error:
                sessions = []
            for session in sessions:
                try:
                    total += cpu_seconds(session)
                except psutil.Error:
                    continue
            out["postgres (all sessions)"] = total
        busy, steal = machine_cpu_s()
        out["machine (all processes)"] = busy
        out["machine steal (other VMs)"] = steal
        return out

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak resident memory of each watched process, in MB."""
        out = {}
        for name, pid in self.pids.items():
            kb = peak_rss_kb(pid)
            if kb is not None:
                out[name] = round(kb / 1024, 1)
        return out
