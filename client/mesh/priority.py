"""CPU priorities of the processes the mesh runs: Envoy ahead of everything, a replica that
boots or reloads behind the one that serves (two cores: the batch work must not take the
CPU decisions need)."""

from __future__ import annotations

import contextlib
import os


def may_run_at(niceness: int) -> bool:
    """Whether this process may give a child ``niceness`` (root, or RLIMIT_NICE allows it)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= 20 - niceness


def renice_tree(pid: int, niceness: int) -> None:
    """``niceness`` for process ``pid`` and every process under it (a server and its Python
    stubs)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for process in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                process.nice(niceness)
