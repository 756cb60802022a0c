"""The errors lmcollapse raises on purpose. A leaf module: it imports nothing of ours, so
every part can import it without cycles."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range, or the data or
    model it names cannot serve the run; raised before any work starts."""


class StepError(RuntimeError):
    """A step of the loop failed; the message names the cell, the generation and the step."""


class ReportError(ValueError):
    """A directory that is not a run, or a metric or policy that no run has."""
