"""The MoCo v2 baseline's config tree: MoCo v2 defaults, the data / optim / trainer sections of MCL's.

MoCo v2 (arXiv 2003.04297): ResNet-50, MLP head 2048 -> 128, queue 65536, T = 0.2, momentum 0.999,
SGD lr 0.03 x global_batch / 256, momentum 0.9, weight decay 1e-4 on every parameter, cosine to 0,
no warm-up, 200 epochs, global batch 256 (here 8 devices x 32).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mcl.pretrain_config import (DataConfig, OptimConfig, ProbeConfig, TrainerConfig, data_checks,
                                 optim_checks, probe_checks, run_checks, trainer_checks)


@dataclass
class MoCoModelConfig:
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    head_hidden: int = 2048
    embed_dim: int = 128
    queue_size: int = 65536            # K; must be a multiple of the global batch (batch_size x processes)
    temperature: float = 0.2
    momentum: float = 0.999            # key encoder EMA, constant
    sync_bn: bool | Literal["auto"] = "auto"   # auto: SyncBN with > 1 process (instead of shuffled BN)


def _data() -> DataConfig:
    return DataConfig(batch_size=32)


def _optim() -> OptimConfig:
    return OptimConfig(name="sgd", base_lr=0.03, weight_decay=1e-4, momentum=0.9, exclude_bn_bias=False,
                       warmup_epochs=0.0, min_lr=0.0, clip_grad_norm=None)


def _trainer() -> TrainerConfig:
    return TrainerConfig(out="runs/moco", max_epochs=200)


@dataclass
class MoCoConfig:
    data: DataConfig = field(default_factory=_data)
    model: MoCoModelConfig = field(default_factory=MoCoModelConfig)
    optim: OptimConfig = field(default_factory=_optim)
    trainer: TrainerConfig = field(default_factory=_trainer)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


def validate(cfg: MoCoConfig) -> None:
    """Refuse values that cannot work, with one line naming the key (the queue/world check runs at setup)."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.trainer
    run_checks(cfg, data_checks(d) + [
        (d.augment_on == "loader", "data.augment_on", "must be loader (only MCL pretraining augments on the device)"),
        (m.head_hidden >= 1, "model.head_hidden", "must be >= 1"),
        (m.embed_dim >= 1, "model.embed_dim", "must be >= 1"),
        (m.queue_size >= 1 and m.queue_size % d.batch_size == 0, "model.queue_size",
         f"must be a multiple of data.batch_size ({d.batch_size}) x processes"),
        (m.temperature > 0, "model.temperature", "must be > 0"),
        (0 <= m.momentum < 1, "model.momentum", "must be in [0, 1)"),
    ] + optim_checks(o) + trainer_checks(t) + probe_checks(cfg.probe))
