"""How many CPU threads torch may use. On a shared machine, more intra-op threads than free cores make every
step wait for the others (a calibration step ran 16x faster with one thread on a loaded 2-core box), so the
default is the cores this process may run on, divided by the processes that share them."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None, processes: int = 1) -> int:
    """Set torch's intra-op threads to `threads`, or to available cores // processes; returns the number."""
    import torch

    n = threads or max(1, available_cores() // max(1, processes))
    torch.set_num_threads(n)
    log.debug("torch uses %d thread(s)", n)
    return n
