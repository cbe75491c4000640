"""Supervised montage pretraining (MCL-SPEC section 9): MCL's montage pyramid, each cell classifies its image.

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

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcl.checkpoints import FORMAT_TAG
from mcl.config import from_dict
from mcl.data.labeled import (LabeledImageDataset, LabeledList, LabeledSyntheticScenes, collate_labeled,
                              list_labeled)
from mcl.data.shard_index import CLASSES_NAME, ShardList, list_shards, read_class_names
from mcl.data.shards import ShardDataset, wants_shards
from mcl.data.views import MultiCropViews
from mcl.errors import UserError
from mcl.models.mcl import Encoder, fpn_level_for
from mcl.montage import build_pyramids, level_specs
from mcl.pretrain_config import (DataConfig, MontageConfig, OptimConfig, ProbeConfig, TrainerConfig, data_checks,
                                 optim_checks, probe_checks, run_checks, trainer_checks)
from mcl.train import DatasetModule, PretrainBase


# ---------------------------------------------------------------- config

@dataclass
class SupervisedModelConfig:
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    fpn_channels: int = 256
    cell_size: int = 7
    neck_convs: int = 4
    neck_hidden: int = 2048
    embed_dim: int = 256
    num_classes: int | None = None     # None: taken from the data (class folders / json categories)
    sync_bn: bool | Literal["auto"] = "auto"


@dataclass
class SupervisedLossConfig:
    level_weights: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125, 0.125])


@dataclass
class SupervisedConfig:
    data: DataConfig = field(default_factory=DataConfig)
    montage: MontageConfig = field(default_factory=MontageConfig)
    model: SupervisedModelConfig = field(default_factory=SupervisedModelConfig)
    loss: SupervisedLossConfig = field(default_factory=SupervisedLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(out="runs/supervised"))
    probe: ProbeConfig = field(default_factory=ProbeConfig)


def validate(cfg: SupervisedConfig) -> None:
    """Refuse values that cannot work, with one line naming the key."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.trainer
    run_checks(cfg, data_checks(d) + [
        (d.augment_on == "loader", "data.augment_on", "must be loader (only MCL pretraining augments on the device)"),
        (m.cell_size >= 1, "model.cell_size", "must be >= 1"),
        (m.num_classes is None or m.num_classes >= 2, "model.num_classes", "must be >= 2 or null (from the data)"),
        (len(cfg.loss.level_weights) == len(cfg.montage.ratios), "loss.level_weights",
         f"must have one weight per montage level ({len(cfg.montage.ratios)})"),
        (all(w >= 0 for w in cfg.loss.level_weights), "loss.level_weights", "must be >= 0"),
    ] + optim_checks(o) + trainer_checks(t) + probe_checks(cfg.probe))


# ---------------------------------------------------------------- pure functions

def cell_targets(view_labels: list[Tensor], image_labels: Tensor) -> list[Tensor]:
    """Class of every cell: ``view_labels[i] (M_i, r_i**2)`` (source index in the batch) -> ``(M_i * r_i**2,)``.

    ``target[c] = image_labels[view_labels[i].reshape(-1)[c]]``: raster order, as the neck emits cells.
    """
    return [image_labels[lab.reshape(-1)] for lab in view_labels]


def level_cells(encoder: Encoder, montages: list[Tensor], fpn_levels: list[int]) -> list[Tensor]:
    """Cell embeddings ``[(M_i * r_i**2, D)]`` of one view: backbone + FPN top-down on all montages, then the
    FPN output conv and the neck of level ``i``'s FPN map on level ``i``'s montages only."""
    sizes = [m.shape[0] for m in montages]
    feats = encoder.backbone.features(torch.cat(montages))
    inner = encoder.backbone.top_down(feats, min(fpn_levels))
    out, start = [], 0
    for size, k in zip(sizes, fpn_levels):
        emb = encoder.neck(encoder.backbone.output(inner[k][start:start + size], k))
        out.append(emb.reshape(-1, emb.shape[-1]))
        start += size
    return out


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


# ---------------------------------------------------------------- the model

@dataclass
class SupervisedOutput:
    loss: Tensor
    levels: list[LevelResult]


class SupervisedMontage(nn.Module):
    """MCL's online encoder (``online``: ResNet + FPN + cell neck) and one linear classifier per level (``heads``)."""

    def __init__(self, num_classes: int, arch: str = "resnet50", crop_size: int = 224, cell_size: int = 7,
                 ratios: list[int] = (1, 2, 4, 8), repeats: list[int] = (1, 1, 1, 2), fpn_channels: int = 256,
                 neck_convs: int = 4, neck_hidden: int = 2048, embed_dim: int = 256,
                 level_weights: list[float] = (0.5, 0.25, 0.125, 0.125), interpolation: str = "nearest"):
        super().__init__()
        if num_classes is None or num_classes < 2:
            raise UserError(f"model.num_classes must be >= 2, got {num_classes}")
        self.specs = level_specs(list(ratios), list(repeats))
        if len(level_weights) != len(self.specs):
            raise UserError(f"loss.level_weights {list(level_weights)} must have one weight per level "
                            f"({len(self.specs)} levels from montage.ratios {list(ratios)})")
        self.fpn_levels = [fpn_level_for(crop_size, cell_size, s.ratio) for s in self.specs]
        self.level_weights = [float(w) for w in level_weights]
        self.interpolation = interpolation
        self.online = Encoder(arch, fpn_channels, neck_convs, neck_hidden, embed_dim, cell_size)
        self.heads = nn.ModuleList(nn.Linear(embed_dim, num_classes) for _ in self.specs)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, crops: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> SupervisedOutput:
        """``crops (B, 2L, 3, S, S)``, ``labels (B,)`` class per image -> summed per-level cross-entropy."""
        logits, targets = [], []
        for montages, view_labels in build_pyramids(crops, self.specs, self.interpolation, generator):
            cells = level_cells(self.online, montages, self.fpn_levels)
            logits.append([head(c) for head, c in zip(self.heads, cells)])
            targets.append(cell_targets(view_labels, labels))
        loss, levels = montage_classification_loss(logits, targets, self.level_weights)
        return SupervisedOutput(loss, levels)

    def num_montages(self, batch_size: int) -> list[int]:
        """Montages per level and view (validates the batch size)."""
        return [s.num_montages(batch_size) for s in self.specs]


def build_model(cfg: SupervisedConfig) -> SupervisedMontage:
    m = cfg.model
    model = SupervisedMontage(m.num_classes, arch=m.arch, crop_size=cfg.data.crop_size, cell_size=m.cell_size,
                              ratios=cfg.montage.ratios, repeats=cfg.montage.repeats, fpn_channels=m.fpn_channels,
                              neck_convs=m.neck_convs, neck_hidden=m.neck_hidden, embed_dim=m.embed_dim,
                              level_weights=cfg.loss.level_weights, interpolation=cfg.montage.interpolation)
    model.num_montages(cfg.data.batch_size)
    return model


# ---------------------------------------------------------------- data

def resolve_classes(cfg: SupervisedConfig) -> LabeledList | ShardList | None:
    """List the labeled source once and set ``cfg.model.num_classes`` from it.

    Returns the listing that :func:`build_labeled_dataset` reads: the images of a folder / COCO json, the
    shards of a tar source (classes from the ``classes.json`` that ``mcl data shards --labels`` writes
    beside them), or None for the synthetic scenes.
    """
    d = cfg.data
    listing = None
    if d.source is None:
        found = len(LabeledSyntheticScenes.class_names)
    elif wants_shards(d.source, d.format):
        listing = list_shards(d.source)
        names = read_class_names(listing)
        if names is None and cfg.model.num_classes is None:
            raise UserError(f"{d.source}: labeled shards need the {CLASSES_NAME} that `mcl data shards --labels` "
                            f"writes beside them, or model.num_classes=<count>")
        found = cfg.model.num_classes if names is None else len(names)
    else:
        listing = list_labeled(d.source, d.image_root)
        found = listing.num_classes
    where = d.source or "the synthetic scenes"
    if cfg.model.num_classes is not None and cfg.model.num_classes != found:
        raise UserError(f"model.num_classes = {cfg.model.num_classes} but {where} has {found} classes: "
                        f"drop the override or fix the data")
    cfg.model.num_classes = found
    return listing


def build_labeled_dataset(cfg: SupervisedConfig, listing: LabeledList | ShardList | None = None):
    """MCL's 2 x L crops of each labeled image (class folders, COCO json, labeled tar shards, or the
    labelled synthetic scenes). Call :func:`resolve_classes` first (it sets ``model.num_classes``)."""
    d = cfg.data
    views = MultiCropViews(crop_size=d.crop_size, scale=tuple(d.crop_scale), crops_per_view=len(cfg.montage.ratios))
    if d.source is None:
        return LabeledSyntheticScenes(num=d.synthetic_num, seed=d.synthetic_seed, size=d.synthetic_size,
                                      transform=views, preset=d.synthetic_preset)
    if wants_shards(d.source, d.format):
        return ShardDataset(listing if isinstance(listing, ShardList) else list_shards(d.source), views,
                            max_side=d.max_image_side, seed=cfg.trainer.seed, shuffle_buffer=d.shard_shuffle_buffer,
                            num_classes=cfg.model.num_classes)
    listing = listing or list_labeled(d.source, d.image_root)
    return LabeledImageDataset(listing, views, max_side=d.max_image_side, source_name=str(d.source))


def supervised_datamodule(cfg: SupervisedConfig, listing: LabeledList | ShardList | None = None) -> DatasetModule:
    return DatasetModule(cfg, partial(build_labeled_dataset, listing=listing), collate_labeled)


# ---------------------------------------------------------------- Lightning

class SupervisedPretrainModule(PretrainBase):
    """Supervised montage pretraining: per-level cross-entropy, ``OptimConfig``'s optimiser and schedule."""

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg: SupervisedConfig = from_dict(SupervisedConfig, config)
        self.model = build_model(self.cfg)

    def trainable(self) -> nn.Module:
        return self.model

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        bs = self.note_batch(batch)
        out = self.model(batch["crops"], batch["labels"])
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=bs)
        for i, level in enumerate(out.levels):
            self.log(f"train/loss_level{i}", level.loss, batch_size=bs)
            self.log(f"train/acc_level{i}", level.accuracy, prog_bar=i == 0, batch_size=bs)
        return out.loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mcl_format"] = FORMAT_TAG
        checkpoint["mcl_method"] = "supervised_montage"
