"""Token log-likelihoods under a causal LM: the one scorer behind every log-likelihood the
harness reports (validation loss, held-out perplexity, reference scoring, ground truth).

:func:`masked_nll` scores one padded batch; :func:`score` scores any number of sequences in
batches, sharded over the processes, and returns per-sequence sums in input order. Asked
for them (``stats_k``), both also return, from the same logits, what calibration and the
model's own concentration are computed from (:func:`token_stats`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from lmcollapse.progress import bars_disabled


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``seqs`` into ``(input_ids, attention_mask)``."""
    lengths = {len(s) for s in seqs}
    if len(lengths) == 1:  # blocks of one length (the common case): no padding, one copy
        ids = torch.as_tensor(np.asarray(seqs, dtype=np.int64))
        return ids, torch.ones_like(ids)
    width = max(lengths)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


#: what :func:`token_stats` returns per scored token
TOKEN_STATS = ("confidence", "correct", "p_target", "sum_sq", "entropy", "top_k_mass")


def token_stats(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                k: int) -> list[dict[str, np.ndarray]]:
    """Per sequence, per scored token (``keep``): the top-1 probability (``confidence``),
    whether the top-1 token is the target (``correct``), the target's probability, the sum
    of squared probabilities (the Brier score is ``1 - 2 p_target + sum_sq``), the entropy
    of the next-token distribution (nats) and the mass of its ``k`` most likely tokens."""
    out = []
    for row, target, kept in zip(logits, targets, keep, strict=True):  # one [T, V] at a time
        logp = torch.log_softmax(row[kept], dim=-1)
        p = logp.exp()
        top = p.topk(min(k, p.shape[-1]), dim=-1).values
        values = {"confidence": top[:, 0], "correct": p.argmax(-1) == target[kept],
                  "p_target": p.gather(-1, target[kept][:, None])[:, 0],
                  "sum_sq": (p * p).sum(-1), "entropy": -(p * logp).sum(-1),
                  "top_k_mass": top.sum(-1)}
        out.append({name: values[name].double().cpu().numpy() for name in TOKEN_STATS})
    return out


@torch.no_grad()
def masked_nll(model: torch.nn.Module, seqs: Sequence[Sequence[int]], score_from: Sequence[int],
               pad_id: int, stats_k: int | None = None, per_token: bool = False
               ) -> tuple[Any, ...]:
    """Sum of -log p(x_t | x_<t) over positions ``t >= max(1, score_from[i])`` of each sequence.

    Args:
        model: a causal LM (``model(input_ids, attention_mask).logits``).
        seqs: token sequences, scored in one right-padded batch.
        score_from: per sequence, the first position whose token is scored; earlier tokens are
            context only (the sliding-window rule of the transformers perplexity guide).
        pad_id: the padding id (never scored).

    Returns:
        ``(nll, count)``: float64 tensors of shape ``[len(seqs)]`` on the model's device;
        with ``stats_k``, also :func:`token_stats` of the same logits (top-``stats_k`` mass);
        with ``per_token`` (not with ``stats_k``), also each sequence's scored tokens' NLL
        (float64 arrays, in position order).
    """
    if per_token and stats_k is not None:
        raise ValueError("per_token and stats_k are exclusive")
    device = next(model.parameters()).device
    ids, mask = pad_batch(seqs, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = ids[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    positions = torch.arange(1, ids.shape[1], device=device)
    start = torch.as_tensor([max(1, s) for s in score_from], device=device)
    keep = (positions[None, :] >= start[:, None]) & mask[:, 1:].bool()
    summed = (nll.double() * keep).sum(dim=1), keep.sum(dim=1).double()
    if per_token:
        return (*summed, [row[kept].double().cpu().numpy() for row, kept in zip(nll, keep,
                                                                               strict=True)])
    if stats_k is None:
        return summed
    return (*summed, token_stats(logits, targets, keep, stats_k))


def score(accelerator: Any, model: torch.nn.Module, seqs: Sequence[Sequence[int]],
          score_from: Sequence[int], pad_id: int, batch_size: int,
          desc: str = "scoring", stats_k: int | None = None, per_token: bool = False
          ) -> tuple[Any, ...]:
    """Summed NLL and scored-token count of every sequence, in input order.

    Sequences are cut into batches of ``batch_size`` in order, the batches shared out
    between processes (``accelerator.split_between_processes``), and the results gathered,
    so every process returns the same arrays.

    Args:
        seqs: token sequences (a window of a stream, a corpus sample, a document).
        score_from: per sequence, the first position whose token is scored (see
            :func:`masked_nll`).

    Returns:
        ``(nll, count)``: float64 arrays of shape ``[len(seqs)]``; with ``stats_k``, also
        each sequence's :func:`token_stats`, with ``per_token`` its tokens' NLL (see
        :func:`masked_nll`), in input order.
    """
    extra = stats_k is not None or per_token
    model.eval()
    done: list[tuple[Any, ...]] = []
    with accelerator.split_between_processes(list(range(len(seqs)))) as mine:
        batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        for batch in tqdm(batches, desc=desc, disable=bars_disabled(accelerator),
                          leave=False):
            out = masked_nll(model, [seqs[i] for i in batch], [score_from[i] for i in batch],
                             pad_id, stats_k, per_token)
            stats = out[2] if extra else [None] * len(batch)
            done += zip(batch, out[0].tolist(), out[1].tolist(), stats, strict=True)
    if accelerator.num_processes > 1:
        done = gather_object(done)
    done.sort(key=lambda row: row[0])
    sums = (np.array([n for _, n, _, _ in done], dtype=np.float64),
            np.array([c for _, _, c, _ in done], dtype=np.float64))
    return (*sums, [s for _, _, _, s in done]) if extra else sums
