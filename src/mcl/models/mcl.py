"""The MCL model: online and EMA target encoders (ResNet + FPN + cell neck), one predictor per level.

``MCL.forward(crops)`` is the whole pretext task for one step on one process: it builds both
views' montage pyramids, runs the encoders and returns the multi-level loss and per-level figures.
It can be used in any training loop; the Lightning module in ``mcl.methods.mcl`` only adds the optimiser,
the schedules and the EMA update.

Geometry. Level ``i`` (ratio ``r_i``) is read from the FPN level whose map of an ``S x S`` montage
has exactly ``r_i`` cells of size ``c`` per side: stride ``S / (c * r_i)`` must be one of 4, 8, 16,
32 (P2..P5). Paper mode: ``S = 224, c = 7``: ratios 1, 2, 4, 8 read P5, P4, P3, P2.

Compute modes (docs/method.md, "Compute modes"):
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
        raise ValueError(
            f"a {crop_size}px montage with ratio {ratio} and {cell_size}px cells needs an FPN stride of "
            f"{crop_size}/{map_size}, but the strides are 4, 8, 16, 32 (a crop of 32 x the cell size fits every "
            f"ratio 1, 2, 4, 8, e.g. 224 with cell 7)"
        )
    return FPN_STRIDES.index(crop_size // map_size)


class Encoder(nn.Module):
    """``backbone`` (ResNet ``body`` + ``fpn``) followed by the cell ``neck``."""

    def __init__(self, arch: str, fpn_channels: int, neck_convs: int, neck_hidden: int, embed_dim: int,
                 cell_size: int):
        super().__init__()
        self.backbone = ResNetFPN(arch, fpn_channels)
        self.neck = CellNeck(fpn_channels, neck_convs, neck_hidden, embed_dim, cell_size)

    @classmethod
    def from_config(cls, model) -> "Encoder":
        """From a config's ``model`` section (``mcl.sections.EncoderConfig`` fields)."""
        return cls(model.arch, model.fpn_channels, model.neck_convs, model.neck_hidden, model.embed_dim,
                   model.cell_size)

    def level_cells(self, montages: list[Tensor], fpn_levels: list[int]) -> list[Tensor]:
        """Cell embeddings ``[(M_i * r_i**2, D)]`` of one view's montages ``[(M_i, 3, S, S)]``, level ``i`` read at
        FPN level ``fpn_levels[i]``, computing only what that needs ("efficient" mode): the backbone and the FPN
        laterals / top-down on all the montages given, the FPN 3x3 output conv and the neck of level ``i``'s FPN
        map on level ``i``'s montages only."""
        sizes = [m.shape[0] for m in montages]
        feats = self.backbone.features(torch.cat(montages))
        inner = self.backbone.top_down(feats, min(fpn_levels))
        out, start = [], 0
        for size, k in zip(sizes, fpn_levels):
            emb = self.neck(self.backbone.output(inner[k][start:start + size], k))
            out.append(emb.reshape(-1, emb.shape[-1]))
            start += size
        return out


@dataclass
class StepOutput:
    """What one forward returns: the loss, per-level figures, and the montage labels (for inspection)."""

    loss: Tensor
    levels: list[LevelStats]


class MCL(nn.Module):
    """Online encoder + per-level predictors + EMA target encoder, and the pretext task's forward.

    Built from a config (:meth:`from_config`, whose dataclasses hold the paper-mode defaults); the keyword
    arguments have no defaults of their own. Refuses (``ValueError``, with the facts) a geometry that cannot
    work; ``mcl.methods.mcl.MCLConfig``'s checks name the config key first.
    """

    def __init__(self, *, arch: str, crop_size: int, cell_size: int, ratios: list[int], repeats: list[int],
                 fpn_channels: int, neck_convs: int, neck_hidden: int, embed_dim: int, predictor_hidden: int,
                 level_weights: list[float], temperature: float, compute_mode: str, interpolation: str,
                 positives: str, activation_checkpointing: bool):
        super().__init__()
        if compute_mode not in COMPUTE_MODES:
            raise ValueError(f"compute mode {compute_mode!r} is not one of {', '.join(COMPUTE_MODES)}")
        self.specs: list[LevelSpec] = level_specs(list(ratios), list(repeats))
        if len(level_weights) != len(self.specs):
            raise ValueError(f"level weights {list(level_weights)} must have one weight per level "
                             f"({len(self.specs)} levels from ratios {list(ratios)})")
        if self.specs[0].ratio != 1 or self.specs[0].repeats != 1:
            raise ValueError("level 0 must be the plain crops (ratio 1, repeats 1): it supplies the targets")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.fpn_levels = [fpn_level_for(crop_size, cell_size, s.ratio) for s in self.specs]
        if self.fpn_levels[0] != 3:
            raise ValueError(f"level 0 must read P5: the crop size {crop_size} must equal 32 x the cell size "
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

    @classmethod
    def from_config(cls, cfg) -> "MCL":
        """The model of an ``mcl.methods.mcl.MCLConfig`` (its ``data``, ``montage``, ``model`` and ``loss``)."""
        m, loss = cfg.model, cfg.loss
        return cls(arch=m.arch, crop_size=cfg.data.crop_size, cell_size=m.cell_size, ratios=cfg.montage.ratios,
                   repeats=cfg.montage.repeats, fpn_channels=m.fpn_channels, neck_convs=m.neck_convs,
                   neck_hidden=m.neck_hidden, embed_dim=m.embed_dim, predictor_hidden=m.predictor_hidden,
                   level_weights=loss.level_weights, temperature=loss.temperature, compute_mode=m.compute_mode,
                   interpolation=cfg.montage.interpolation, positives=loss.positives,
                   activation_checkpointing=m.activation_checkpointing)

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
        cells = enc.level_cells([montages[i] for i in used], [self.fpn_levels[i] for i in used])
        return dict(zip(used, cells))

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

