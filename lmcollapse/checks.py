"""The small checks every settings section uses: a number's range, a safe folder name, a
metric's sample size. Each refuses with a :class:`~lmcollapse.errors.ConfigError` naming
the dotted field and what is allowed.

A leaf: it imports nothing of lmcollapse but :mod:`lmcollapse.errors`, so a part (a
policy, metric, data source or scorer) checks its own settings with it without importing
the config layer, which finds the parts through the registry at run time.
"""

from __future__ import annotations

import math
import re
from typing import Any

from lmcollapse.errors import ConfigError

#: largest integer a config may hold (seeds, sizes): beyond it a value is a typo
MAX_INT = 2**53
#: a run directory, policy label, axis name or cell name: one safe path component
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@=+,-]{0,119}")
DERIVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@=+,-]*")
#: names the run directory uses itself (a cell may not take them)
RESERVED_NAMES = ("human", "base", "tokenizer", "all")
RESERVED_PATTERN = re.compile(r"(gen|seed)_\d+")


def positive(value: Any, where: str, allow_none: bool = False, allow_zero: bool = False) -> None:
    """Refuse a missing, non-finite, negative (or zero) number, naming ``where``."""
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        limit = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where}: must be {limit}, got {value!r}")


def fraction(value: Any, where: str) -> None:
    """Refuse anything but a number in [0, 1], naming ``where``."""
    if value is None or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: must be a number in [0, 1], got {value!r}")


def safe_name(value: str, where: str, derived: bool = False) -> None:
    """A name that becomes a folder of the run directory: one path component of letters,
    digits and ``._@=+,-`` (starting with a letter or digit, so never ``..``), not one the
    run directory uses itself. A name typed by hand has at most 120 characters; one
    ``derived`` from settings (a grid's cell key) any length: its folder is a prefix and a
    digest past :data:`~lmcollapse.layout.MAX_NAME`."""
    if not (DERIVED_NAME if derived else SAFE_NAME).fullmatch(value or ""):
        size = "" if derived else "1-120 "
        raise ConfigError(f"{where}: {value!r} is not a safe folder name; use {size}letters, "
                          "digits and ._@=+,- starting with a letter or digit")
    if value in RESERVED_NAMES or RESERVED_PATTERN.fullmatch(value):
        raise ConfigError(f"{where}: {value!r} is a name the run directory uses itself "
                          f"({', '.join(RESERVED_NAMES)}, gen_<k>, seed_<s>); choose another")


def sample_size(value: int | None, where: str) -> None:
    """A size-dependent metric's sample size: null (the largest both allow) or >= 2."""
    if value is not None and value < 2:
        raise ConfigError(f"{where}: must be >= 2 (samples) or null, got {value!r}")
