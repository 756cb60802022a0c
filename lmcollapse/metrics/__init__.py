"""Metrics: one module each, registered in :data:`lmcollapse.registry.METRICS` with their
settings, display name, direction and default leaderboard columns (see
:mod:`lmcollapse.metrics.base`). :func:`lmcollapse.registry.discover` imports every module
here, so a new metric is one new file."""
