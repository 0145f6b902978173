"""Command-line tools the checks need: promtool (Debian's package) and compose-check (built with Go)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

from deploy.local.locks import SharedLock, machine_lock
from deploy.local.paths import REPO, cache_dir

PROMTOOL_PACKAGE = "prometheus"
COMPOSE_CHECK_SRC = REPO / "deploy" / "compose-check"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
# A second caller (the tests start the work in the background, in every pytest-xdist worker) waits for
# the build under way; apt-get runs one at a time on the machine (dpkg's own lock would fail the
# second), for promtool and Chromium alike.
_COMPOSE_CHECK_BUILD = SharedLock(lambda: cache_dir() / "locks" / "compose-check.lock")
APT = machine_lock("apt")


def _which_promtool() -> str | None:
    """promtool on PATH, or where Debian puts it."""
    found = shutil.which("promtool")
    if found:
        return found
    return "/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None


def _apt_install(package: str) -> subprocess.CompletedProcess:
    # No recommends: prometheus recommends node-exporter, which promtool does not need.
    return subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        env=APT_ENV,
        capture_output=True,
        text=True,
    )


def ensure_promtool() -> str:
    """The path of promtool, installing Debian's `prometheus` package with apt-get when it is missing."""
    found = _which_promtool()
    if found:
        return found
    with APT:
        return _install_promtool()


def _install_promtool() -> str:
    found = _which_promtool()  # installed meanwhile, by the caller we waited for
    if found:
        return found
    result = _apt_install(PROMTOOL_PACKAGE)
    if result.returncode != 0:
        # A fresh machine has no package lists yet ("Unable to locate package"); fetch them once and retry.
        subprocess.run(["apt-get", "update", "-qq"], env=APT_ENV, check=True, capture_output=True, text=True)
        result = _apt_install(PROMTOOL_PACKAGE)
    found = _which_promtool()
    if result.returncode != 0 or found is None:
        raise RuntimeError(
            f"could not install promtool (apt-get install {PROMTOOL_PACKAGE} exited {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    return found


def _go() -> str:
    """The Go toolchain (on PATH, or where the machine image puts it)."""
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if found is None:
        raise RuntimeError("the Go toolchain is needed to build deploy/compose-check and was not found")
    return found


def ensure_compose_check() -> str:
    """The path of `compose-check` (compose-go's loader, built from deploy/compose-check once per source change)."""
    with _COMPOSE_CHECK_BUILD:
        return _build_compose_check()


def _build_compose_check() -> str:
    sources = sorted(p for p in COMPOSE_CHECK_SRC.iterdir() if p.suffix in {".go", ".mod", ".sum"})
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    binary = cache_dir() / "tools" / f"compose-check-{digest}"
    if binary.exists():
        return str(binary)
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not env.get("HOME"):
        # Go's caches default to $HOME; without it (some CI runners) keep them beside the binary.
        env.setdefault("GOCACHE", str(cache_dir() / "go-build"))
        env.setdefault("GOMODCACHE", str(cache_dir() / "go-mod"))
    env["GOFLAGS"] = "-mod=readonly -modcacherw"
    partial = binary.with_suffix(".partial")
    result = subprocess.run(
        [_go(), "build", "-o", str(partial), "."], cwd=COMPOSE_CHECK_SRC, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"building deploy/compose-check failed:\n{result.stdout}{result.stderr}")
    partial.replace(binary)
    return str(binary)
