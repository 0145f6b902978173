"""Command-line tools the checks need (promtool), installed from Debian's packages when missing."""

from __future__ import annotations

import os
import shutil
import subprocess

PROMTOOL_PACKAGE = "prometheus"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


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
        env=APT_ENV, capture_output=True, text=True,
    )


def ensure_promtool() -> str:
    """The path of promtool, installing Debian's `prometheus` package with apt-get when it is missing."""
    found = _which_promtool()
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
