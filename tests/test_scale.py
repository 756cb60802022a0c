"""Bounded disk (keep_models, the estimate and its refusal), LoRA adapters per generation,
training curves through accelerate's trackers."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import tiny_config

from lmcollapse import disk
from lmcollapse.errors import ConfigError
from lmcollapse.files import recorded, tree_size
from lmcollapse.grid import Grid
from lmcollapse.layout import Generation
from lmcollapse.loop import CollapseLoop
from lmcollapse.models import load_model, scratch_config, train_tokenizer
from lmcollapse.plan import build_plan

ONE = ["policies=[replace]", "metrics.names=[perplexity]", "train.budget_steps=6"]


@pytest.mark.slow
def test_keep_models_prunes_what_no_later_step_needs(tmp_path):
    cfg = tiny_config(tmp_path, *ONE, "generations=3", "model.init=previous",
                      "keep_models=last")
    CollapseLoop(cfg).run()
    seed = cfg.run_dir / "seed_0"
    assert [(seed / "replace" / f"gen_{k:02d}" / "model").exists() for k in (1, 2, 3)] == [
        False, False, True]
    assert (seed / "gen_00" / "model").exists()  # every cell starts from it: always kept
    assert not any(n.startswith("model/") for n in recorded(seed / "replace" / "gen_01"))
    # resuming with keep_models=none (it may change between invocations) redoes nothing and
    # drops the last model too; what the report reads stays
    again = CollapseLoop(tiny_config(tmp_path, *ONE, "generations=3", "model.init=previous",
                                     "keep_models=none"))
    again.run()
    assert again.timings == []
    assert not (seed / "replace" / "gen_03" / "model").exists()
    assert (seed / "gen_00" / "model").exists()
    assert (seed / "replace" / "gen_03" / "metrics.json").exists()


def test_the_disk_estimate_counts_the_models_each_setting_keeps(tmp_path, texts):
    cfg = tiny_config(tmp_path, "seeds=[0,1]", "generations=4")  # 2 seeds x 3 policies
    grid = Grid.of(cfg)
    units = grid.units()
    arch = scratch_config(cfg.model.scratch, train_tokenizer(texts, 258))
    shared = 2 * 2  # per seed: generation 0 and the scratch initial weights
    counts = {}
    for keep in ("all", "last", "none"):
        cfg.keep_models = keep
        counts[keep] = disk.estimate(grid, build_plan(grid, units), arch, 100).models - shared
    assert counts == {"all": 6 * 4, "last": 6 + 3, "none": 2 * 3}
    cfg.keep_models = "all"
    est = disk.estimate(grid, build_plan(grid, units[:2]), arch, 100)  # two units, one seed
    assert est.models == 2 + 2 * 4
    params = sum(p.numel() for p in torch.nn.Module.parameters(
        __import__("transformers").AutoModelForCausalLM.from_config(arch)))
    assert est.model_bytes == 4 * params


@pytest.mark.slow
def test_the_estimate_matches_what_a_run_writes(tmp_path):
    cfg = tiny_config(tmp_path, *ONE, "generations=1")
    loop = CollapseLoop(cfg)
    loop.run()
    weights = cfg.run_dir / "seed_0" / "replace" / "gen_01" / "model" / "model.safetensors"
    arch = loop.setup.model_config
    # the checkpoint is the float32 weights and a header of a few KB (tensor names, shapes)
    assert 0 < weights.stat().st_size - 4 * disk.parameter_count(arch) < 4096
    grid = Grid.of(cfg)
    est = disk.estimate(grid, build_plan(grid, [(0, "replace")]), arch,
                        len(loop.setup.human.train), arch.hidden_size)
    written = tree_size(cfg.run_dir)
    assert 0.5 * written < est.total < 3 * written, (est.describe(), written)


def test_a_disk_too_small_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda path: 10_000)
    cfg = tiny_config(tmp_path, *ONE, "generations=2")
    with pytest.raises(ConfigError, match=r"keep_models: this job needs about .* but .* has "
                                          r"10.0 KB free. Set keep_models to last or none"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()


@pytest.mark.slow
def test_lora_saves_an_adapter_per_generation_and_rebuilds_each_model(tmp_path):
    cfg = tiny_config(tmp_path, *ONE, "generations=2", "model.init=previous",
                      "train.lora.enabled=true", "train.lora.target_modules=[q_proj,v_proj]",
                      "train.lr=3e-2")
    loop = CollapseLoop(cfg)
    loop.run()
    seed = cfg.run_dir / "seed_0"
    for d in (seed / "gen_00", seed / "replace" / "gen_01", seed / "replace" / "gen_02"):
        config = json.loads((d / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
        assert (d / "adapter" / "adapter_model.safetensors").stat().st_size < \
            (d / "model" / "model.safetensors").stat().st_size / 5
    # base + the chain of adapters is exactly the merged model training saved
    rebuilt = loop.weights.trained(Generation(0, 2, "replace")).state_dict()
    saved = load_model(seed / "replace" / "gen_02" / "model").state_dict()
    assert rebuilt.keys() == saved.keys()
    assert all(torch.equal(rebuilt[k], saved[k]) for k in saved)
    base = load_model(seed / "base").state_dict()
    changed = {k for k in saved if not torch.equal(base[k], saved[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)


@pytest.mark.slow
def test_training_curves_go_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, *ONE, "generations=1", "log_with=tensorboard")
    CollapseLoop(cfg).run()
    events = sorted((cfg.run_dir / "logs").rglob("events.out.tfevents.*"))
    scalars = {}
    for e in events:
        acc = EventAccumulator(str(e.parent))
        acc.Reload()
        scalars.update({t: acc.Scalars(t) for t in acc.Tags()["scalars"]})
    assert {"seed_0/gen_00/train_loss", "seed_0/replace/gen_01/val_loss"} <= set(scalars)
    steps = [s.step for s in scalars["seed_0/gen_00/train_loss"]]
    assert steps == list(range(1, 7))  # every optimizer step of the budget
    log = [json.loads(x) for x in (cfg.run_dir / "seed_0" / "gen_00" / "train_log.jsonl")
           .read_text().splitlines()]
    assert scalars["seed_0/gen_00/val_loss"][-1].value == pytest.approx(log[-1]["val_loss"])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb installed")
def test_a_missing_tracker_names_its_extra(tmp_path):
    with pytest.raises(ConfigError, match=r"log_with: wandb needs the 'wandb' package: pip "
                                          r"install 'lmcollapse\[wandb\]'"):
        CollapseLoop(tiny_config(tmp_path, "log_with=wandb"))
