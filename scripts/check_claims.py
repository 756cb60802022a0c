"""Check (or rewrite) every table of claims the docs quote against the runs.

    python scripts/check_claims.py [--write] [PAGE ...]     # default: README.md docs/*.md

A quoted block is the table ``lmcollapse claims RUN --quote`` prints, between
``<!-- claims: RUN [CLAIMS_FILE] -->`` and ``<!-- /claims -->`` (RUN relative to the
repository root; the claims file defaults to ``configs/<experiment>.claims.yaml``). Each
block whose run directory is here is recomputed from its metrics.json files: ``ok`` when
the page quotes exactly that, ``differs`` when not (exit 1; ``--write`` puts the fresh table
in). A block whose run is not here is ``skipped`` (a study's runs are not in git: run this
after re-running a study). ``tests/test_claims.py`` runs it on a small run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmcollapse.report.claims import check_quotes

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pages", nargs="*", type=Path)
    p.add_argument("--write", action="store_true", help="regenerate every block that differs")
    p.add_argument("--root", type=Path, default=ROOT, help="where RUN paths start")
    args = p.parse_args(argv)
    pages = args.pages or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    differs = 0
    for page in pages:
        text = page.read_text()
        new, report = check_quotes(text, args.root, write=args.write)
        for line in report:
            print(f"{page}: {line}")
            differs += line.startswith("differs")
        if args.write and new != text:
            page.write_text(new)
    return 1 if differs and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
