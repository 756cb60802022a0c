"""Deterministic kill points, for testing that a run killed anywhere loses nothing.

``LMCOLLAPSE_KILL_AT=<point>[:<n>]`` makes the process SIGKILL itself the ``n``-th time
(default 1) it reaches ``<point>``: ``train_step`` (after an optimizer step), ``generate_batch``
(after a batch of continuations), ``measure_metric`` (after a metric of a row) or
``atomic_write`` (a file written to its temp name, not yet renamed). A suffix
``@<i>`` limits it to worker ``i`` of a ``--jobs`` run (:mod:`lmcollapse.parallel`). Unset,
a kill point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("train_step", "generate_batch", "measure_metric", "atomic_write")
_seen: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process here if ``LMCOLLAPSE_KILL_AT`` names this point and count."""
    target = os.environ.get("LMCOLLAPSE_KILL_AT")
    if not target:
        return
    target, _, worker = target.partition("@")
    if worker and os.environ.get("LMCOLLAPSE_WORKER_INDEX") != worker:
        return
    point, _, count = target.partition(":")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
