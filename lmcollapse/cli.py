"""Command line: ``lmcollapse run|validate|report``.

    lmcollapse run --config configs/quickstart.yaml [key.sub=value ...] [--new-run]
    lmcollapse validate --config configs/shumailov2023.yaml
    lmcollapse report runs/quickstart --metric perplexity
"""

from __future__ import annotations

import argparse
import logging
import sys

from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError, StepError

log = logging.getLogger("lmcollapse")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmcollapse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume an experiment")
    val = sub.add_parser("validate", help="load and validate a config, print it resolved")
    for q in (run, val):
        q.add_argument("--config", required=True, help="experiment YAML file")
        q.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    run.add_argument("--new-run", action="store_true",
                     help="start a fresh run directory instead of resuming an existing one")
    # its own parser (lmcollapse.report.main) reads the rest: `lmcollapse report --help`
    sub.add_parser("report", add_help=False,
                   help="leaderboard, per-generation tables and plots from run directories")
    return p


def _setup_logging(level: str, main_process: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", level=level if main_process else "ERROR")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight loading/saving bars


def run_main(argv: list[str] | None = None) -> int:
    """Entry point shared by ``lmcollapse`` and ``scripts/run_loop.py``; returns an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "report":
        from lmcollapse.report import main as report_main  # no torch: reads JSON and parquet

        return report_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "validate":  # `run` checks this in its preflight
            from lmcollapse.models import check_pretrained  # torch: not for `report`

            check_pretrained(cfg.model)  # a missing optional extra, named before any work
    except ConfigError as err:
        print(f"lmcollapse: config error: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from lmcollapse.loop import Experiment, make_accelerator

    accelerator = make_accelerator(cfg)
    _setup_logging(cfg.log_level, accelerator.is_main_process)
    try:
        Experiment(cfg, accelerator, new_run=args.new_run).run()
    except ConfigError as err:
        log.error("config error: %s", err)
        return 2
    except StepError as err:
        log.error("%s", err)
        log.debug("traceback", exc_info=err.__cause__)
        return 1
    return 0


def main() -> None:
    sys.exit(run_main())


if __name__ == "__main__":
    main()
