"""Debian's Chromium for the console's browser tests, installed when missing (needs root)."""

from __future__ import annotations

import os
import shutil
import subprocess

from deploy.local.tools import APT

ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
# Flags for a sandbox without outside network: no background fetches, no component updates.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def ensure_chromium() -> str:
    """The path of a Chromium binary, installing Debian's `chromium` package if there is none."""
    found = os.environ.get("SWITCHBOARD_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    with APT:
        return shutil.which("chromium") or _install_chromium()


def _install_chromium() -> str:
    install = ["apt-get", "install", "-y", "-qq", "chromium"]
    if subprocess.run(install, env=ENV, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=ENV, check=True, capture_output=True)
        subprocess.run(install, env=ENV, check=True, capture_output=True)
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("chromium is not installed and could not be installed with apt-get")
    return found
