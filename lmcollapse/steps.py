"""How the steps of a run happen: each once (its marker), timed, told to a listener, and
under locks shared with other jobs.

A step is one resumable piece of a generation (``train``, ``generate``, ``measure``); it is
finished when its marker exists (:mod:`lmcollapse.layout`), so re-running the same command
continues at the first unfinished step and never redoes a finished one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from lmcollapse import files
from lmcollapse.errors import StepError
from lmcollapse.layout import RunLayout

log = logging.getLogger(__name__)
#: seconds between two looks at a lock another job holds
LOCK_POLL_S = 2.0


class Steps:
    """Runs a step unless its marker exists; keeps the progress bar and the timings.

    A step's marker records when it started and ended (``started``, ``finished``,
    ``elapsed_s``), ``work_s``: the seconds inside :meth:`work` blocks (training,
    generation, metric computation), and the CPU ``threads`` it ran with. ``elapsed_s -
    work_s`` is the loop's own bookkeeping (building the mix, saving and loading weights,
    writing files, checksums).

    ``listener`` (a worker process of :mod:`lmcollapse.parallel`) receives every step as
    an event: ``{"event": "start" | "done" | "skip", "dir", "step", "where"}`` (and
    ``elapsed_s`` when done); the parent draws the progress from them.
    """

    def __init__(self, acc: Accelerator, total: int,
                 listener: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.acc = acc
        self.timings: list[dict[str, Any]] = []
        self._work = 0.0
        self.listener = listener
        self.bar = tqdm(total=total, desc="steps", unit="step",
                        disable=not acc.is_local_main_process or listener is not None)

    def _tell(self, event: str, directory: Path, step: str, where: str, **more: Any) -> None:
        if self.listener is not None:
            self.listener({"event": event, "dir": str(directory), "step": step,
                           "where": where, **more})

    def run(self, directory: Path, step: str, where: str, fn: Callable[[], None]) -> None:
        marker = RunLayout.marker(directory, step)
        self.bar.set_description(f"{where}: {step}")
        if marker.exists():
            files.verify_folder(directory)  # what finished steps wrote is all still there
            self.bar.update(1)
            self._tell("skip", directory, step, where)
            return
        self._tell("start", directory, step, where)
        started, start, self._work = dt.datetime.now().isoformat(), time.perf_counter(), 0.0
        try:
            fn()
        except Exception as err:
            raise StepError(f"{where}, step {step} failed: {type(err).__name__}: {err}") from err
        self.acc.wait_for_everyone()
        elapsed = time.perf_counter() - start
        timing = {"step": step, "started": started, "finished": dt.datetime.now().isoformat(),
                  "elapsed_s": elapsed, "work_s": self._work,
                  "threads": torch.get_num_threads()}
        if self.acc.is_main_process:
            files.write_json(marker, timing)
        self.acc.wait_for_everyone()
        self.timings.append({"where": where, **timing})
        log.info("%s: %s done in %.1fs", where, step, elapsed)
        self.bar.update(1)
        self._tell("done", directory, step, where, elapsed_s=elapsed)

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """Time spent computing (train, generate, a metric), not on bookkeeping."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._work += time.perf_counter() - start

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def waiting_lock(acc: Accelerator, path: Path, what: str) -> Iterator[None]:
    """Hold the lock at ``path``, waiting (polling) while another job holds it. Every
    process of this job polls with the main one, so no collective call blocks for long."""
    lock = files.RunLock(path, what) if acc.is_main_process else None
    waited = False
    while True:
        state = [lock.try_acquire() if lock is not None else (True, "")]
        broadcast_object_list(state)
        if state[0][0]:
            break
        if not waited:
            log.info("%s: being built by another job (%s); waiting for it", what,
                     state[0][1])
            waited = True
        time.sleep(LOCK_POLL_S)
    if waited:
        log.info("%s: the other job is done with it; going on", what)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
