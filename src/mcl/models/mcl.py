"""The MCL model: online and EMA target encoders (ResNet + FPN + cell neck), one predictor per level.

``MCL.forward(crops)`` is the whole pretext task for one step on one process: it builds both
views' montage pyramids, runs the encoders and returns the multi-level loss and per-level figures.
It can be used in any training loop; the Lightning module in ``mcl.train`` only adds the optimiser,
the schedules and the EMA update.

Geometry. Level ``i`` (ratio ``r_i``) is read from the FPN level whose map of an ``S x S`` montage
has exactly ``r_i`` cells of size ``c`` per side: stride ``S / (c * r_i)`` must be one of 4, 8, 16,
32 (P2..P5). Paper mode: ``S = 224, c = 7``: ratios 1, 2, 4, 8 read P5, P4, P3, P2.

Compute modes (MCL-SPEC section 6):
- ``faithful``: as released. Online: full FPN and the neck on all four FPN levels for all montages
  of a view (one neck call per FPN level); the loss keeps level ``i``'s montages at its FPN level.
  Target: the same full computation on all montages; only level 0 at P5 is kept.
- ``efficient``: FPN laterals and top-down for all montages (cheap 1x1 convs, the same BN batch as
  faithful), but the FPN 3x3 output conv and the neck only for the (level, montages) pairs the loss
  uses. Target: backbone and P5 of the level-0 crops only, neck on their single cell.
Both give the same loss when BN uses running statistics (eval mode); in train mode the BN batches
of the FPN output convs and of the neck differ, which is why both modes exist.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mcl.errors import UserError
from mcl.losses import LevelStats, multi_level_loss
from mcl.models.backbone import FPN_STRIDES, ResNetFPN
from mcl.models.ema import ema_update
from mcl.models.neck import CellNeck, Predictor
from mcl.montage import LevelSpec, build_pyramids, level_specs

COMPUTE_MODES = ("efficient", "faithful")


def fpn_level_for(crop_size: int, cell_size: int, ratio: int) -> int:
    """FPN index (0 = P2 .. 3 = P5) whose map of a ``crop_size`` montage has ``ratio`` cells per side."""
    map_size = cell_size * ratio
    if crop_size % map_size or (crop_size // map_size) not in FPN_STRIDES:
        usable = sorted({crop_size // s for s in FPN_STRIDES if crop_size % s == 0 and (crop_size // s) % ratio == 0})
        raise UserError(
            f"inconsistent geometry: a {crop_size}px montage with ratio {ratio} and model.cell_size {cell_size} "
            f"needs an FPN stride of {crop_size}/{map_size}, but strides are 4, 8, 16, 32 "
            f"(keep data.crop_size = 32 x model.cell_size x 1, e.g. 224 with cell 7; map sizes here: {usable})"
        )
    return FPN_STRIDES.index(crop_size // map_size)


class Encoder(nn.Module):
    """``backbone`` (ResNet ``body`` + ``fpn``) followed by the cell ``neck``."""

    def __init__(self, arch: str, fpn_channels: int, neck_convs: int, neck_hidden: int, embed_dim: int,
                 cell_size: int):
        super().__init__()
        self.backbone = ResNetFPN(arch, fpn_channels)
        self.neck = CellNeck(fpn_channels, neck_convs, neck_hidden, embed_dim, cell_size)


@dataclass
class StepOutput:
    """What one forward returns: the loss, per-level figures, and the montage labels (for inspection)."""

    loss: Tensor
    levels: list[LevelStats]


class MCL(nn.Module):
    """Online encoder + per-level predictors + EMA target encoder, and the pretext task's forward."""

    def __init__(self, arch: str = "resnet50", crop_size: int = 224, cell_size: int = 7,
                 ratios: list[int] = (1, 2, 4, 8), repeats: list[int] = (1, 1, 1, 2),
                 fpn_channels: int = 256, neck_convs: int = 4, neck_hidden: int = 2048, embed_dim: int = 256,
                 predictor_hidden: int = 2048, level_weights: list[float] = (0.5, 0.25, 0.125, 0.125),
                 temperature: float = 1.0, compute_mode: str = "efficient", interpolation: str = "nearest"):
        super().__init__()
        if compute_mode not in COMPUTE_MODES:
            raise UserError(f"model.compute_mode {compute_mode!r} is not one of {', '.join(COMPUTE_MODES)}")
        self.specs: list[LevelSpec] = level_specs(list(ratios), list(repeats))
        if len(level_weights) != len(self.specs):
            raise UserError(f"loss.level_weights {list(level_weights)} must have one weight per level "
                            f"({len(self.specs)} levels from montage.ratios {list(ratios)})")
        if self.specs[0].ratio != 1 or self.specs[0].repeats != 1:
            raise UserError("montage level 0 must be the plain crops (ratio 1, repeats 1): it supplies the targets")
        if temperature <= 0:
            raise UserError(f"loss.temperature must be > 0, got {temperature}")
        self.fpn_levels = [fpn_level_for(crop_size, cell_size, s.ratio) for s in self.specs]
        if self.fpn_levels[0] != 3:
            raise UserError(f"level 0 must read P5: data.crop_size {crop_size} must equal 32 x model.cell_size "
                            f"{cell_size} = {32 * cell_size}")
        self.crop_size = crop_size
        self.compute_mode = compute_mode
        self.interpolation = interpolation
        self.level_weights = [float(w) for w in level_weights]
        self.temperature = float(temperature)
        self.online = Encoder(arch, fpn_channels, neck_convs, neck_hidden, embed_dim, cell_size)
        self.predictors = nn.ModuleList(Predictor(embed_dim, predictor_hidden) for _ in self.specs)
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad_(False)

    # ----- encoders -------------------------------------------------------------------------------
    def _online_level_cells(self, montages: list[Tensor]) -> list[Tensor]:
        """Online cell embeddings per level: ``[(M_i * r_i**2, D)]`` for one view's montages."""
        enc = self.online
        sizes = [m.shape[0] for m in montages]
        feats = enc.backbone.features(torch.cat(montages))
        if self.compute_mode == "faithful":
            pyramid = enc.backbone.pyramid(feats, {0, 1, 2, 3})
            embedded = {k: enc.neck(p) for k, p in pyramid.items()}           # every level, every montage
            out, start = [], 0
            for size, k in zip(sizes, self.fpn_levels):
                out.append(embedded[k][start:start + size].reshape(-1, embedded[k].shape[-1]))
                start += size
            return out
        inner = enc.backbone.top_down(feats, min(self.fpn_levels))
        out, start = [], 0
        for size, k in zip(sizes, self.fpn_levels):
            level_map = enc.backbone.output(inner[k][start:start + size], k)
            emb = enc.neck(level_map)
            out.append(emb.reshape(-1, emb.shape[-1]))
            start += size
        return out

    @torch.no_grad()
    def _target_embeddings(self, montages: list[Tensor], level0_labels: Tensor) -> Tensor:
        """Target embeddings of the level-0 crops in image order: row ``b`` is image ``b``, ``(B, D)``.

        Level 0's montages hold one crop each, in the order ``level0_labels`` (a permutation of the
        batch); the rows are put back in image order so that label ``b`` names target ``b``.
        """
        enc = self.target
        b = montages[0].shape[0]
        if self.compute_mode == "faithful":
            pyramid = enc.backbone(torch.cat(montages), {0, 1, 2, 3})
            embedded = {k: enc.neck(p) for k, p in pyramid.items()}
            per_montage = embedded[3][:b, 0]
        else:
            p5 = enc.backbone(montages[0], {3})[3]
            per_montage = enc.neck(p5)[:, 0]
        in_image_order = torch.empty_like(per_montage)
        in_image_order[level0_labels.reshape(-1)] = per_montage
        return in_image_order

    # ----- the pretext task -----------------------------------------------------------------------
    def forward(self, crops: Tensor, generator: torch.Generator | None = None, gather: bool = True) -> StepOutput:
        """``crops (B, 2L, 3, S, S)`` -> loss over both views, all levels (see ``mcl.losses``)."""
        pyramids = build_pyramids(crops, self.specs, self.interpolation, generator)
        predictions, labels, targets = [], [], []
        for montages, view_labels in pyramids:
            cells = self._online_level_cells(montages)
            predictions.append([pred(c) for pred, c in zip(self.predictors, cells)])
            labels.append([lab.reshape(-1) for lab in view_labels])
            targets.append(self._target_embeddings(montages, view_labels[0]))
        loss, stats = multi_level_loss(predictions, labels, targets, self.level_weights, self.temperature, gather)
        return StepOutput(loss, stats)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA step of the target encoder's parameters towards the online encoder's."""
        ema_update(self.target, self.online, momentum)

    def num_montages(self, batch_size: int) -> list[int]:
        """Montages per level and view for a per-device batch (validates the batch size)."""
        return [s.num_montages(batch_size) for s in self.specs]

