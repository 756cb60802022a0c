"""Command line: ``lmcollapse run|validate|cells|plan|report|compare|plan-seeds|claims|export|
leaderboard|site|dataset|bench``.

    lmcollapse run --config configs/quickstart.yaml [key.sub=value ...] [--new-run]
    lmcollapse run --config configs/shumailov2023.yaml --shard 3/8   # one job of eight
    lmcollapse cells --config configs/shumailov2023.yaml --shard 3/8 # what that job runs
    lmcollapse plan --config configs/shumailov2023.yaml --shard 3/8  # every step it takes
    lmcollapse submit --config configs/shumailov2023.yaml --shards 8 --partition gpu
    lmcollapse validate --config configs/shumailov2023.yaml
    lmcollapse report runs/quickstart --metric perplexity
    lmcollapse compare runs/quickstart --pair mix-0.1 replace --metrics perplexity
    lmcollapse plan-seeds runs/quickstart --pair mix-0.1 replace --metrics perplexity
    lmcollapse claims runs/wikitext-controls     # configs/wikitext-controls.claims.yaml
    lmcollapse export runs/quickstart            # runs/quickstart/results.json
    lmcollapse leaderboard a/results.json b/results.json --out leaderboard
    lmcollapse site docs/results/*.json.gz --out site        # index.html + a page per protocol
    lmcollapse dataset docs/results/*.json.gz --out hf        # datasets.load_dataset("hf")
    lmcollapse bench --config configs/quickstart.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

import yaml

from lmcollapse import submit
from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError, StepError
from lmcollapse.grid import Grid
from lmcollapse.layout import STEP_KINDS
from lmcollapse.plan import Step, build_plan
from lmcollapse.shards import Selection

# torch, transformers and the loop are imported by the commands that use them, so that
# `lmcollapse report` and `lmcollapse --help` start in a second, not in ten; the report's
# statistics and plotting (statsmodels, scipy.stats, matplotlib) likewise, so that `run`
# and its workers do not read them from disk (tens of seconds on a cold file cache)

log = logging.getLogger("lmcollapse")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """One parser; every subcommand is listed by ``lmcollapse --help``. The options of
    ``report``, ``compare``, ``plan-seeds`` and ``bench`` come from their modules, which
    import heavy libraries: with ``command`` given, only that subcommand's are added (the
    one being run); None adds them all."""
    p = argparse.ArgumentParser(prog="lmcollapse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume an experiment")
    val = sub.add_parser("validate", help="load and validate a config, print it resolved")
    cel = sub.add_parser("cells", help="list the (seed, cell) units a selection picks, one "
                         "per line (what `run` with the same options runs)")
    stp = sub.add_parser("plan", help="list every step a run (or a selection of it) takes, "
                         "in order, without running anything")
    sbm = sub.add_parser("submit", help="run the experiment as a job array on a cluster "
                         "(submitit: Slurm, or local processes)")
    rep = sub.add_parser("report", help="leaderboard, per-generation tables and plots from "
                         "run directories (reads JSON and parquet only)")
    cmp = sub.add_parser("compare", help="paired tests over seeds of chosen cells (the "
                         "report's tests and correction): the numbers behind a claim")
    pln = sub.add_parser("plan-seeds", help="the seeds a paired test needs to call the "
                         "observed gap between chosen cells")
    clm = sub.add_parser("claims", help="test the claims a study declared "
                         "(configs/<experiment>.claims.yaml): one verdict per claim")
    exq = sub.add_parser("export", help="a finished run as one results file (JSON: its "
                         "protocol and hash, every row's values, digests, versions, hardware)")
    exq.add_argument("run", help="run directory (runs/<experiment>)")
    exq.add_argument("-o", "--out", help="the file to write (default: RUN/results.json)")
    lbd = sub.add_parser("leaderboard", help="one ranked table from the results files of one "
                         "protocol (different runs, machines and people)")
    sit = sub.add_parser("site", help="a static site of results files: an index of "
                         "protocols and each protocol's leaderboard (no server, works offline)")
    dst = sub.add_parser("dataset", help="results files as a Hugging Face datasets folder "
                         "(parquet and a dataset card; datasets.load_dataset reads it)")
    for q in (sit, dst):
        q.add_argument("files", nargs="+", help="results files (`lmcollapse export RUN`)")
        q.add_argument("--out", required=True, help="the folder to write")
    sit.add_argument("--no-plots", action="store_true", help="leave the plots out")
    ben = sub.add_parser("bench", help="one JSON record: generation and training "
                         "throughput against naive baselines, where a generation's time goes, "
                         "peak memory")
    for q in (run, val, cel, stp, sbm, ben):
        q.add_argument("--config", required=True, help="experiment YAML file")
        q.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    for q in (run, cel, stp):
        g = q.add_argument_group("selecting cells (every job of an experiment: same config, "
                                 "same run directory)")
        g.add_argument("--policies", help="comma-separated policy labels")
        g.add_argument("--seeds", help="comma-separated seeds of the config")
        g.add_argument("--cells", help="comma-separated cell keys or globs "
                       "('replace@temperature=*')")
        g.add_argument("--shard", metavar="I/N", help="job I of N: every N-th selected "
                       "(seed, cell) unit, from the I-th (0-based)")
    run.add_argument("--new-run", action="store_true",
                     help="start a fresh run directory instead of resuming an existing one")
    run.add_argument("--smoke", action="store_true",
                     help="rehearse instead of running: every cell on the first seed, "
                     "generations 0-1, a handful of blocks, steps and samples, in a temporary "
                     "directory; print each step's pass or failure and a forecast of the full "
                     "run's time, memory and disk")
    run.add_argument("--jobs", metavar="N", help="worker processes running (seed, cell) units "
                     "side by side on this machine, the CPU threads or GPUs divided between "
                     "them: a number or auto (one per GPU, else per core); default: the "
                     "config's `jobs` (1)")
    if command in (None, "report"):
        from lmcollapse.report import write as report

        report.add_arguments(rep)
    if command in (None, "compare", "plan-seeds"):
        from lmcollapse.report import compare

        compare.add_arguments(cmp)
        compare.add_arguments(pln, plan=True)
    if command in (None, "claims"):
        from lmcollapse.report import claims

        claims.add_arguments(clm)
    if command in (None, "leaderboard"):
        from lmcollapse.report import leaderboard

        leaderboard.add_arguments(lbd)
    if command in (None, "bench"):
        from lmcollapse import bench

        bench.add_arguments(ben)
    submit.add_arguments(sbm)
    return p


def run_main(argv: list[str] | None = None) -> int:
    """Entry point shared by ``lmcollapse`` and ``scripts/run_loop.py``; returns an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(command).parse_args(argv)
    if args.command == "report":
        from lmcollapse.report import write as report

        return report.report_command(args)
    if args.command in ("compare", "plan-seeds"):
        from lmcollapse.report import compare

        return compare.command(args, plan=args.command == "plan-seeds")
    if args.command == "claims":
        from lmcollapse.report import claims

        return claims.command(args)
    if args.command == "leaderboard":
        from lmcollapse.report import leaderboard

        return leaderboard.command(args)
    if args.command == "export":
        from lmcollapse.publish import export

        return export.command(args)
    if args.command == "site":
        from lmcollapse.report import site

        return site.command(args)
    if args.command == "dataset":
        from lmcollapse.publish import dataset

        return dataset.command(args)
    from lmcollapse.models import check_pretrained
    from lmcollapse.preflight import make_accelerator

    overrides = list(getattr(args, "overrides", []))
    if getattr(args, "jobs", None) is not None:  # checked (and named) as the config's `jobs`
        overrides.append(f"jobs={args.jobs}")
    try:
        cfg = load_config(args.config, overrides)
        if args.command == "validate":  # `run` checks this in its preflight
            check_pretrained(cfg.model)  # a missing optional extra, named before any work
        accelerator = make_accelerator(cfg) if args.command == "run" else None
        selection = (Selection.parse(args.policies, args.seeds, args.cells, args.shard)
                     if args.command in ("run", "cells", "plan") else None)
        if args.command in ("cells", "plan"):
            grid = Grid.of(cfg)
            units = grid.units(selection)
    except ConfigError as err:
        print(f"lmcollapse: config error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001  (bad input of any kind: one line, exit 2)
        print(f"lmcollapse: config error: {args.config}: {type(err).__name__}: "
              f"{str(err)[:300]}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if args.command == "cells":
        print("\n".join(f"seed {seed}\t{key}" + (  # a unit's participants run in it
            f"\t({', '.join(m.key for m in grid.cells[key].participants)})"
            if grid.cells[key].participants else "") for seed, key in units))
        return 0
    if args.command == "plan":
        print(_plan_table(build_plan(grid, units)))
        return 0
    if args.command == "submit":
        try:
            return submit.submit(args, cfg)
        except ConfigError as err:
            print(f"lmcollapse: config error: {err}", file=sys.stderr)
            return 2
    if args.command == "bench":
        from lmcollapse import bench

        return bench.bench(cfg, args)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from lmcollapse.loop import CollapseLoop
    from lmcollapse.parallel import (
        Failure,
        cpu_budget,
        cpu_cores,
        make_plan,
        run_parallel,
        set_threads,
        visible_gpus,
    )
    from lmcollapse.preflight import setup_logging

    setup_logging(cfg.log_level, accelerator.is_main_process)
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not inside them
            loop = CollapseLoop(cfg, accelerator, new_run=args.new_run, selection=selection)
            # under a launch of several processes, auto means the launch's own processes
            jobs = 1 if accelerator.num_processes > 1 and cfg.jobs == "auto" else cfg.jobs
            plan = make_plan(jobs, len(loop.units), cpu_cores(), visible_gpus(),
                             cfg.cpu_threads)
            if plan.capped and jobs != "auto":
                logging.getLogger("lmcollapse").warning("%s", plan.capped)
            if args.smoke:
                from lmcollapse.smoke import rehearse

                return rehearse(loop.grid, accelerator, plan, loop.units)
            if plan.jobs == 1:
                if cfg.cpu_threads:
                    set_threads(cfg.cpu_threads)
                loop.run()
            elif accelerator.num_processes > 1:
                raise ConfigError(
                    f"jobs: {cfg.jobs} worker processes and a launch of "
                    f"{accelerator.num_processes} processes (one cell trained data-parallel) "
                    "do not mix; use either (jobs: 1 under `accelerate launch`)")
            else:
                loop.invocation = {"jobs": plan.jobs, "threads_per_job": plan.threads,
                                   "devices": list(plan.devices)}
                log.info("running %d units on %s (cores: %d, from %s)", len(loop.units),
                         plan.describe(), *cpu_budget())
                run_parallel(loop, plan)
    except ConfigError as err:  # the message on stderr whatever the log settings
        print(f"lmcollapse: config error: {err}", file=sys.stderr)
        log.debug("traceback", exc_info=err.__cause__ or err)
        return 2
    except StepError as err:
        print(f"lmcollapse: {err}", file=sys.stderr)
        log.debug("traceback", exc_info=err.__cause__)
        return 1
    except Failure as err:
        print(f"lmcollapse: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("lmcollapse: interrupted; every finished step is kept: run the same command "
              "again to resume", file=sys.stderr)
        return 130
    return 0


def _plan_table(plan: list[Step]) -> str:
    """``lmcollapse plan``: one line per step (seed, unit, generation, kind, where), then
    the count by kind."""
    lines = ["seed\tunit\tgeneration\tkind\twhere"]
    lines += ["\t".join(str(v) for v in (r["seed"], r["unit"], r["generation"], r["kind"],
                                           r["where"])) for r in (s.row() for s in plan)]
    kinds = Counter(s.kind for s in plan)
    lines.append(f"{len(plan)} steps: " + ", ".join(f"{kinds[k]} {k}" for k in STEP_KINDS
                                                      if kinds[k]))
    return "\n".join(lines)


def main() -> None:
    sys.exit(run_main())


if __name__ == "__main__":
    main()
