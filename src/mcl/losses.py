"""The pretraining losses as pure functions of tensors: MCL's multi-level InfoNCE (docs/method.md, "The loss"),
MoCo v2's queue InfoNCE and supervised montage's per-cell cross-entropy.

For level ``i`` and view ``v`` with cells ``c`` of source image ``y_c`` (index in the global batch):

    p_c = normalize(predictor_i(online_cell_embedding_c))            (N_i, D)
    t_b = normalize(target_level0_embedding_b of the other view)     (G, D), gathered over processes
    L_{i,v} = mean_c  -log softmax_b(p_c . t_b / T)[y_c]  *  2 T  *  w_i
    L = sum_i sum_v L_{i,v}

Every other image of the global batch is a negative; there is no queue, and other cells of the
same montage are not negatives (they are simply other images). ``T = 1``, ``w = (1/2, 1/4, 1/8, 1/8)``
in paper mode.

Across processes each rank holds its own cells and its own ``B`` targets per view. Targets carry no
gradient (they come from the EMA encoder), so a plain all-gather is exact; labels are offset by
``rank * B``. Each rank's loss is the mean over its own cells, and DDP's gradient average over
ranks then equals a single process's gradient on the global batch (equal cells per rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def gather_targets(targets: Tensor) -> tuple[Tensor, int]:
    """All-gather ``(B, D)`` targets into ``(W*B, D)``; returns them and this rank's label offset ``rank*B``.

    Targets carry no gradient, so the plain (non-differentiable) collective is exact here.
    Works without an initialised process group (returns the input and offset 0).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return targets, 0
    world = dist.get_world_size()
    buffers = [torch.empty_like(targets) for _ in range(world)]
    dist.all_gather(buffers, targets.detach().contiguous())
    return torch.cat(buffers, dim=0), dist.get_rank() * targets.shape[0]


POSITIVE_SCHEMES = ("top", "same", "neighbour", "all")


def positive_assignment(scheme: str, num_levels: int) -> list[list[int]]:
    """Which target levels each online level is matched to (the paper's figure, schemes (a)-(d)).

    - ``top`` (a, released, paper mode): every level -> the level-0 target (P5 of the whole crop).
    - ``same`` (b): level i -> the target's level i.
    - ``neighbour`` (c, our reading of the figure): level i -> level i-1, the next coarser one (0 -> 0).
    - ``all`` (d): level i -> every target level; the loss averages over them.
    """
    levels = list(range(num_levels))
    if scheme == "top":
        return [[0] for _ in levels]
    if scheme == "same":
        return [[i] for i in levels]
    if scheme == "neighbour":
        return [[max(i - 1, 0)] for i in levels]
    if scheme == "all":
        return [list(levels) for _ in levels]
    raise ValueError(f"positive scheme {scheme!r} is not one of {', '.join(POSITIVE_SCHEMES)}")


@dataclass
class LevelStats:
    """Per-level figures for logging (all detached 0-d tensors: no host sync in the step)."""

    loss: Tensor
    pos_cosine: Tensor
    neg_cosine: Tensor


def info_nce(predictions: Tensor, targets: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """InfoNCE of cells against image targets.

    Args:
        predictions: ``(N, D)`` predictor outputs (normalised here).
        targets: ``(G, D)`` target embeddings, already L2-normalised.
        labels: ``(N,)`` index into ``targets`` of each cell's positive.
    Returns:
        ``(loss * 2T, mean positive cosine, mean negative cosine)``; loss is the mean over cells.
    """
    p = F.normalize(predictions.float(), dim=1)
    cos = p @ targets.float().t()                                  # (N, G)
    loss = F.cross_entropy(cos / temperature, labels) * (2.0 * temperature)
    with torch.no_grad():
        positive = cos.gather(1, labels[:, None]).squeeze(1)
        neg_sum = cos.sum(1) - positive
        num_neg = max(cos.shape[1] - 1, 1)
        pos_mean = positive.mean()
        neg_mean = (neg_sum / num_neg).mean()
    return loss, pos_mean, neg_mean


def multi_level_loss(predictions: list[list[Tensor]], labels: list[list[Tensor]],
                     targets: list[Tensor | dict[int, Tensor]], level_weights: list[float], temperature: float = 1.0,
                     gather: bool = True, assignment: list[list[int]] | None = None) -> tuple[Tensor, list[LevelStats]]:
    """The MCL loss, summed over levels and both directions.

    Args:
        predictions: ``predictions[v][i]`` of shape ``(N_i, D)``: view ``v``'s level-``i`` cell predictions.
        labels: ``labels[v][i]`` of shape ``(N_i,)``: batch-local source image of each cell, in ``[0, B)``.
        targets: ``targets[v]``: view ``v``'s per-image target embeddings ``(B, D)`` (no gradient), either one
            tensor (the level-0 targets) or ``{target level j: (B, D)}``.
        level_weights: ``w_i`` per level.
        gather: all-gather targets over processes (global-batch negatives).
        assignment: ``assignment[i]``: the target levels online level ``i`` is matched to (its loss is the mean
            over them); default: every level to target level 0 (paper mode).
    Returns:
        ``(total loss, per-level stats)``; a level's stats average its two directions.
    """
    if len(predictions) != 2 or len(targets) != 2:
        raise ValueError("multi_level_loss expects two views")
    num_levels = len(level_weights)
    assignment = assignment or [[0] for _ in range(num_levels)]
    per_view = [t if isinstance(t, dict) else {0: t} for t in targets]
    normalised: list[dict[int, Tensor]] = [{}, {}]
    offset = 0
    for v, view_targets in enumerate(per_view):
        for j, t in view_targets.items():
            t = F.normalize(t.detach().float(), dim=1)
            if gather:
                t, offset = gather_targets(t)
            normalised[v][j] = t
    total = predictions[0][0].new_zeros((), dtype=torch.float32)
    stats = []
    for i in range(num_levels):
        level_loss, pos, neg = [], [], []
        for v in range(2):
            other = normalised[1 - v]
            for j in assignment[i]:
                loss, p_cos, n_cos = info_nce(predictions[v][i], other[j], labels[v][i] + offset, temperature)
                share = level_weights[i] / len(assignment[i])
                level_loss.append(loss * share)
                pos.append(p_cos)
                neg.append(n_cos)
        level_total = torch.stack(level_loss).sum()
        total = total + level_total
        stats.append(LevelStats(level_total.detach(), torch.stack(pos).mean().detach(),
                                torch.stack(neg).mean().detach()))
    return total, stats


# ---------------------------------------------------------------- MoCo v2 (docs/method.md, "MoCo v2")

def queue_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """``[q.k, q @ queue^T] / T``: ``q, k (B, D)`` and ``queue (K, D)``, all L2-normalised -> ``(B, 1 + K)``.

    Column 0 holds each query's positive; the label of every row is therefore 0.
    """
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.t()
    return torch.cat([positive, negative], dim=1) / temperature


@dataclass
class MoCoStats:
    """Detached 0-d figures of one step: mean positive / negative cosine, top-1 accuracy of the positive."""

    pos_cosine: Tensor
    neg_cosine: Tensor
    accuracy: Tensor


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> tuple[Tensor, MoCoStats]:
    """InfoNCE with a queue of negatives: ``CE(queue_logits(q, k, queue, T), 0)`` (mean over the batch)."""
    logits = queue_logits(q.float(), k.float(), queue.float(), temperature)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, labels)
    with torch.no_grad():
        cos = logits * temperature
        stats = MoCoStats(cos[:, 0].mean(), cos[:, 1:].mean(), (logits.argmax(dim=1) == 0).float().mean())
    return loss, stats


# ---------------------------------------------------------------- supervised montage (docs/method.md)

def cell_targets(view_labels: list[Tensor], image_labels: Tensor) -> list[Tensor]:
    """Class of every cell: ``view_labels[i] (M_i, r_i**2)`` (source index in the batch) -> ``(M_i * r_i**2,)``.

    ``target[c] = image_labels[view_labels[i].reshape(-1)[c]]``: raster order, as the neck emits cells.
    """
    return [image_labels[lab.reshape(-1)] for lab in view_labels]


@dataclass
class LevelResult:
    """Per-level figures (detached 0-d tensors): weighted loss summed over views, accuracy averaged."""

    loss: Tensor
    accuracy: Tensor


def montage_classification_loss(logits: list[list[Tensor]], targets: list[list[Tensor]],
                                level_weights: list[float]) -> tuple[Tensor, list[LevelResult]]:
    """``sum_v sum_i w_i * CE(logits[v][i] (N_i, C), targets[v][i] (N_i,))`` and per-level figures."""
    total = logits[0][0].new_zeros((), dtype=torch.float32)
    results = []
    for i, w in enumerate(level_weights):
        losses = [F.cross_entropy(logits[v][i].float(), targets[v][i]) * w for v in range(len(logits))]
        level = torch.stack(losses).sum()
        total = total + level
        with torch.no_grad():
            acc = torch.stack([(logits[v][i].argmax(1) == targets[v][i]).float().mean() for v in range(len(logits))])
        results.append(LevelResult(level.detach(), acc.mean()))
    return total, results
