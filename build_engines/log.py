"""What ``make engines`` prints: timestamped steps, paths shown from the checkout."""

from __future__ import annotations

import time
from pathlib import Path

from python_backend.paths import ROOT


def log(message: str) -> None:
    print(f"[engines {time.strftime('%H:%M:%S')}] {message}", flush=True)


def shown(path: Path) -> str:
    """A path relative to the project when inside it, for short log lines."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
