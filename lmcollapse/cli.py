"""Command line: ``lmcollapse run|validate|report|bench``.

    lmcollapse run --config configs/quickstart.yaml [key.sub=value ...] [--new-run]
    lmcollapse validate --config configs/shumailov2023.yaml
    lmcollapse report runs/quickstart --metric perplexity
    lmcollapse bench --config configs/quickstart.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

import transformers
import yaml
from tqdm.contrib.logging import logging_redirect_tqdm

from lmcollapse import bench, report
from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError, StepError
from lmcollapse.loop import CollapseLoop
from lmcollapse.models import check_pretrained
from lmcollapse.preflight import make_accelerator

log = logging.getLogger("lmcollapse")


def build_parser() -> argparse.ArgumentParser:
    """One parser; every subcommand is listed by ``lmcollapse --help``."""
    p = argparse.ArgumentParser(prog="lmcollapse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume an experiment")
    val = sub.add_parser("validate", help="load and validate a config, print it resolved")
    rep = sub.add_parser("report", help="leaderboard, per-generation tables and plots from "
                         "run directories (reads JSON and parquet only)")
    ben = sub.add_parser("bench", help="throughput of training, generation and perplexity "
                         "for a config on this machine")
    for q in (run, val, ben):
        q.add_argument("--config", required=True, help="experiment YAML file")
        q.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    run.add_argument("--new-run", action="store_true",
                     help="start a fresh run directory instead of resuming an existing one")
    report.add_arguments(rep)
    bench.add_arguments(ben)
    return p


def _setup_logging(level: str, main_process: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", level=level if main_process else "ERROR")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight loading/saving bars


def run_main(argv: list[str] | None = None) -> int:
    """Entry point shared by ``lmcollapse`` and ``scripts/run_loop.py``; returns an exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "report":
        return report.report_command(args)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "validate":  # `run` checks this in its preflight
            check_pretrained(cfg.model)  # a missing optional extra, named before any work
        accelerator = make_accelerator(cfg) if args.command == "run" else None
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
    if args.command == "bench":
        return bench.bench(cfg, args.steps, args.prompts, args.eval_tokens)
    _setup_logging(cfg.log_level, accelerator.is_main_process)
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not inside them
            CollapseLoop(cfg, accelerator, new_run=args.new_run).run()
    except ConfigError as err:  # the message on stderr whatever the log settings
        print(f"lmcollapse: config error: {err}", file=sys.stderr)
        log.debug("traceback", exc_info=err.__cause__ or err)
        return 2
    except StepError as err:
        print(f"lmcollapse: {err}", file=sys.stderr)
        log.debug("traceback", exc_info=err.__cause__)
        return 1
    return 0


def main() -> None:
    sys.exit(run_main())


if __name__ == "__main__":
    main()
