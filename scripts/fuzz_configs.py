"""Try many bad configs the way a new user would, and count how each was handled.

Walks every key of a resolved config (every section, every registered part's settings, the
policy entries), and for each key tries values its type can never accept (wrong types,
non-finite and huge numbers, YAML tags, sexagesimal ``1:30``, unsafe names), a misspelt
key beside it, ``null`` for each section, and whole config files of random bytes. Each is
run as ``lmcollapse run`` in this process on the config (``generations=0``, so a value that
is wrongly accepted costs seconds), and counted as *clean* (exit code 2, one message naming
the key, no traceback, nothing written), *accepted* (the run went ahead) or *unclean*.

    python scripts/fuzz_configs.py --config configs/quickstart.yaml [--garbage 200]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

from lmcollapse.cli import run_main
from lmcollapse.config import load_config

BAD = {
    int: ["abc", "[1, 2]", "{a: 1}", "1.5", ".nan", ".inf", "1e400", "1:30",
          "99999999999999999999", "!!float abc", "true"],
    float: ["abc", "[1]", "{a: 1}", ".nan", ".inf", "-.inf", "1e400", "true", "!!int x"],
    str: ["[1]", "{a: 1}", "!!binary x"],
    bool: ["maybe", "3", "[1]", "{a: 1}"],
    list: ["{a: 1}", "!!float abc"],
    dict: ["[1, 2]", "7", "abc"],
}
#: sections whose field is optional: null is a valid value there (data.synthetic.modes:
#: null is one mode)
NULLABLE = {"data.synthetic.modes"}
NAMES = ["''", "'../x'", "'a/b'", "..", "human", "gen_01"]
QUICK = ["generations=0", "seeds=[0]", "data.synthetic.train_docs=120",
         "data.synthetic.validation_docs=20", "data.synthetic.test_docs=20",
         "data.synthetic.vocab_size=60", "data.synthetic.branching=6",
         "model.scratch.vocab_size=300", "model.scratch.hidden_size=32",
         "model.scratch.intermediate_size=64", "train.budget_steps=2", "train.batch_size=16",
         "metrics.names=[perplexity]", "log_level=ERROR"]


def flatten(node, prefix=""):
    """(dotted key, value) of every leaf and section of a plain config dict."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield path, value
            yield from flatten(value, path + ".")
        elif key != "policies" and key != "grid":
            yield path, value


def cases(config: Path) -> list[list[str]]:
    plain = load_config(config, QUICK).to_dict()
    out: list[list[str]] = []
    for key, value in flatten(plain):
        kind = type(value) if value is not None else None
        for bad in BAD.get(kind, ["{a: 1}"] if kind is None else []):
            out.append([f"{key}={bad}"])
        if kind is dict and key not in NULLABLE:
            out.append([f"{key}=null"])
        if key in ("experiment",):
            out += [[f"{key}={n}"] for n in NAMES]
        out.append([f"{key}x=1"])  # a misspelt key
    for entry in ({"fraction": 0.1}, {"name": "replace", "label": ".."},
                  {"name": "replace", "label": "a/b"}, {"name": "replace", "label": "human"},
                  {"name": "nosuch"}, {"name": "mix", "fraction": 2}):
        out.append([f"policies=[{entry}]".replace("'", "")])
    return out


def attempt(config: Path, overrides: list[str], root: Path) -> str:
    out_dir = Path(tempfile.mkdtemp(dir=root))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = run_main(["run", "--config", str(config), *QUICK,
                             f"output_dir={out_dir / 'runs'}", *overrides])
        except BaseException as exc:  # noqa: BLE001  (counted, not raised)
            return f"unclean: raised {type(exc).__name__}: {exc}"[:300]
    text = err.getvalue()
    written = (out_dir / "runs").exists() and any((out_dir / "runs").rglob("*"))
    if code == 0:
        return "accepted"
    if code == 2 and "Traceback" not in text and not written:
        return "clean"
    return f"unclean: exit {code}, written={written}: {text.strip()[-300:]}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--garbage", type=int, default=100, help="random config files to try")
    args = p.parse_args()
    logging.disable(logging.CRITICAL)
    config = Path(args.config)
    results: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tried = cases(config)
        rng = random.Random(0)
        for i in range(args.garbage):
            path = root / f"garbage_{i}.yaml"
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
            tried.append(["--config-file", str(path)])
        for overrides in tried:
            if overrides[0] == "--config-file":
                outcome = attempt(Path(overrides[1]), [], root)
            else:
                outcome = attempt(config, overrides, root)
            kind = outcome.split(":")[0]
            results[kind] += 1
            if kind != "clean":
                print(f"{kind}: {' '.join(overrides)} -> {outcome}")
    total = sum(results.values())
    print(f"{total} bad configs tried: " + ", ".join(f"{n} {k}" for k, n in
                                                     results.most_common()))
    return 0 if results["clean"] == total else 1


if __name__ == "__main__":
    sys.exit(main())
