"""Supervised montage pretraining (docs/method.md, "Supervised montage pretraining"): MCL's montage pyramid,
each cell classifies its source image. Its config, its LightningModule and its ``--dry-run`` plan.

The model is ``mcl.models.supervised.SupervisedMontage`` (MCL's online encoder and one linear head per level),
its loss ``mcl.losses.montage_classification_loss``. Optimisation as MCL's paper mode (LARS, warm-up +
cosine, ``OptimConfig`` defaults); labels: ``mcl.data.labeled`` (class subfolders; a COCO json labels each
image with its largest-area category; labeled tar shards with their ``classes.json``).
Checkpoint keys equal MCL's online encoder (``model.online.backbone.body/fpn``, ``model.online.neck``),
so ``mcl export`` and ``mcl finetune --init`` take these checkpoints unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from torch import Tensor, nn

from mcl.config import Check
from mcl.data.labeled import LabeledImageDataset, LabeledList, LabeledSyntheticScenes, collate_labeled, list_labeled
from mcl.data.shard_index import CLASSES_NAME, ShardList, list_shards, read_class_names
from mcl.data.shards import ShardDataset, wants_shards
from mcl.data.views import MultiCropViews
from mcl.errors import UserError
from mcl.methods.base import DatasetModule, PretrainBase
from mcl.methods.mcl import montage_geometry_checks
from mcl.models.supervised import SupervisedMontage
from mcl.montage import level_specs
from mcl.optim import scaled_lr
from mcl.sections import DataConfig, EncoderConfig, MontageConfig, OptimConfig, ProbeConfig, TrainerConfig, loader_only


@dataclass
class SupervisedModelConfig(EncoderConfig):
    num_classes: int | None = None     # None: taken from the data (class folders / json categories)

    def checks(self) -> list[Check]:
        return super().checks() + [
            (self.num_classes is None or self.num_classes >= 2, "num_classes", "must be >= 2 or null (from the data)"),
        ]


@dataclass
class SupervisedLossConfig:
    level_weights: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125, 0.125])

    def checks(self) -> list[Check]:
        return [(all(w >= 0 for w in self.level_weights), "level_weights", "must be >= 0")]


@dataclass
class SupervisedConfig:
    method: Literal["supervised_montage"] = "supervised_montage"
    data: DataConfig = field(default_factory=DataConfig)
    montage: MontageConfig = field(default_factory=MontageConfig)
    model: SupervisedModelConfig = field(default_factory=SupervisedModelConfig)
    loss: SupervisedLossConfig = field(default_factory=SupervisedLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(out="runs/supervised"))
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def checks(self) -> list[Check]:
        return [loader_only(self.data, "supervised montage")] + montage_geometry_checks(self)


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


# ---------------------------------------------------------------- Lightning

class SupervisedPretrainModule(PretrainBase):
    """Supervised montage pretraining: per-level cross-entropy, ``OptimConfig``'s optimiser and schedule."""

    NAME = "supervised_montage"
    TITLE = "Supervised montage"
    Config = SupervisedConfig

    @classmethod
    def build_model(cls, cfg: SupervisedConfig) -> SupervisedMontage:
        return SupervisedMontage.from_config(cfg)

    @classmethod
    def prepare(cls, cfg: SupervisedConfig) -> LabeledList | ShardList | None:
        """The classes of the data (sets ``model.num_classes``); the listing goes to :meth:`datamodule`."""
        return resolve_classes(cfg)

    @classmethod
    def datamodule(cls, cfg: SupervisedConfig, prepared=None) -> DatasetModule:
        return DatasetModule(cfg, partial(build_labeled_dataset, listing=prepared), collate_labeled)

    @classmethod
    def describe(cls, cfg: SupervisedConfig) -> str:
        """Classes, batch, lr, levels."""
        global_batch = cfg.trainer.planned_global_batch(cfg.data.batch_size)
        specs = level_specs(cfg.montage.ratios, cfg.montage.repeats)
        lines = [f"method: {cls.TITLE}",
                 f"supervised montage: {cfg.model.arch}, {cfg.model.num_classes} classes from "
                 f"{cfg.data.source or 'the synthetic scenes'}",
                 f"global batch {global_batch}; lr = {cfg.optim.base_lr} x {global_batch}/256 = "
                 f"{scaled_lr(cfg.optim.base_lr, global_batch):.4g} ({cfg.optim.name})"]
        for i, (s, w) in enumerate(zip(specs, cfg.loss.level_weights)):
            lines.append(f"level {i}: ratio {s.ratio}, {s.num_montages(cfg.data.batch_size)} montages/view/device, "
                         f"weight {w}")
        return "\n".join(lines)

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
