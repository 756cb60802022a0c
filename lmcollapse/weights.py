"""Weights: which weights a generation starts from, and where its weights go.

Every question about weights is answered here, so the loop never saves, loads or merges a
model itself: the ``base`` weights (a scratch model's initial weights per seed, or a GGUF
checkpoint dequantized once), where generation k starts (``model.init``: base, scratch or
the previous generation), LoRA adapters and their chains, saving a trained generation,
``keep_models`` pruning, the one model kept in memory and the seed's generation-0 model
kept for reference scoring.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft import PeftModel

from lmcollapse import files
from lmcollapse.grid import Grid
from lmcollapse.layout import ADAPTER, MODEL, SAVED_CONFIG, Generation, RunLayout
from lmcollapse.models import (
    load_model,
    load_pretrained,
    model_config,
    random_model,
    starting_model,
)
from lmcollapse.prepared import Setup
from lmcollapse.sampling import derive_seed
from lmcollapse.settings import TrainConfig, plain
from lmcollapse.steps import waiting_lock

log = logging.getLogger(__name__)


class Weights:
    """The weights of one job's generations.

    Args:
        grid: the experiment's cells and the settings of each generation.
        acc: the process's Accelerator (only the main process writes; every process loads).
        layout: the run directory.
        setup: the run's set-up (tokenizer, model architecture).
    """

    def __init__(self, grid: Grid, acc: Accelerator, layout: RunLayout, setup: Setup) -> None:
        self.grid = grid
        self.cfg = grid.cfg
        self.acc = acc
        self.layout = layout
        self.setup = setup
        #: the one trained model in memory: (its weights' directory, the model on the device)
        self._model: tuple[Path, torch.nn.Module] | None = None
        #: the seed's generation-0 model, kept for reference scoring
        self._reference: tuple[Path, torch.nn.Module] | None = None

    # --- where a generation starts --------------------------------------------------------

    def arch(self, founder: str = "") -> Any:
        """The architecture of generation 0 of training setting ``founder`` (a participant of
        a population may be built from scratch at a size of its own): the run's, or its."""
        scratch = plain(self.grid.settings(Generation(0, 0, None, founder)).model.scratch)
        if self.cfg.model.source != "scratch" or scratch == plain(self.cfg.model.scratch):
            return self.setup.model_config
        return model_config(self.grid.settings(Generation(0, 0, None, founder)).model,
                            self.setup.tokenizer)

    def own_base(self, founder: str) -> bool:
        """Whether training setting ``founder`` builds its scratch model from initial weights
        of its own: a participant of another size, or with a ``seed_offset`` (drawn from
        the founder's name, so as if from another seed)."""
        return bool(founder) and (self.arch(founder) is not self.setup.model_config or any(
            m.seed_offset for m in self.grid.lineages.values() if m.founder == founder))

    def base_dir(self, seed: int, founder: str = "") -> Path | None:
        """Where the run keeps the weights ``init: base`` starts from: a scratch model's
        initial weights (of the training setting ``founder`` when its size differs), or a
        GGUF checkpoint dequantized once for all seeds; None for other pretrained models,
        loaded as named."""
        if self.cfg.model.source == "scratch":
            return self.layout.scratch_base(seed, founder if self.own_base(founder) else "")
        if self.cfg.model.gguf_file:
            return self.layout.base_model
        return None

    def ensure_base(self, seed: int, founders: list[str] = ("",)) -> None:
        """Save the ``base`` weights once, on the main process, atomically (a resumed run
        reuses them): a scratch model's initial weights for ``seed`` (one per size the
        training settings ``founders`` build), or the GGUF checkpoint as plain float32 weights
        with its tokenizer, so every generation reloads ordinary weights and every saved
        model is serializable."""
        shared = self.cfg.model.source != "scratch"  # the GGUF copy serves every seed
        for founder in dict.fromkeys(g if self.own_base(g) else "" for g in founders):
            base_dir = self.base_dir(seed, founder)
            if base_dir is None:
                return
            with (waiting_lock(self.acc, self.layout.base_lock, "the dequantized GGUF model")
                  if shared else contextlib.nullcontext()):
                if self.acc.is_main_process and not (base_dir / SAVED_CONFIG).exists():
                    model = (load_pretrained(self.cfg.model) if shared else random_model(
                        self.arch(founder),
                        derive_seed(seed, "base", *([founder] if founder else []))))
                    self.save(model, base_dir)
                self.acc.wait_for_everyone()

    def starting(self, gen: Generation) -> torch.nn.Module:
        """The weights generation ``gen`` trains from (``model.init``): the base weights,
        fresh random ones, or generation k-1's model (:meth:`trained`)."""
        init_seed = derive_seed(gen.seed, gen.tag, gen.k, "init")
        model_cfg = self.grid.settings(gen).model
        base = self.base_dir(gen.seed, gen.founder)
        if base is not None and base.exists():  # the weights it may start from, as written
            files.verify(base)
        if gen.k == 0:
            if model_cfg.init == "scratch":
                return random_model(self.arch(gen.founder), init_seed)
            return starting_model(model_cfg, self.setup.tokenizer, "base", init_seed, base, None)
        if model_cfg.init == "previous":
            return self.trained(gen.previous)
        return starting_model(model_cfg, self.setup.tokenizer, model_cfg.init, init_seed, base,
                              None)

    def trained(self, gen: Generation) -> torch.nn.Module:
        """Generation ``gen``'s trained model (generation 0: the shared one), on the CPU:
        its saved weights, or with LoRA the weights it started from plus its adapter (for
        ``init: previous`` the chain of adapters back to generation 0), merged exactly as
        training merged them."""
        gen = gen if gen.k > 0 else gen.founder_generation
        if not self.grid.settings(gen).train.lora.enabled:
            path = self.layout.model_dir(gen)
            files.verify(path)
            return load_model(path)
        adapter = self.layout.adapter_dir(gen)
        files.verify(adapter)
        return PeftModel.from_pretrained(self.starting(gen), adapter).merge_and_unload()

    # --- where a generation's weights go --------------------------------------------------

    def adapter_saver(self, d: Path) -> Callable[[Any], None] | None:
        """What training calls with the peft model of the selected step (LoRA): save its
        adapter into generation directory ``d`` (the main process only)."""
        return (lambda peft: self.save(peft, d / ADAPTER)) if self.acc.is_main_process else None

    def keep_trained(self, gen: Generation, d: Path, model: torch.nn.Module,
                     tcfg: TrainConfig) -> None:
        """Save generation ``gen``'s trained model into ``d`` (the main process), except a
        LoRA generation under ``keep_models: none``, which its adapters rebuild. Generate
        and measure reload the saved weights, so an uninterrupted run and a resumed one use
        exactly the same model object (fp32, no mixed-precision wrapper)."""
        if self.acc.is_main_process and not (tcfg.lora.enabled and gen.k > 0
                                             and self.cfg.keep_models == "none"):
            self.save(model, d / MODEL)
        self.forget()

    def save(self, model: torch.nn.Module, final: Path) -> None:
        """``model`` (and, beside full weights, the tokenizer) into ``final``, atomically."""
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():  # left by a killed run
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        if not isinstance(model, PeftModel):  # an adapter folder holds the adapter only
            self.setup.tokenizer.save_pretrained(tmp)
        files.replace_dir(tmp, final)

    def prune(self, gen: Generation) -> None:
        """``keep_models``: once generation k of a cell is measured, drop the weights no
        later step needs: model k-1 (``last``, ``none``), and model k when it is the
        cell's final one (``none``). Generation 0 and LoRA adapters always stay."""
        keep = self.cfg.keep_models
        if keep == "all" or gen.k == 0 or gen.cell_key is None:
            return
        doomed = [self.layout.model_dir(gen.previous)] if gen.k > 1 else []
        if keep == "none" and gen.k == self.cfg.generations:
            doomed.append(self.layout.model_dir(gen))
        if self.acc.is_main_process:
            for folder in doomed:
                if folder.exists():
                    freed = files.remove_dir(folder)
                    log.info("keep_models=%s: removed %s (%.1f MB)", keep,
                             folder.relative_to(self.layout.root), freed / 1e6)
        self.acc.wait_for_everyone()

    # --- the models in memory -------------------------------------------------------------

    def load(self, gen: Generation) -> torch.nn.Module:
        """Generation ``gen``'s model on the device (the one in memory, or loaded)."""
        path = self.layout.model_dir(gen)
        if self._model is None or self._model[0] != path:
            self._model = (path, self.trained(gen).to(self.acc.device))
        return self._model[1]

    def reference(self, seed: int, founder: str = "") -> torch.nn.Module:
        """The seed's generation-0 model (of the cell's training setting), loaded once and
        kept for reference scoring."""
        zero = Generation(seed, 0, None, founder)
        path = self.layout.model_dir(zero)
        if self._model is not None and self._model[0] == path:
            return self._model[1]
        if self._reference is None or self._reference[0] != path:
            self._reference = (path, self.trained(zero).to(self.acc.device))
        return self._reference[1]

    def forget(self) -> None:
        """Drop the model in memory: the next step trains or loads another."""
        self._model = None
