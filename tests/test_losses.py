"""Training objectives (``train.loss``): truncated cross-entropy against a hand computation,
against transformers' own loss where it drops nothing, and through the loop as a training
setting with its own generation 0."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config

from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError
from lmcollapse.grid import Grid
from lmcollapse.loop import CollapseLoop
from lmcollapse.losses import make_loss
from lmcollapse.losses.truncated import TruncatedCrossEntropy, TruncatedSettings
from lmcollapse.train import Collate

#: three target tokens (ids 0, 0, 0 after a first token) with probabilities 0.995, 0.5, 0.2
PROBS = [[0.995, 0.004, 0.001], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1]]


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distributions are PROBS (one row, then a padded row)."""

    def __init__(self) -> None:
        super().__init__()
        rows = torch.log(torch.tensor([*PROBS, [1 / 3] * 3]))  # the last position: no target
        self.logits = torch.nn.Parameter(torch.stack([rows, rows]))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits)


def batch() -> dict[str, torch.Tensor]:
    """Row 0: four tokens (targets 0, 0, 0); row 1: one token then padding (no target)."""
    return {"input_ids": torch.tensor([[1, 0, 0, 0], [1, 2, 2, 2]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]),
            "labels": torch.tensor([[1, 0, 0, 0], [1, -100, -100, -100]])}


@pytest.mark.parametrize(("normalize", "denominator"), [("all", 3), ("kept", 2)])
def test_truncated_cross_entropy_matches_a_hand_computation(normalize, denominator):
    """threshold 0.99: the first target (p = 0.995 > 0.99) is dropped, the others (0.5,
    0.2) kept; the padded row is no target; the dropped token gets no gradient."""
    model = FixedLogits()
    loss_fn = TruncatedCrossEntropy(TruncatedSettings(threshold=0.99, normalize=normalize))
    loss = loss_fn(model, batch())
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(0.2)) / denominator,
                                        rel=1e-6)
    loss.backward()
    grad = model.logits.grad[0]
    assert torch.all(grad[0] == 0) and grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert torch.all(model.logits.grad[1] == 0)  # padding: nothing learnt
    assert loss_fn.summary() == {"dropped_share": pytest.approx(1 / 3)}
    assert loss_fn.summary() == {}  # counted since the last call only


def test_a_threshold_of_one_is_transformers_own_loss(tiny_model, tokenizer):
    """Nothing has probability above 1: the loss is the causal-LM loss transformers
    computes (the default objective), padding and all."""
    ids = [tokenizer.encode("a b c d e f g h i j")[:12], tokenizer.encode("k l m")[:5]]
    data = Collate(tokenizer.pad_token_id)(ids)
    plain = make_loss(load_config(None, []).train.loss)(tiny_model, data)
    assert plain.item() == tiny_model(**data).loss.item()
    truncated = TruncatedCrossEntropy(TruncatedSettings(threshold=1.0))(tiny_model, data)
    assert truncated.item() == pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.parametrize(("override", "field"), [
    ("train.loss={name: truncated, threshold: 0}", "train.loss.threshold"),
    ("train.loss={name: truncated, threshold: 1.5}", "train.loss.threshold"),
    ("train.loss={name: truncated, normalize: some}", "train.loss.normalize"),
    ("train.loss={name: truncated, thresold: 0.9}", "train.loss.thresold"),
    ("train.loss=focal", "train.loss"),
])
def test_bad_loss_settings_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.slow
def test_a_loss_is_a_training_setting_through_the_loop(tmp_path):
    """A grid over train.loss: each loss trains a generation 0 of its own (a founder); the
    truncated one logs the share of target tokens it dropped, which grows as the model
    learns (a threshold of 0.1, so that a tiny model is sure of some tokens), and its loss
    falls; the cross-entropy cells log what they logged before the setting existed."""
    cfg = tiny_config(tmp_path, "generations=1", "metrics.names=[perplexity]",
                      "policies=[replace]", "grid=[{key: train.loss, name: loss, values: "
                      "[cross_entropy, {name: truncated, threshold: 0.1}]}]", "train.eval_every=10")
    grid = Grid.of(cfg)
    founders = {c.key: c.founder for c in grid.cells.values()}
    assert founders == {"replace@loss=cross_entropy": "",
                        "replace@loss=name-truncatedthreshold-0.1": "loss=name-truncated"
                                                                     "threshold-0.1"}
    CollapseLoop(cfg).run()
    seed = cfg.run_dir / "seed_0"

    def log(d):
        return [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]

    plain = log(seed / "replace@loss=cross_entropy" / "gen_01")
    truncated = [*log(seed / "gen_00@loss=name-truncatedthreshold-0.1"),
                 *log(seed / "replace@loss=name-truncatedthreshold-0.1" / "gen_01")]
    assert all("dropped_share" not in r for r in plain + log(seed / "gen_00"))
    assert all(0 <= r["dropped_share"] < 1 for r in truncated)
    zero = log(seed / "gen_00@loss=name-truncatedthreshold-0.1")
    # the model grows sure of some tokens as it learns, and they leave the loss
    assert zero[-1]["dropped_share"] > zero[0]["dropped_share"]
    assert zero[-1]["train_loss"] < zero[0]["train_loss"]
