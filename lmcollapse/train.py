"""The accelerate training loop for one generation (shape of transformers' run_clm_no_trainer)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, get_scheduler

from lmcollapse.data.blocks import Sample
from lmcollapse.faults import kill_point
from lmcollapse.losses import make_loss
from lmcollapse.progress import bars_disabled
from lmcollapse.scoring import masked_nll, pad_batch
from lmcollapse.settings import TrainConfig

log = logging.getLogger(__name__)



class Collate:
    """Right-pads a batch. Labels are masked where ``attention_mask`` is 0, never by id, so
    a pad id that is also a real token (pad = EOS for GPT-2 and many chat tokenizers) is
    still learnt where it occurs in the text."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, seqs: list[list[int]]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch(seqs, self.pad_id)
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def with_lora(model: torch.nn.Module, tcfg: TrainConfig) -> torch.nn.Module:
    """Wrap ``model`` with trainable LoRA adapters (peft); the base weights are frozen."""
    lora = tcfg.lora
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora.r,
                                             lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules))
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %d of %d parameters trainable", trainable, total)
    return model


def planned_steps(tcfg: TrainConfig, steps_per_epoch: int, tokens_per_step: float) -> int:
    """Optimizer steps: a fixed budget (steps or tokens) if set, else epochs x one pass."""
    if tcfg.budget_steps is not None:
        return tcfg.budget_steps
    if tcfg.budget_tokens is not None:
        return max(1, math.ceil(tcfg.budget_tokens / tokens_per_step))
    return tcfg.epochs * steps_per_epoch


def schedule(tcfg: TrainConfig, batches: int, mean_len: float,
             processes: int) -> tuple[int, float, int, int]:
    """A generation's schedule from its mix: ``batches`` per process and pass, samples of
    ``mean_len`` tokens. Returns (optimizer steps per pass, tokens per step, steps,
    validation every so many steps); :mod:`lmcollapse.smoke` forecasts a run with it."""
    steps_per_epoch = math.ceil(batches / tcfg.grad_accum)
    tokens_per_step = tcfg.batch_size * tcfg.grad_accum * processes * mean_len
    total = planned_steps(tcfg, steps_per_epoch, tokens_per_step)
    eval_every = tcfg.eval_every or (
        min(steps_per_epoch, total) if tcfg.budget_steps is None and tcfg.budget_tokens is None
        else math.ceil(total / 4))  # a fixed budget: 4 evaluations whatever the mix size
    return steps_per_epoch, tokens_per_step, total, eval_every


def evaluations(total: int, eval_every: int) -> int:
    """Validation passes of a generation: every ``eval_every`` steps and after the last."""
    return total // eval_every + (total % eval_every != 0)


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader,
             pad_id: int) -> float:
    """Token-weighted mean NLL on ``loader`` (sharded across processes, gathered)."""
    model.eval()
    nll_sum, count_sum = 0.0, 0.0
    for seqs in loader:
        nll, count = masked_nll(model, seqs, [1] * len(seqs), pad_id)
        # gather_for_metrics drops the samples accelerate repeats to even out the last batch
        nll, count = accelerator.gather_for_metrics((nll, count))
        nll_sum, count_sum = nll_sum + nll.sum().item(), count_sum + count.sum().item()
    model.train()
    return nll_sum / count_sum


def _full_state(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's full weights; under FSDP gathered from every shard (a
    collective call: every process makes it; the main process gets the weights)."""
    state = accelerator.get_state_dict(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in (state or {}).items()}


class TrainingDiverged(RuntimeError):
    """The loss went non-finite or worse than guessing: the numbers would be meaningless."""


def check_converging(train_loss: float, val_loss: float, step: int, uniform: float,
                     tcfg: TrainConfig) -> None:
    """Stop a generation whose validation loss, or mean training loss since the last
    evaluation, is not finite or exceeds ``2 ln(vocab)`` (twice the loss of a uniform
    guess: no training that learns anything gets there)."""
    for name, loss in (("validation", val_loss), ("mean training", train_loss)):
        if not math.isfinite(loss) or loss > 2 * uniform:
            raise TrainingDiverged(
                f"optimizer step {step}: {name} loss {loss:.4g} nats/token, above twice a "
                f"uniform guess ({2 * uniform:.3g}): training diverged (lr {tcfg.lr}, "
                f"max_grad_norm {tcfg.max_grad_norm}); nothing of this generation was kept")


def train_generation(accelerator: Accelerator, model: torch.nn.Module, pad_id: int,
                     rows: list[Sample], validation: list[Sample], tcfg: TrainConfig, seed: int,
                     desc: str = "train", log_tag: str = "train",
                     save_adapter: Callable[[Any], None] | None = None
                     ) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """Fine-tune ``model`` on ``rows``, evaluating on human validation after each pass.

    Every optimizer step's loss and learning rate, and every validation loss, go to the
    accelerator's trackers (if any) as ``<log_tag>/train_loss`` etc. With LoRA,
    ``save_adapter`` receives the peft model of the selected step before it is merged.

    Returns the best model by validation loss (``select_best``) or the last one, unwrapped
    and on the CPU-or-device it was trained on, plus the training log records.
    """
    if tcfg.lora.enabled:
        model = with_lora(model, tcfg)
    # --- data
    gen = torch.Generator().manual_seed(seed)
    collate = Collate(pad_id)
    train_seqs = [r["input_ids"] for r in rows]
    loader = DataLoader(train_seqs, batch_size=tcfg.batch_size, shuffle=True, generator=gen,
                        collate_fn=collate)
    val_loader = DataLoader([r["input_ids"] for r in validation],
                            batch_size=tcfg.eval_batch_size, shuffle=False, collate_fn=list)
    # --- optimizer and schedule
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=tcfg.lr)
    model, optimizer, loader, val_loader = accelerator.prepare(model, optimizer, loader, val_loader)
    mean_len = sum(len(s) for s in train_seqs) / max(1, len(train_seqs))
    plan = schedule(tcfg, len(loader), mean_len, accelerator.num_processes)
    steps_per_epoch, tokens_per_step, total, eval_every = plan
    scheduler = get_scheduler(tcfg.scheduler, optimizer,
                              num_warmup_steps=int(tcfg.warmup_ratio * total)
                              * accelerator.num_processes,
                              num_training_steps=total * accelerator.num_processes)
    scheduler = accelerator.prepare(scheduler)
    if accelerator.is_main_process:  # the derived numbers, as run_clm_no_trainer logs them
        log.info("%s: %d samples, %d processes x batch %d x accumulation %d = %.0f tokens per "
                 "step; %d steps (%d per pass over the mix), validation every %d steps on %d "
                 "blocks", desc, len(train_seqs), accelerator.num_processes, tcfg.batch_size,
                 tcfg.grad_accum, tokens_per_step, total, steps_per_epoch, eval_every,
                 len(validation))
    # --- loop
    uniform = math.log(accelerator.unwrap_model(model).config.vocab_size)
    records: list[dict[str, Any]] = []
    best_loss, best_state, step, epoch, start = math.inf, None, 0, 0, time.time()
    eval_s = 0.0  # seconds in validation (and keeping the best weights) so far
    running, seen = 0.0, 0
    bar = tqdm(total=total, desc=desc, disable=bars_disabled(accelerator),
               leave=False)
    objective = make_loss(tcfg.loss)  # (train.loss: cross-entropy unless one is named)
    model.train()
    while step < total:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            with accelerator.accumulate(model):
                loss = objective(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and tcfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            # summed on the device: no host sync per step (the check for a non-finite
            # loss happens at each evaluation, on the mean since the last one)
            running = running + loss.detach().double()
            seen += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if accelerator.trackers:
                accelerator.log({f"{log_tag}/train_loss": loss.item(),
                                 f"{log_tag}/lr": scheduler.get_last_lr()[0]}, step=step)
            kill_point("train_step")
            if step % eval_every == 0 or step == total:
                eval_start = time.time()
                val_loss = evaluate(accelerator, model, val_loader, pad_id)
                train_loss = running.item() / max(seen, 1)
                check_converging(train_loss, val_loss, step, uniform, tcfg)
                rec = {"step": step, "epoch": epoch, "train_loss": train_loss,
                       "val_loss": val_loss, "val_ppl": math.exp(val_loss),
                       "lr": scheduler.get_last_lr()[0], **objective.summary()}
                records.append(rec)
                if accelerator.trackers:
                    accelerator.log({f"{log_tag}/val_loss": val_loss}, step=step)
                bar.set_postfix(train=f"{rec['train_loss']:.3f}", val=f"{val_loss:.3f}")
                running, seen = 0.0, 0
                if val_loss < best_loss:
                    best_loss = val_loss
                    best_state = _full_state(accelerator, model)
                eval_s += time.time() - eval_start
                rec.update(elapsed_s=time.time() - start, eval_s=eval_s,
                           tokens_per_step=tokens_per_step)
            if step >= total:
                break
        epoch += 1
    bar.close()
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if sharded and not (tcfg.select_best and best_state is not None):
        best_state = _full_state(accelerator, model)  # the last step's weights, gathered
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if sharded:  # a plain model with the gathered weights (complete on the main process,
        # which saves it; the other processes reload the saved model)
        plain = AutoModelForCausalLM.from_config(model.config)
        if best_state:
            missing, unexpected = plain.load_state_dict(best_state, strict=False)
            tied = plain.get_output_embeddings() is not None and \
                plain.get_output_embeddings().weight is plain.get_input_embeddings().weight
            if unexpected or any(not (tied and k.endswith("lm_head.weight")) for k in missing):
                raise RuntimeError(f"the gathered FSDP weights do not fit the model: missing "
                                   f"{missing[:5]}, unexpected {unexpected[:5]}")
        model = plain
    elif tcfg.select_best and best_state is not None:
        model.load_state_dict(best_state)
    if tcfg.lora.enabled:
        if save_adapter is not None:
            save_adapter(model)
        model = model.merge_and_unload()
    for rec in records:
        rec["selected"] = rec["val_loss"] == best_loss if tcfg.select_best else False
    if not tcfg.select_best and records:
        records[-1]["selected"] = True
    _release(accelerator)
    return model, records


def _release(accelerator: Accelerator) -> None:
    """Drop the accelerator's references to this generation's model, optimizer and loaders.
    On a GPU ``free_memory`` also empties the CUDA cache; elsewhere its full garbage
    collection (0.2 s with transformers imported) buys nothing."""
    if accelerator.device.type == "cuda":
        accelerator.free_memory()
        return
    for refs in (accelerator._models, accelerator._optimizers, accelerator._schedulers,
                 accelerator._dataloaders):
        refs.clear()
