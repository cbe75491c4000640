"""MoCo v2 (arXiv 1911.05722, 2003.04297; docs/method.md, "MoCo v2"), the baseline, with MCL's data,
trainer, checkpoints and export: its config, its LightningModule and its ``--dry-run`` plan.

Defaults are MoCo v2's: ResNet-50, MLP head 2048 -> 128, queue 65536, T = 0.2, momentum 0.999, SGD
lr 0.03 x global_batch / 256, momentum 0.9, weight decay 1e-4 on every parameter, cosine to 0, no warm-up,
200 epochs, global batch 256 (here 8 devices x 32). The model is ``mcl.models.moco.MoCo``, its loss
``mcl.losses.moco_loss``; here the queue is checked against the global batch at setup, and the key encoder
follows the online one (constant momentum) after every optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from mcl.config import Check
from mcl.data.moco_views import TwoCropViews
from mcl.data.sources import collate_views
from mcl.errors import UserError
from mcl.methods.base import DatasetModule, PretrainBase, open_image_source
from mcl.models.moco import MoCo
from mcl.optim import scaled_lr
from mcl.sections import Arch, DataConfig, OptimConfig, ProbeConfig, TrainerConfig, loader_only


@dataclass
class MoCoModelConfig:
    arch: Arch = "resnet50"
    head_hidden: int = 2048
    embed_dim: int = 128
    queue_size: int = 65536            # K; must be a multiple of the global batch (batch_size x processes)
    temperature: float = 0.2
    momentum: float = 0.999            # key encoder EMA, constant
    sync_bn: bool | Literal["auto"] = "auto"   # auto: SyncBN with > 1 process (instead of shuffled BN)

    def checks(self) -> list[Check]:
        return [
            (self.head_hidden >= 1, "head_hidden", "must be >= 1"),
            (self.embed_dim >= 1, "embed_dim", "must be >= 1"),
            (self.temperature > 0, "temperature", "must be > 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
        ]


@dataclass
class MoCoConfig:
    """MoCo v2's recipe (module docstring); the data / optim / trainer / probe sections are MCL's."""

    method: Literal["moco_v2"] = "moco_v2"
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=32))
    model: MoCoModelConfig = field(default_factory=MoCoModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="sgd", base_lr=0.03, weight_decay=1e-4, momentum=0.9, exclude_bn_bias=False, warmup_epochs=0.0,
        min_lr=0.0, clip_grad_norm=None))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(out="runs/moco", max_epochs=200))
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def checks(self) -> list[Check]:
        m, d = self.model, self.data
        return [
            loader_only(d, "MoCo v2"),
            (m.queue_size >= 1 and m.queue_size % d.batch_size == 0, "model.queue_size",
             f"must be a multiple of data.batch_size ({d.batch_size}) x processes"),
        ]


def build_dataset(cfg: MoCoConfig) -> Dataset:
    """The configured image source (files, tar shards, or the embedded synthetic scenes), yielding two MoCo v2
    crops per image."""
    views = TwoCropViews(cfg.data.crop_size, tuple(cfg.data.crop_scale))
    return open_image_source(cfg.data, views, cfg.data.max_image_side, cfg.trainer.seed)


class MoCoPretrainModule(PretrainBase):
    """MoCo v2: SGD + cosine, the queue of all-gathered keys, the key-encoder EMA after every optimizer step."""

    NAME = "moco_v2"
    TITLE = "MoCo v2"
    Config = MoCoConfig

    @classmethod
    def build_model(cls, cfg: MoCoConfig) -> MoCo:
        return MoCo.from_config(cfg)

    @classmethod
    def datamodule(cls, cfg: MoCoConfig, prepared=None) -> DatasetModule:
        return DatasetModule(cfg, build_dataset, collate_views)

    @classmethod
    def describe(cls, cfg: MoCoConfig) -> str:
        """Batch, lr after scaling, queue, schedule."""
        t, m = cfg.trainer, cfg.model
        world = t.planned_world_size()
        global_batch = t.planned_global_batch(cfg.data.batch_size)
        keys = cfg.data.batch_size * world
        return "\n".join([
            f"method: {cls.TITLE}",
            f"MoCo v2: {m.arch}, head {m.head_hidden} -> {m.embed_dim}, T = {m.temperature}, momentum {m.momentum}",
            f"per-device batch {cfg.data.batch_size}; processes {world}; accumulation {t.accumulate_grad_batches}; "
            f"global batch {global_batch}",
            f"lr = {cfg.optim.base_lr} x {global_batch}/256 = {scaled_lr(cfg.optim.base_lr, global_batch):.4g} "
            f"({cfg.optim.name}, weight decay {cfg.optim.weight_decay})",
            f"queue {m.queue_size} keys = {m.queue_size / keys:g} steps of {keys} keys"
            + ("" if m.queue_size % keys == 0 else "  <- NOT a multiple: the run will refuse to start"),
            f"crops: 2 x {cfg.data.crop_size}px per image",
            f"schedule: {t.max_steps} optimizer steps" if t.max_steps > 0 else f"schedule: {t.max_epochs} epochs",
        ])

    def trainable(self) -> nn.Module:
        return self.model.online

    def ema_momentum(self, step: int) -> float:
        return self.cfg.model.momentum

    def setup(self, stage: str) -> None:
        super().setup(stage)
        keys = self.cfg.data.batch_size * self.trainer.world_size
        try:
            self.model.check_queue(keys)
        except ValueError as exc:
            raise UserError(f"model.queue_size = {self.cfg.model.queue_size} must be a multiple of data.batch_size x "
                            f"processes ({keys}): {exc}") from None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        bs = self.note_batch(batch)
        out = self.model(batch["crops"])
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=bs)
        self.log("train/pos_cos", out.stats.pos_cosine, batch_size=bs)
        self.log("train/neg_cos", out.stats.neg_cosine, batch_size=bs)
        self.log("train/acc", out.stats.accuracy, prog_bar=True, batch_size=bs)
        return out.loss
