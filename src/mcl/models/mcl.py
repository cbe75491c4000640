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
from mcl.losses import LevelStats, multi_level_loss, positive_assignment
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
                 temperature: float = 1.0, compute_mode: str = "efficient", interpolation: str = "nearest",
                 positives: str = "top", activation_checkpointing: bool = False):
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
        self.assignment = positive_assignment(positives, len(self.specs))
        self.crop_size = crop_size
        self.compute_mode = compute_mode
        self.interpolation = interpolation
        self.level_weights = [float(w) for w in level_weights]
        self.temperature = float(temperature)
        self.online = Encoder(arch, fpn_channels, neck_convs, neck_hidden, embed_dim, cell_size)
        self.online.backbone.activation_checkpointing = activation_checkpointing   # the target runs without grad
        self.predictors = nn.ModuleList(Predictor(embed_dim, predictor_hidden) for _ in self.specs)
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad_(False)

    # ----- encoders -------------------------------------------------------------------------------
    def _level_cells(self, enc: Encoder, montages: list[Tensor], wanted: list[int]) -> dict[int, Tensor]:
        """Cell embeddings ``{i: (M_i * r_i**2, D)}`` of one view's montages, for the pyramid levels ``wanted``.

        faithful: backbone, full FPN and the neck on every FPN level for every montage, then the
        (level, montages) pairs are picked out. efficient: the backbone only on the wanted levels'
        montages, the FPN laterals/top-down on those, and the 3x3 output conv and neck only where used.
        """
        sizes = [m.shape[0] for m in montages]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        out: dict[int, Tensor] = {}
        if self.compute_mode == "faithful":
            feats = enc.backbone.features(torch.cat(montages))
            embedded = {k: enc.neck(p) for k, p in enc.backbone.pyramid(feats, {0, 1, 2, 3}).items()}
            for i in wanted:
                emb = embedded[self.fpn_levels[i]][starts[i]:starts[i] + sizes[i]]
                out[i] = emb.reshape(-1, emb.shape[-1])
            return out
        used = sorted(wanted)
        feats = enc.backbone.features(torch.cat([montages[i] for i in used]))
        inner = enc.backbone.top_down(feats, min(self.fpn_levels[i] for i in used))
        start = 0
        for i in used:
            k = self.fpn_levels[i]
            emb = enc.neck(enc.backbone.output(inner[k][start:start + sizes[i]], k))
            out[i] = emb.reshape(-1, emb.shape[-1])
            start += sizes[i]
        return out

    @torch.no_grad()
    def _target_embeddings(self, montages: list[Tensor], labels: list[Tensor], wanted: list[int]) -> dict[int, Tensor]:
        """Per-image targets ``{j: (B, D)}`` in image order: row ``b`` averages image ``b``'s cells at level ``j``.

        Level 0 holds each crop once, in the (permuted) order of its labels; rows are put back in
        image order so that label ``b`` names target ``b``. Levels where an image appears ``c`` times
        (ablations only) average its ``c`` cells.
        """
        batch = montages[0].shape[0]
        cells = self._level_cells(self.target, montages, wanted)
        out = {}
        for j, emb in cells.items():
            index = labels[j].reshape(-1)
            total = emb.new_zeros(batch, emb.shape[-1]).index_add_(0, index, emb)
            count = torch.bincount(index, minlength=batch).clamp_min(1).to(emb.dtype)
            out[j] = total / count[:, None]
        return out

    # ----- the pretext task -----------------------------------------------------------------------
    def forward(self, crops: Tensor, generator: torch.Generator | None = None, gather: bool = True) -> StepOutput:
        """``crops (B, 2L, 3, S, S)`` -> loss over both views, all levels (see ``mcl.losses``)."""
        pyramids = build_pyramids(crops, self.specs, self.interpolation, generator)
        every_level = list(range(len(self.specs)))
        target_levels = sorted({j for js in self.assignment for j in js})
        predictions, labels, targets = [], [], []
        for montages, view_labels in pyramids:
            cells = self._level_cells(self.online, montages, every_level)
            predictions.append([pred(cells[i]) for i, pred in enumerate(self.predictors)])
            labels.append([lab.reshape(-1) for lab in view_labels])
            targets.append(self._target_embeddings(montages, view_labels, target_levels))
        loss, stats = multi_level_loss(predictions, labels, targets, self.level_weights, self.temperature, gather,
                                       self.assignment)
        return StepOutput(loss, stats)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA step of the target encoder's parameters towards the online encoder's."""
        ema_update(self.target, self.online, momentum)

    def num_montages(self, batch_size: int) -> list[int]:
        """Montages per level and view for a per-device batch (validates the batch size)."""
        return [s.num_montages(batch_size) for s in self.specs]

