"""Minority modes (``data.synthetic.modes``): does the model forget the blue cats?

Three exact measurements per generation, for every mode of the source
(:class:`~lmcollapse.data.modes.ModeMixture`; the keys are named after the modes,
``majority`` and ``minority`` by default):

- ``<mode>_share``: the share of corpus k each mode wrote, by the exact posterior of the
  mode given a text's words, averaged over ``sample_size`` corpus samples (each document of
  a sample weighted by its words); ``mixed_share``: the share written in no single mode
  (distinctive words of two modes in one document: "greenish cats"). The human row is the
  same on held-out human samples of the same length. ``minority_share`` is the total of the
  minorities.
- ``<mode>_form_share``: in held-out documents of that mode, at ``contexts`` positions
  where the next word is one of its distinctive words, the model's probability of the
  mode's word as a share of its probability of every mode's word for that concept (the
  source's answer is 1). The model's word probability is that of the word's tokens after
  the context (the tokens of ``context + " " + word`` past those of the context).
- ``<mode>_excess``: the exact excess log-loss (nats per word, as ``ground_truth``) on the
  held-out documents of each mode, each document weighted by its exact posterior. A
  collapsing model loses the minority first: its excess grows first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmcollapse.checks import positive, sample_size
from lmcollapse.data.modes import ModeMixture
from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.metrics.ground_truth import document_nll, test_documents
from lmcollapse.metrics.perplexity import WindowSettings
from lmcollapse.registry import METRICS
from lmcollapse.sampling import fixed_sample
from lmcollapse.scoring import score

WHERE = "metrics.modes"


@dataclass
class ModesSettings(WindowSettings):
    """``metrics.modes``: ``sample_size`` corpus and human samples for the shares (None: the
    largest both allow), ``contexts`` scored positions per mode for the form shares, the
    draw ``seed``, and the windows of the per-mode excess log-loss (as ``ground_truth``)."""

    sample_size: int | None = None
    contexts: int = 200
    seed: int = 0
    batch_size: int = 32

    def check(self, where: str) -> None:
        super().check(where)
        sample_size(self.sample_size, f"{where}.sample_size")
        positive(self.contexts, f"{where}.contexts")


def mode_composition(truth: ModeMixture, texts: list[str]) -> tuple[np.ndarray, float]:
    """Mean share of each mode and the mean mixed share over ``texts`` (see
    :meth:`ModeMixture.composition`); texts without a word are left out."""
    parts = [truth.composition(t) for t in texts]
    parts = [(s, m) for s, m, n in parts if n]
    if not parts:
        return np.zeros(len(truth.shares)), 0.0
    return np.mean([s for s, _ in parts], axis=0), float(np.mean([m for _, m in parts]))


def form_contexts(truth: ModeMixture, docs: list[str], mode: int, count: int,
                  seed: int) -> list[tuple[str, int]]:
    """Up to ``count`` positions ``(text before the word, concept slot)`` in the documents
    written only in ``mode`` where the next word is one of the mode's distinctive words."""
    slot = {w: i for i, w in enumerate(truth.forms[mode])}
    found = []
    for doc in docs:
        words = doc.split()
        post = truth.posterior(doc)
        if post is None or post[mode] < 1.0:
            continue
        found += [(" ".join(words[:i]), slot[w]) for i, w in enumerate(words) if w in slot]
    return fixed_sample(found, count, seed)


@METRICS.register("modes")
class Modes(Metric):
    headline = "minority_share"
    settings = ModesSettings
    display_name = "Minority share of the corpus"
    higher_is_better = None  # compare with the human row (the source's share)
    columns = ("minority_share", "mixed_share", "minority_form_share", "minority_excess")

    def preflight(self, ctx: MeasureContext) -> None:
        if not isinstance(ctx.truth, ModeMixture):
            raise ConfigError("metrics.names: 'modes' needs a source with minority modes "
                              "(data.source: synthetic with data.synthetic.modes set)")
        self.config.windows(ctx.trained_length, WHERE)
        ctx.equal_size(self.config.sample_size, f"{WHERE}.sample_size")

    def meta(self, key: str) -> dict:
        """Shares are compared with the human row (the source's shares); more form share and
        less mixed text and excess are better, whatever the modes are called."""
        direction = (True if key.endswith("_form_share") else
                     False if key.endswith("_excess") or key == "mixed_share" else None)
        mode = key.rsplit("_", 2 if key.endswith("_form_share") else 1)[0].replace("_", " ")
        name = (f"{mode.capitalize()}'s words in {mode} contexts (share)"
                if key.endswith("_form_share") else
                f"Excess log-loss on {mode} text (nats/word)" if key.endswith("_excess") else
                "Mixed-mode share of the corpus" if key == "mixed_share" else
                f"{mode.capitalize()} share of the corpus")
        return {**super().meta(key), "higher_is_better": direction, "display_name": name}

    def _shares(self, truth: ModeMixture, texts: list[str]) -> dict[str, float]:
        shares, mixed = mode_composition(truth, texts)
        values = {f"{n}_share": float(s) for n, s in zip(truth.names, shares, strict=True)}
        values["minority_share"] = float(shares[1:].sum())
        values["mixed_share"] = mixed
        return values

    def _size(self, ctx: MeasureContext) -> int:
        return ctx.equal_size(self.config.sample_size, f"{WHERE}.sample_size")

    def _form_shares(self, ctx: MeasureContext, truth: ModeMixture,
                     docs: list[str]) -> tuple[dict[str, float], dict[str, int]]:
        tok, limit = ctx.tokenizer, ctx.trained_length
        nl = tok("\n", add_special_tokens=False)["input_ids"]
        seqs, starts, owners = [], [], []
        values, sizes = {}, {}
        for m, name in enumerate(truth.names):
            positions = form_contexts(truth, docs, m, self.config.contexts, self.config.seed)
            used = 0
            for p, (prefix, slot) in enumerate(positions):
                head = nl + tok(prefix, add_special_tokens=False)["input_ids"] if prefix else nl
                cands = []
                for forms in truth.forms:
                    text = f"{prefix} {forms[slot]}" if prefix else forms[slot]
                    ids = nl + tok(text, add_special_tokens=False)["input_ids"]
                    if ids[:len(head)] != head or len(ids) == len(head):
                        break  # the word does not tokenise apart from its context
                    cut = max(0, len(ids) - limit)
                    cands.append((ids[cut:], len(head) - cut))
                if len(cands) == len(truth.forms):
                    seqs += [ids for ids, _ in cands]
                    starts += [start for _, start in cands]
                    owners += [(m, p, k) for k in range(len(cands))]
                    used += 1
            sizes[f"{name}_contexts"] = used
        nll, _ = score(ctx.accelerator, ctx.model, seqs, starts, tok.pad_token_id,
                       self.config.batch_size, desc=f"modes gen {ctx.generation}")
        log_q: dict[tuple[int, int], np.ndarray] = {}
        for (m, p, k), v in zip(owners, nll.tolist(), strict=True):
            log_q.setdefault((m, p), np.zeros(len(truth.forms)))[k] = -v
        for m, name in enumerate(truth.names):
            # q_m / sum_k q_k from log q, so a word the model finds very unlikely cannot
            # underflow every candidate to 0
            rows = [np.exp(lq[m] - np.logaddexp.reduce(lq))
                    for (mm, _), lq in log_q.items() if mm == m]
            values[f"{name}_form_share"] = float(np.mean(rows)) if rows else float("nan")
        return values, sizes

    def _excess(self, ctx: MeasureContext, truth: ModeMixture,
                docs: list[str]) -> tuple[dict[str, float], dict[str, float]]:
        nll = document_nll(ctx, self.config, WHERE, self.config.batch_size)
        log_p = np.array([truth.log_prob(d) for d in docs])
        words = np.array([truth.n_words(d) for d in docs], dtype=np.float64)
        weights = np.array([truth.posterior(d) for d in docs])  # held-out text is never mixed
        values, sizes = {}, {}
        for m, name in enumerate(truth.names):
            w = weights[:, m]
            values[f"{name}_excess"] = float((w * (nll + log_p)).sum() / (w * words).sum())
            sizes[f"{name}_documents"] = float(w.sum())
        return values, sizes

    def compute(self, ctx: MeasureContext) -> Measurement:
        truth, m = ctx.truth, self.config
        samples = fixed_sample(ctx.corpus_seqs(), self._size(ctx), m.seed)
        values = self._shares(truth, ctx.tokenizer.batch_decode(
            [list(map(int, s)) for s in samples]))
        docs = test_documents(ctx)
        forms, form_sizes = self._form_shares(ctx, truth, docs)
        excess, excess_sizes = self._excess(ctx, truth, docs)
        length, stride = m.windows(ctx.trained_length, WHERE)
        return Measurement({**values, **forms, **excess},
                           details={"modes": dict(zip(truth.names, truth.shares, strict=True)),
                                    "max_length": length, "stride": stride},
                           sizes={"samples": len(samples), **form_sizes, **excess_sizes})

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        """The shares on held-out human samples of corpus length; the source's own form
        shares (1: it always writes the mode's word) and excess (0)."""
        truth = ctx.truth
        chunks = ctx.human_chunks(self._size(ctx), self.config.seed)
        values = self._shares(truth, ctx.tokenizer.batch_decode(
            [c.tolist() for c in chunks]))
        values.update({f"{n}_form_share": 1.0 for n in truth.names})
        values.update({f"{n}_excess": 0.0 for n in truth.names})
        return Measurement(values, details={"modes": dict(zip(truth.names, truth.shares,
                                                              strict=True))},
                           sizes={"samples": len(chunks)})

    def describe(self, m: Measurement) -> str:
        modes = ", ".join(f"{n} {s:g}" for n, s in m.details["modes"].items())
        ctxs = [v for k, v in m.sizes.items() if k.endswith("_contexts")]
        where = f"; form shares at {min(ctxs)}+ positions per mode" if ctxs else ""
        return f"source modes {modes}; shares of {m.sizes['samples']} samples{where}"
