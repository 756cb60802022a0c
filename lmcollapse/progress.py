"""Who draws progress bars: the main process of a job, never a worker of ``--jobs``
(:mod:`lmcollapse.parallel`), whose steps reach the parent as events. A leaf module: the
training, generation and scoring code import it without importing the workers' code."""

from __future__ import annotations

import os
from typing import Any

#: set in a worker's environment: the file descriptor it writes its events to
EVENTS_FD = "LMCOLLAPSE_WORKER_EVENTS_FD"


def in_worker() -> bool:
    """True in a worker process (its progress goes to the parent as events, not bars)."""
    return EVENTS_FD in os.environ


def bars_disabled(accelerator: Any) -> bool:
    """A progress bar is drawn by the main process of a job only, never by a worker."""
    return not accelerator.is_local_main_process or in_worker()
