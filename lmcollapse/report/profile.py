"""Compute: the collapse profile of a run (Schaeffer, Kazdan, Arulandu and Koyejo,
"Position: Model Collapse Does Not Mean What You Think", arXiv 2503.03150).

The paper counts eight definitions of "model collapse" in the literature and asks that a
study report which of them its models meet, a "model collapse profile". It does not fix
the measurements or the tests, so this module states ours. For every policy of a run and
every definition, the profile names the metric keys that measure it (the first one the run
has decides the verdict; the others are shown), and reads the change from generation 0 to
the final generation over seeds:

- a **definition of a change** (any increase of population risk, collapsing variance,
  entanglement of modes, disappearance of the tail, appearance of hallucinated data) is
  ``met`` when the mean change over seeds goes the collapsing way and a two-sided paired
  t-test of final against generation 0 (:func:`lmcollapse.report.stats.paired_test`) is
  below 0.05 after Holm's correction over the profile's tests of one experiment;
  ``reversed`` when it is significant the other way, ``not shown`` otherwise, ``n < 2``
  with fewer than two seeds;
- **catastrophic increase of population risk** is ``met`` when every seed's final held-out
  perplexity is above its human row's unigram baseline (the model predicts the test text
  worse than token frequencies do: it has lost what it learned beyond them);
- **asymptotically diverging population risk** cannot be decided from finitely many
  generations: the change of the last generation over the one before is shown, with its
  test, and the verdict is ``not decidable``;
- **change in scaling law** needs runs at several data sizes: ``not measured``.

JSON and parquet only, like the rest of the report. Rendered by
:mod:`lmcollapse.report.profile_formats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lmcollapse.report.load import RunResults
from lmcollapse.report.stats import ALPHA, Paired, adjust, paired_test

#: (key, the paper's name, the value keys that measure it with the collapsing direction:
#: +1 an increase, -1 a decrease; the first the run has decides); an empty tuple: a rule
#: of its own (see the module's text)
DEFINITIONS: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...] = (
    ("catastrophic_risk", "Catastrophic increase of population risk", ()),
    ("any_risk_increase", "Any increase of population risk",
     (("perplexity", +1), ("excess_nats_per_word", +1))),
    ("diverging_risk", "Asymptotically diverging population risk", ()),
    ("scaling_law", "Change in scaling law", ()),
    ("collapsing_variance", "Collapsing variance",
     (("entropy_2", -1), ("word_types", -1), ("entropy", -1), ("distinct_2", -1))),
    ("mode_entanglement", "Entanglement of real data modes",
     (("mixed_share", +1), ("minority_share", -1))),
    ("tail_disappearance", "Disappearance of real tail data",
     (("tail_type_survival", -1), ("word_types_1", -1), ("vanished_types", +1))),
    ("hallucinated_data", "Appearance of hallucinated data",
     (("invented_share", +1), ("impossible_share", +1), ("precision", -1))),
)


@dataclass
class Evidence:
    """One value key's change over seeds: generation ``before`` to ``after``."""

    key: str
    collapsing: int
    before: int
    after: int
    test: Paired
    #: the mean relative change, mean over seeds of (after - before) / |before|
    relative: float
    p_adj: float = math.nan


@dataclass
class Verdict:
    """One definition for one policy: the verdict and the evidence behind it."""

    key: str
    name: str
    verdict: str
    rule: str
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class Profile:
    """The profile of one experiment: ``rows[policy]`` in definition order."""

    experiment: str
    generations: int
    rows: dict[str, list[Verdict]]


def _evidence(exp: RunResults, policy: str, key: str, collapsing: int, before: int,
              after: int) -> Evidence | None:
    a, b = exp.values(policy, key, after), exp.values(policy, key, before)
    if not a or not b:
        return None
    seeds = sorted(a.keys() & b.keys())
    rel = [(a[s] - b[s]) / abs(b[s]) for s in seeds if b[s]]
    return Evidence(key, collapsing, before, after, paired_test(a, b),
                    sum(rel) / len(rel) if rel else math.nan)


def _change_verdict(e: Evidence) -> str:
    if e.test.n < 2:
        return "n < 2"
    if not (math.isfinite(e.p_adj) and e.p_adj < ALPHA):
        return "not shown"
    return "met" if e.test.diff * e.collapsing > 0 else "reversed"


def profile(exp: RunResults, policies: list[str]) -> Profile:
    """The collapse profile of ``policies`` of ``exp`` at its final generation."""
    n = exp.generations
    rows: dict[str, list[Verdict]] = {}
    tests: list[Evidence] = []
    for policy in policies:
        row = []
        for key, name, keys in DEFINITIONS:
            if key == "catastrophic_risk":
                final, base = exp.values(policy, "perplexity", n), exp.values(
                    "human", "unigram_perplexity", None)
                seeds = sorted(final.keys() & base.keys())
                verdict = ("not measured" if not seeds else
                           "met" if all(final[s] > base[s] for s in seeds) else "not met")
                row.append(Verdict(key, name, verdict, "every seed's final perplexity above "
                                   "its human row's unigram baseline"))
            elif key == "diverging_risk":
                e = _evidence(exp, policy, "perplexity", +1, n - 1, n) if n >= 1 else None
                row.append(Verdict(key, name, "not decidable", "finitely many generations; "
                                   "shown: the last generation's change", [e] if e else []))
            elif key == "scaling_law":
                row.append(Verdict(key, name, "not measured", "needs runs at several data "
                                   "sizes"))
            else:
                found = [e for k, c in keys if (e := _evidence(exp, policy, k, c, 0, n))]
                tests += found[:1]
                row.append(Verdict(key, name, "not measured" if not found else "",
                                   "final against generation 0, paired over seeds", found))
        rows[policy] = row
    for e, p in zip(tests, adjust([e.test.p for e in tests], "holm"), strict=True):
        e.p_adj = p
    for row in rows.values():
        for v in row:
            if not v.verdict:
                v.verdict = _change_verdict(v.evidence[0])
    return Profile(exp.key, n, rows)
