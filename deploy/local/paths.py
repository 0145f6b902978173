"""Where local infrastructure keeps its state: `.local/` in the checkout unless overridden."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FILES = Path(__file__).resolve().parent / "files"


def local_dir() -> Path:
    """Root of local state (`SWITCHBOARD_LOCAL_DIR`, default `<repo>/.local`)."""
    path = Path(os.environ.get("SWITCHBOARD_LOCAL_DIR", REPO / ".local"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Downloaded artifacts (`SWITCHBOARD_CACHE_DIR`, default `<repo>/.cache`)."""
    path = Path(os.environ.get("SWITCHBOARD_CACHE_DIR", REPO / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
