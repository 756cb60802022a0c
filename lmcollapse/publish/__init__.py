"""Publishing: a run as a results file (:mod:`~lmcollapse.publish.export`) that anyone can
submit, and the results files of many runs merged into one leaderboard per protocol
(:mod:`lmcollapse.report.leaderboard`). Reading a results file back belongs to the
report (:mod:`lmcollapse.report.results`): JSON only, never torch."""
