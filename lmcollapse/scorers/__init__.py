"""Scorers: how likely (or how good) a corpus sample is, for curation. One module each,
registered in :data:`lmcollapse.registry.SCORERS` with its settings (see
:mod:`lmcollapse.scorers.base`)."""
