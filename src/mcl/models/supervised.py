"""The supervised montage model (docs/method.md, "Supervised montage pretraining"): MCL's montage pyramid and
online encoder, each cell classifying its source image.

Per view ``v`` (the same 2 x L crops, pyramid and online encoder as MCL) and level ``i``:

    e_c = neck(FPN level P(5-i) of the montage)[cell c]             (N_i, D)   cell embeddings
    z_c = W_i e_c + b_i                                             (N_i, C)   level i's linear head
    y_c = label[src_c]     (src_c: the cell's source image in the batch, from the montage labels)
    L   = sum_v sum_i  w_i * mean_c CE(z_c, y_c)                    w = (1/2, 1/4, 1/8, 1/8)

The paper released no recipe; the choices made here where it is silent:
- both views are used and their losses summed (as MCL sums both directions), so the data, pyramid
  and compute per step equal MCL's online side; there is no target encoder and no predictor;
- one linear head per level on the neck's 256-d output (no hidden layer), init normal(std 0.01), bias 0;
- the network computes only the cells the loss uses (MCL's "efficient" mode: FPN output conv and
  neck per level on that level's montages only); there is no released "faithful" compute to mirror;
- optimisation as MCL's paper mode (LARS, warm-up + cosine, ``OptimConfig`` defaults);
- labels: ``mcl.data.labeled`` (class subfolders; COCO json -> the largest-area category).
Checkpoint keys equal MCL's online encoder (``model.online.backbone.body/fpn``, ``model.online.neck``),
so ``mcl export`` and ``mcl finetune --init`` take these checkpoints unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mcl.losses import LevelResult, cell_targets, montage_classification_loss
from mcl.models.mcl import Encoder, fpn_level_for
from mcl.montage import build_pyramids, level_specs


@dataclass
class SupervisedOutput:
    loss: Tensor
    levels: list[LevelResult]


class SupervisedMontage(nn.Module):
    """MCL's online encoder (``online``: ResNet + FPN + cell neck) and one linear classifier per level (``heads``)."""

    def __init__(self, *, num_classes: int, encoder: Encoder, crop_size: int, cell_size: int, ratios: list[int],
                 repeats: list[int], level_weights: list[float], interpolation: str):
        super().__init__()
        if num_classes is None or num_classes < 2:
            raise ValueError(f"a classifier needs >= 2 classes, got {num_classes}")
        self.specs = level_specs(list(ratios), list(repeats))
        if len(level_weights) != len(self.specs):
            raise ValueError(f"level weights {list(level_weights)} must have one weight per level "
                             f"({len(self.specs)} levels from ratios {list(ratios)})")
        self.fpn_levels = [fpn_level_for(crop_size, cell_size, s.ratio) for s in self.specs]
        self.level_weights = [float(w) for w in level_weights]
        self.interpolation = interpolation
        self.online = encoder
        embed_dim = encoder.neck.out_dim
        self.heads = nn.ModuleList(nn.Linear(embed_dim, num_classes) for _ in self.specs)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, crops: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> SupervisedOutput:
        """``crops (B, 2L, 3, S, S)``, ``labels (B,)`` class per image -> summed per-level cross-entropy."""
        logits, targets = [], []
        for montages, view_labels in build_pyramids(crops, self.specs, self.interpolation, generator):
            cells = self.online.level_cells(montages, self.fpn_levels)
            logits.append([head(c) for head, c in zip(self.heads, cells)])
            targets.append(cell_targets(view_labels, labels))
        loss, levels = montage_classification_loss(logits, targets, self.level_weights)
        return SupervisedOutput(loss, levels)

    @classmethod
    def from_config(cls, cfg) -> "SupervisedMontage":
        """The model of an ``mcl.methods.supervised.SupervisedConfig`` (``model.num_classes`` resolved)."""
        m = cfg.model
        return cls(num_classes=m.num_classes, encoder=Encoder.from_config(m), crop_size=cfg.data.crop_size,
                   cell_size=m.cell_size, ratios=cfg.montage.ratios, repeats=cfg.montage.repeats,
                   level_weights=cfg.loss.level_weights, interpolation=cfg.montage.interpolation)

    def num_montages(self, batch_size: int) -> list[int]:
        """Montages per level and view (validates the batch size)."""
        return [s.num_montages(batch_size) for s in self.specs]


