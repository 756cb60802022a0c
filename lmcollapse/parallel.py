"""Local parallel cells: ``--jobs N`` (config ``jobs``) runs N worker processes on this
machine over the (seed, cell) units of a run.

Small models use a CPU core or a GPU poorly from one process (two threads trained the
quickstart's model 1.4x faster than one; an OPT-125m-sized cell leaves most of a large GPU
idle), while the units of a run are independent once their seed's generation 0 exists. So:

- the parent (the command the user ran) does the set-up and the claim exactly as one
  process would: every check before any work, the locks of all its units, experiment.json
  (which records ``jobs`` and the threads each worker got);
- it starts the workers (``python -m lmcollapse.parallel``) at once, so their imports
  overlap its set-up; each gets ``cpu_threads`` CPU threads (torch and BLAS; default
  ``cores // N``) and, on a GPU machine, one GPU (worker i: GPU i mod G, so N > G puts
  several cells on each GPU);
- it hands out one unit at a time: first a unit whose seed's generation 0 is built, else
  one of a seed nobody is working on (its worker builds that seed's generation 0), else
  any (its worker waits on the seed's lock while another builds it, as separate jobs do);
- each worker runs a unit exactly as one process runs it (:meth:`CollapseLoop.run_unit`),
  with every random draw seeded per step, so results are bit-identical to one process
  with the same CPU threads per cell (tested). On a CPU the thread count itself can
  change the last bits of some kernels: decoding's fused attention (so the loop decodes
  with eager attention: :func:`~lmcollapse.generate.thread_invariant_attention`) and,
  measured with a tiny OPT, LayerNorm's backward. Llama-style models (RMSNorm; the
  quickstart's and the laptop study's) gave the same bits on 1 and 2 threads, but not
  in every later check (docs/scaling-out.md); set ``cpu_threads`` to fix the threads per
  cell, and the results no longer depend on ``--jobs``.

Progress: one bar for the run (steps) and one per worker (its unit's steps, what it is
doing); the workers' log lines appear prefixed ``[worker i]``, and anything else they print
(warnings, a traceback) goes to ``<run dir>/logs/workers/``. A failing unit stops the run:
no new unit starts, the others finish the unit they are on, and the command exits with the
failing unit's message. Ctrl-C stops every worker at once; every file is written
atomically, so the same command resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import datasets
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from lmcollapse.errors import ConfigError, StepError
from lmcollapse.loop import CollapseLoop
from lmcollapse.plan import build_plan
from lmcollapse.preflight import make_accelerator, setup_logging, start_trackers
from lmcollapse.progress import EVENTS_FD
from lmcollapse.settings import ExperimentConfig, build

log = logging.getLogger(__name__)
#: seconds the parent waits for workers to stop before it kills them
STOP_WAIT_S = 10.0


# --- the plan: how many workers, with which threads and GPUs ----------------------------------


@dataclass(frozen=True)
class Plan:
    """``jobs`` workers, each with ``threads`` CPU threads and a GPU (``devices[i]``, an
    entry of ``CUDA_VISIBLE_DEVICES``) or none."""

    jobs: int
    threads: int
    devices: tuple[str | None, ...]
    #: what the plan did not give as asked (more workers than cores or units), in words
    capped: str = ""

    def describe(self) -> str:
        where = ("CPU" if self.devices[0] is None else
                 f"{len(set(self.devices))} GPU(s), {self.jobs / len(set(self.devices)):g} "
                 "per GPU")
        return f"{self.jobs} worker processes ({where}, {self.threads} CPU thread(s) each)"


def cpu_cores() -> int:
    """The CPU cores this process may use: its affinity, or inside a Slurm task its
    allocation (``SLURM_CPUS_PER_TASK``) where that is fewer (a node without task affinity
    shows a task every core)."""
    return cpu_budget()[0]


def cpu_budget() -> tuple[int, str]:
    """(cores, where the count came from), for the run's log."""
    try:
        cores, where = len(os.sched_getaffinity(0)), "CPU affinity"
    except AttributeError:  # not on Linux
        cores, where = os.cpu_count() or 1, "os.cpu_count"
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and 0 < int(slurm) < cores:
        cores, where = int(slurm), "SLURM_CPUS_PER_TASK"
    return cores, where


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as ``CUDA_VISIBLE_DEVICES`` entries."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
              if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def set_threads(threads: int) -> None:
    """This process's CPU threads: torch's and the BLAS libraries' (numpy, scipy)."""
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def make_plan(jobs: int | str, units: int, cores: int, gpus: list[str],
              cpu_threads: int | None = None) -> Plan:
    """``jobs`` (a number, or auto: one per GPU, else one per core), never more workers
    than units, nor on CPUs alone than cores (a worker past the cores only shares one; on
    GPUs a worker computes on its GPU): :attr:`Plan.capped` says what was cut;
    ``cpu_threads`` each, by default the cores divided evenly (at least one)."""
    asked = (len(gpus) or cores) if jobs == "auto" else int(jobs)
    n = max(1, min(asked, units, units if gpus else cores))
    capped = "" if n == asked else (
        f"jobs: {asked} asked, {n} started: " + ", ".join(
            why for why, limit in ((f"{units} unit(s) of (seed, cell) to run", units),
                                   (f"{cores} CPU core(s) here", cores)) if limit == n)
        + " (a worker past them would only wait)")
    devices = tuple(gpus[i % len(gpus)] for i in range(n)) if gpus else (None,) * n
    return Plan(jobs=n, threads=cpu_threads or max(1, cores // n), devices=devices,
                capped=capped)


# --- the parent ---------------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process, as the parent sees it."""

    index: int
    proc: subprocess.Popen
    events: IO[str]
    stderr_path: Path
    unit: tuple[int, str] | None = None
    ready: bool = False
    gone: bool = False
    bar: Any = None


class Failure(Exception):
    """A unit failed (``code``: 1 a step failed, 2 bad input found by a worker)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def run_parallel(loop: Any, plan: Plan) -> None:
    """Run ``loop``'s units on ``plan.jobs`` workers (``loop``: a CollapseLoop not yet
    prepared). Raises ConfigError (bad input, before any work), :class:`Failure` (a unit
    failed; the others finished theirs), KeyboardInterrupt (every worker stopped)."""
    pool = Pool(plan)  # started first: the workers import torch while the parent checks
    # SIGTERM (a cluster's time limit, `kill`) stops the workers as Ctrl-C does
    previous = (signal.signal(signal.SIGTERM, _interrupted)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        loop.prepare()  # every check, then the claim (the locks of all units)
        try:
            pool.start(loop)
            Scheduler(loop, pool).run()
        finally:
            loop.setup.release()
    except BaseException:
        pool.stop()
        raise
    finally:
        pool.close(loop.run_dir if loop.setup is not None else None)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if pool.failure is not None:
        raise pool.failure


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Pool:
    """The worker processes and the threads that read their events into one queue."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        self.tmp = Path(tempfile.mkdtemp(prefix="lmcollapse-workers-"))
        self.workers: list[Worker] = []
        self.failure: Failure | None = None
        for i, device in enumerate(plan.devices):
            self.workers.append(self._spawn(i, device))

    def _spawn(self, index: int, device: str | None) -> Worker:
        read_fd, write_fd = os.pipe()
        threads = str(self.plan.threads)
        env = {**os.environ, EVENTS_FD: str(write_fd), "LMCOLLAPSE_WORKER_INDEX": str(index),
               "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        stderr_path = self.tmp / f"worker-{index}.log"
        with open(stderr_path, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lmcollapse.parallel"], stdin=subprocess.PIPE,
                stdout=err, stderr=subprocess.STDOUT, env=env, pass_fds=(write_fd,),
                text=True, start_new_session=True)  # Ctrl-C reaches the parent only
        os.close(write_fd)
        worker = Worker(index, proc, os.fdopen(read_fd, "r"), stderr_path)
        threading.Thread(target=self._read, args=(worker,), daemon=True).start()
        return worker

    def _read(self, worker: Worker) -> None:
        for line in worker.events:
            try:
                self.events.put((worker.index, json.loads(line)))
            except json.JSONDecodeError:
                continue
        self.events.put((worker.index, None))  # end of file: the worker is gone

    def send(self, worker: Worker, message: dict[str, Any]) -> None:
        if worker.gone or worker.proc.poll() is not None:
            return
        try:
            worker.proc.stdin.write(json.dumps(message) + "\n")
            worker.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def start(self, loop: Any) -> None:
        """Tell every worker the run (the config as resolved, with the run directory)."""
        for w in self.workers:
            self.send(w, {"config": loop.cfg.to_dict()})

    def stop(self) -> None:
        """Stop every worker now (Ctrl-C, a failed set-up): SIGTERM, then SIGKILL."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()

    def close(self, run_dir: Path | None) -> None:
        """Keep what workers printed outside their log lines (warnings, tracebacks) in
        ``<run dir>/logs/workers/`` (when the run got that far), then clean up."""
        for w in self.workers:
            if w.bar is not None:
                w.bar.close()
            with contextlib.suppress(OSError):
                w.proc.stdin.close()
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=STOP_WAIT_S)
        if run_dir is not None and run_dir.is_dir():
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for w in self.workers:
                if w.stderr_path.exists() and w.stderr_path.stat().st_size:
                    dest = run_dir / "logs" / "workers" / f"{stamp}-worker-{w.index}.log"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(w.stderr_path, dest)
                    w.stderr_path = dest
        shutil.rmtree(self.tmp, ignore_errors=True)


class Scheduler:
    """Hands units to idle workers, draws the progress, stops on a failure."""

    def __init__(self, loop: Any, pool: Pool) -> None:
        self.loop, self.pool = loop, pool
        self.pending = list(loop.units)
        total = len(loop.plan)
        self.seen: set[tuple[str, str]] = set()
        self.bar = tqdm(total=total, desc=f"steps ({pool.plan.jobs} workers)", unit="step",
                        position=0)
        for w in pool.workers:
            w.bar = tqdm(total=1, desc=f"worker {w.index}: starting", position=w.index + 1,
                         bar_format="{desc:.90}{bar:10}| {n_fmt}/{total_fmt}", leave=False)

    def run(self) -> None:
        try:
            while any(not w.gone for w in self.pool.workers):
                try:
                    index, event = self.pool.events.get(timeout=1.0)
                except queue.Empty:
                    continue
                self._handle(self.pool.workers[index], event)
        finally:
            self.bar.close()
        if self.pool.failure is not None:
            return
        if self.pending:  # pragma: no cover  (a worker that ends with a unit is a failure)
            raise Failure(f"every worker stopped with {len(self.pending)} unit(s) not run")
        log.info("run finished: %s (%s, %s)", self.loop.run_dir,
                 self.loop.selection.describe(), self.pool.plan.describe())

    def _handle(self, w: Worker, event: dict[str, Any] | None) -> None:
        if event is None:
            self._gone(w)
        elif "ready" in event:
            w.ready = True
            self._next(w)
        elif "log" in event:
            level, name, message = event["log"]
            logging.getLogger(name).log(level, "[worker %d] %s", w.index, message)
        elif "event" in event:
            self._step(w, event)
        elif "done" in event:
            w.unit = None
            self._next(w)
        elif "failed" in event:
            if self.pool.failure is None:
                seed, key = w.unit if w.unit is not None else (None, None)
                where = f"seed {seed}, cell {key}: " if w.unit is not None else ""
                self.pool.failure = Failure(f"{where}{event['failed']} (worker {w.index}; "
                                            "the other workers finished their unit)",
                                            code=event.get("code", 1))
                log.error("[worker %d] %s%s; no new unit starts", w.index, where,
                          event["failed"])
            w.unit = None
            self._next(w)

    def _step(self, w: Worker, event: dict[str, Any]) -> None:
        if event["event"] == "start":
            w.bar.set_description_str(f"worker {w.index}: {event['where']}: {event['step']}",
                                      refresh=True)
            return
        w.bar.update(1)
        key = (event["dir"], event["step"])
        if key not in self.seen:
            self.seen.add(key)
            self.bar.update(1)

    def _next(self, w: Worker) -> None:
        """Give ``w`` its next unit, or tell it to stop (nothing left, or a failure)."""
        unit = self._pick() if self.pool.failure is None else None
        if unit is None:
            self.pool.send(w, {"stop": True})
            w.bar.set_description_str(f"worker {w.index}: finished", refresh=True)
            return
        self.pending.remove(unit)
        w.unit = unit
        w.bar.reset(total=len(build_plan(self.loop.grid, [unit])))
        w.bar.set_description_str(f"worker {w.index}: seed {unit[0]}, {unit[1]}", refresh=True)
        self.pool.send(w, {"unit": list(unit)})

    def _pick(self) -> tuple[int, str] | None:
        """A unit whose seed's shared part is built; else one of a seed no worker is on;
        else the first left (its worker waits while another builds the seed's part)."""
        if not self.pending:
            return None
        layout = self.loop.layout
        built = [u for u in self.pending
                 if layout.marker(layout.human(u[0]), "measure").exists()]
        busy = {w.unit[0] for w in self.pool.workers if w.unit is not None}
        fresh = [u for u in self.pending if u[0] not in busy]
        return (built or fresh or self.pending)[0]

    def _gone(self, w: Worker) -> None:
        w.gone = True
        code = w.proc.wait()
        if w.unit is not None and self.pool.failure is None:
            self.pool.failure = Failure(
                f"worker {w.index} ended (exit code {code}) while running seed {w.unit[0]}, "
                f"cell {w.unit[1]}; what it printed: {w.stderr_path}" + _tail(w.stderr_path))
            log.error("%s", self.pool.failure)
        elif not w.ready and self.pool.failure is None:
            self.pool.failure = Failure(f"worker {w.index} ended (exit code {code}) before it "
                                        f"was ready; what it printed:" + _tail(w.stderr_path))
        w.unit = None
        if self.pool.failure is not None:  # tell the idle ones to stop
            for other in self.pool.workers:
                if other.unit is None and not other.gone:
                    self.pool.send(other, {"stop": True})


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("\n  " + "\n  ".join(text)) if text else ""


# --- the worker ---------------------------------------------------------------------------------


class _EventLog(logging.Handler):
    """A worker's log records, sent to the parent as events."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.send({"log": [record.levelno, record.name, record.getMessage()]})


def worker_main() -> int:
    """A worker: import (while the parent checks), read the run from stdin, set up without
    claiming (the parent holds the locks), then run the units it is sent, one at a time,
    telling the parent every step. Exit 0 when told to stop or when stdin closes."""
    events = os.fdopen(int(os.environ[EVENTS_FD]), "w", buffering=1)
    lock = threading.Lock()
    parent = os.getppid()

    def send(message: dict[str, Any]) -> None:
        with lock:
            events.write(json.dumps(message) + "\n")

    def listener(event: dict[str, Any]) -> None:
        if os.getppid() != parent:  # the parent died: stop at the next step
            raise SystemExit(3)
        send(event)

    set_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    first = sys.stdin.readline()
    if not first:
        return 0
    cfg = build(ExperimentConfig, json.loads(first)["config"])
    root = logging.getLogger()
    root.handlers[:] = [_EventLog(send)]
    root.setLevel("WARNING")  # the parent logged the set-up already
    setup_logging(cfg.log_level, True)
    datasets.disable_progress_bars()
    acc = make_accelerator(cfg)
    loop = CollapseLoop(cfg, acc)
    try:
        loop.prepare(claim=False)
    except ConfigError as err:
        send({"failed": f"config error: {err}", "code": 2})
        return 2
    root.setLevel(cfg.log_level)
    start_trackers(acc, cfg, loop.run_dir)
    send({"ready": True})
    try:
        for line in sys.stdin:  # ends when the parent closes it (or dies)
            message = json.loads(line)
            if "stop" in message:
                break
            seed, key = message["unit"]
            try:
                loop.run_unit(seed, key, listener)
            except (StepError, ConfigError) as err:
                traceback.print_exc()
                send({"failed": str(err), "code": 2 if isinstance(err, ConfigError) else 1})
                continue
            send({"done": [seed, key]})
    finally:
        for tracker in acc.trackers:
            tracker.finish()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
