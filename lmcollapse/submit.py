"""``lmcollapse submit``: run an experiment's cells as cluster jobs through submitit.

    lmcollapse submit --config configs/shumailov2023.yaml --shards 12 \\
        --partition gpu --gpus-per-job 1 --timeout-min 720
    lmcollapse submit --config configs/quickstart.yaml --shards 2 --cluster local --wait

One Slurm job array of ``--shards`` tasks; task ``i`` runs ``lmcollapse run --config ...
--shard i/N`` (:mod:`lmcollapse.shards`) in the experiment's run directory, which every task
shares: generation 0 of a seed is built once, by the first task that needs it. submitit
(``pip install 'lmcollapse[slurm]'``) writes the sbatch files and keeps each task's log in
``<run dir>/jobs/``; ``--cluster local`` runs the tasks as local processes (a test, a
workstation), ``--cluster debug`` one after the other in this process. Without submitit the
same array is a plain sbatch script: see ``scripts/slurm_array.sh``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lmcollapse.errors import ConfigError
from lmcollapse.grid import Grid

try:  # the optional `slurm` extra
    import submitit
except ImportError:
    submitit = None

SUBMITIT_HINT = "pip install 'lmcollapse[slurm]'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", type=int, required=True,
                   help="number of jobs (array tasks); each runs every N-th (seed, cell) unit")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                   help="default: slurm where sbatch exists, else local processes")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--gpus-per-job", type=int, default=1,
                   help="GPUs per task (> 1: one process per GPU, as accelerate launch does)")
    p.add_argument("--cpus-per-job", type=int, default=8)
    p.add_argument("--mem-gb", type=int, default=64)
    p.add_argument("--timeout-min", type=int, default=24 * 60)
    p.add_argument("--parallel", type=int, default=None,
                   help="at most this many tasks run at once (slurm_array_parallelism)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm account=myproj "
                   "--slurm constraint=a100 (repeatable)")
    p.add_argument("--wait", action="store_true",
                   help="wait for every task and exit 1 if one failed")


def run_shard(config: str, overrides: list[str], index: int, count: int) -> int:
    """One array task: ``lmcollapse run --shard index/count`` in a fresh interpreter (its
    output in the task's log). With several tasks per job (``--gpus-per-job`` > 1) the
    torch.distributed variables accelerate reads are set from Slurm's, so the tasks form
    one multi-GPU run."""
    try:
        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False)
    except RuntimeError:  # not inside a submitit job (the debug executor)
        pass
    command = [sys.executable, "-m", "lmcollapse.cli", "run", "--config", config, *overrides,
               "--shard", f"{index}/{count}"]
    code = subprocess.run(command, env=os.environ.copy(), check=False).returncode
    if code:
        raise RuntimeError(f"shard {index}/{count} exited with code {code}; see its log")
    return code


class SacctOnce(logging.Filter):
    """Without Slurm accounting, submitit warns "Bypassing sacct error" on every poll while
    it waits: say once what it means, then keep quiet about it."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.said:
            return False
        self.said = True
        record.msg, record.args = ("sacct (Slurm accounting) answers nothing here, so the "
                                   "tasks' states are read from their result files as they "
                                   "finish; submitit's repeats of this are not shown"), ()
        return True


def partition_limits(partition: str | None,
                     sinfo: Any = None) -> tuple[str, int, int, int] | None:
    """What the largest node of ``partition`` (None: the default partition) offers, as
    ``sinfo`` reports it: (partition, CPUs, memory in MB, GPUs); None where ``sinfo`` is
    not here or says nothing. ``sinfo``: the command's runner (tests pass a fake)."""
    run = sinfo or (lambda cmd: subprocess.run(cmd, capture_output=True, text=True,
                                               check=False, timeout=30).stdout)
    cmd = ["sinfo", "-h", "-o", "%P|%c|%m|%G", *(["-p", partition] if partition else [])]
    try:
        out = run(cmd)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 3]
    if not partition:  # the default partition is the one sinfo marks with *
        rows = [r for r in rows if r[0].endswith("*")] or rows
    if not rows:
        return None
    name = rows[0][0].rstrip("*")

    def number(text: str) -> int:
        digits = "".join(ch for ch in text.rstrip("+") if ch.isdigit())
        return int(digits) if digits else 0

    def gpus(gres: str) -> int:  # "gpu:a100:4(S:0-1),shard:8" -> 4; "(null)" -> 0
        total = 0
        for item in gres.split(","):
            fields = item.split("(")[0].split(":")
            if fields[0] == "gpu":
                total += number(fields[-1]) if len(fields) > 1 else 1
        return total

    return (name, max(number(r[1]) for r in rows), max(number(r[2]) for r in rows),
            max(gpus(r[3]) for r in rows))


def check_request(args: argparse.Namespace, limits: tuple[str, int, int, int] | None) -> None:
    """Refuse, before submitting, a request no node of the partition can meet (Slurm would
    keep such an array pending forever, or refuse GPUs with a traceback)."""
    if limits is None:
        return
    name, cpus, mem_mb, gpus = limits
    if args.gpus_per_job > gpus:
        raise ConfigError(f"--gpus-per-job {args.gpus_per_job}: partition {name!r} has "
                          + (f"at most {gpus} GPU(s) per node" if gpus else "no GPUs")
                          + f" (sinfo); use --gpus-per-job {min(gpus, args.gpus_per_job)}"
                          + ("" if gpus else " for CPU nodes"))
    if cpus and args.cpus_per_job > cpus:
        raise ConfigError(f"--cpus-per-job {args.cpus_per_job}: partition {name!r} has at most "
                          f"{cpus} CPUs per node (sinfo); use at most {cpus}")
    if mem_mb and args.mem_gb * 1024 > mem_mb:
        raise ConfigError(f"--mem-gb {args.mem_gb}: partition {name!r} has at most "
                          f"{mem_mb // 1024} GB per node (sinfo: {mem_mb} MB); use at most "
                          f"{mem_mb // 1024}")


def submit(args: argparse.Namespace, cfg: Any) -> int:
    """Check everything, then submit the array; print the job ids (and, with ``--wait``,
    wait for them)."""
    if submitit is None:
        raise ConfigError(f"lmcollapse submit needs the 'submitit' package: {SUBMITIT_HINT}")
    units = Grid.of(cfg).units()
    if not 1 <= args.shards <= len(units):
        raise ConfigError(f"--shards: between 1 and the experiment's {len(units)} units "
                          f"(seed x cell), got {args.shards}")
    extra = {}
    for item in args.slurm:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm: {item!r} must look like key=value (an sbatch option)")
        extra[key.replace("-", "_")] = value
    folder = cfg.run_dir / "jobs"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=args.cluster)
    if executor.cluster == "slurm":
        check_request(args, partition_limits(args.partition))
    params: dict[str, Any] = dict(
        name=f"lmcollapse-{cfg.experiment}", timeout_min=args.timeout_min,
        gpus_per_node=args.gpus_per_job, tasks_per_node=max(1, args.gpus_per_job),
        cpus_per_task=max(1, args.cpus_per_job // max(1, args.gpus_per_job)),
        mem_gb=args.mem_gb)
    if executor.cluster == "slurm":
        params.update(slurm_partition=args.partition, slurm_array_parallelism=args.parallel,
                      slurm_additional_parameters=extra or None)
    elif executor.cluster == "local":
        params = dict(name=params["name"], timeout_min=args.timeout_min,
                      tasks_per_node=1)  # one process per task on a workstation
    else:
        params = {}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    n = args.shards
    # absolute paths: a task may start in another working directory than this command
    overrides = [o for o in args.overrides if not o.startswith("output_dir=")]
    overrides.append(f"output_dir={Path(cfg.output_dir).resolve()}")  # (once)
    config = str(Path(args.config).resolve())
    before = set(folder.iterdir()) if folder.is_dir() else set()
    try:
        jobs = executor.map_array(run_shard, [config] * n, [overrides] * n, list(range(n)),
                                  [n] * n)
    except submitit.core.utils.FailedJobError as err:
        for made in (set(folder.iterdir()) if folder.is_dir() else set()) - before:
            if made.is_dir() and not any(made.rglob("*")):
                made.rmdir()  # the folder of an array sbatch refused: empty
        sbatch = " ".join(str(err).split())
        raise ConfigError(f"sbatch refused the array: {sbatch[-400:]} (see --partition, "
                          "--gpus-per-job, --cpus-per-job, --mem-gb, --slurm)") from None
    print(f"submitted {n} {executor.cluster} jobs for {cfg.experiment} "
          f"({len(units)} units): {', '.join(j.job_id for j in jobs)}\n"
          f"logs: {folder}/<job id>/; report when done: lmcollapse report {cfg.run_dir}")
    if not args.wait:
        return 0
    logging.getLogger("submitit").addFilter(SacctOnce())
    failed = 0
    for i, job in enumerate(jobs):
        try:
            job.result()
        except Exception as err:  # noqa: BLE001  (a task's failure, reported per task)
            failed += 1
            print(f"shard {i}/{n} (job {job.job_id}) failed: {str(err).strip()[-500:]}",
                  file=sys.stderr)
    return 1 if failed else 0
