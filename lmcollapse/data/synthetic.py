"""``data.source: synthetic``: documents of the seeded Markov language
(:mod:`lmcollapse.data.markov`), optionally written in minority modes
(:mod:`lmcollapse.data.modes`); the source knows the exact log p of its text."""

from __future__ import annotations

from dataclasses import dataclass

from lmcollapse.data.base import SPLITS, Source
from lmcollapse.data.markov import MarkovSource, check_params
from lmcollapse.data.modes import ModeMixture, ModeSettings
from lmcollapse.errors import ConfigError
from lmcollapse.registry import SOURCES


@dataclass
class SyntheticSettings:
    """``data.synthetic``: a seeded Markov language with exactly known probabilities."""

    vocab_size: int = 500
    branching: int = 16
    zipf_exponent: float = 1.1
    mean_sentence_words: float = 12.0
    seed: int = 0
    sentences_per_doc: int = 4
    train_docs: int = 2000
    validation_docs: int = 200
    test_docs: int = 200
    #: minority modes (None: one mode); see :class:`~lmcollapse.data.modes.ModeSettings`
    modes: ModeSettings | None = None

    def check(self, where: str) -> None:
        try:
            check_params(self.vocab_size, self.branching, self.zipf_exponent,
                          self.mean_sentence_words)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        for name, most in (("sentences_per_doc", 1000), ("train_docs", 10_000_000),
                           ("validation_docs", 10_000_000), ("test_docs", 10_000_000)):
            if not 1 <= getattr(self, name) <= most:
                raise ConfigError(f"{where}.{name}: must be in 1..{most}, got "
                                  f"{getattr(self, name)}")
        if self.modes is not None:
            self.modes.check(f"{where}.modes", self.vocab_size)


@SOURCES.register("synthetic")
class SyntheticSource(Source):
    """Documents sampled from :class:`MarkovSource`; its exact log p is the ground truth."""

    settings = SyntheticSettings

    def __init__(self, settings: SyntheticSettings) -> None:
        super().__init__(settings)
        self._truth: MarkovSource | ModeMixture | None = None

    def truth(self) -> MarkovSource | ModeMixture:
        if self._truth is None:
            s = self.config
            chain = MarkovSource(vocab_size=s.vocab_size, branching=s.branching,
                                 zipf_exponent=s.zipf_exponent,
                                 mean_sentence_words=s.mean_sentence_words, seed=s.seed)
            self._truth = chain if s.modes is None else ModeMixture(
                chain, s.modes.shares, s.modes.words, s.seed)
        return self._truth

    def load(self) -> dict[str, list[str]]:
        s = self.config
        counts = (s.train_docs, s.validation_docs, s.test_docs)
        # each split draws from its own stream so changing one size leaves the others intact
        return {split: self.truth().sample_documents(n, s.sentences_per_doc,
                                                     seed=s.seed * 1000 + i + 1)
                for i, (split, n) in enumerate(zip(SPLITS, counts, strict=True))}

    def fresh_documents(self, n_docs: int, seed: int) -> list[str]:
        """New documents, from a stream no split uses (seeds of the splits are small)."""
        return self.truth().sample_documents(n_docs, self.config.sentences_per_doc,
                                             seed=10_000_019 + seed)

    def describe(self) -> str:
        s = self.config
        modes = "" if s.modes is None else (
            f", modes {'/'.join(f'{x:g}' for x in s.modes.shares)} differing in "
            f"{s.modes.words} words")
        return (f"synthetic Markov source (vocab {s.vocab_size}, branching {s.branching}, "
                f"{s.train_docs}/{s.validation_docs}/{s.test_docs} train/val/test docs{modes})")
