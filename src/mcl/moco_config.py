"""The MoCo v2 baseline's config tree: MoCo v2 defaults, the data / optim / trainer sections of MCL's.

MoCo v2 (arXiv 2003.04297): ResNet-50, MLP head 2048 -> 128, queue 65536, T = 0.2, momentum 0.999,
SGD lr 0.03 x global_batch / 256, momentum 0.9, weight decay 1e-4 on every parameter, cosine to 0,
no warm-up, 200 epochs, global batch 256 (here 8 devices x 32).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mcl.errors import UserError
from mcl.pretrain_config import DataConfig, OptimConfig, TrainerConfig, eval_key


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


def validate(cfg: MoCoConfig) -> None:
    """Refuse values that cannot work, with one line naming the key (the queue/world check runs at setup)."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.trainer
    checks = [
        (d.batch_size >= 2, "data.batch_size", "must be >= 2 (BatchNorm needs two samples)"),
        (d.crop_size >= 32, "data.crop_size", "must be >= 32"),
        (len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1, "data.crop_scale",
         "must be [min, max] with 0 < min <= max <= 1"),
        (d.num_workers >= 0, "data.num_workers", "must be >= 0"),
        (d.synthetic_num >= d.batch_size or d.source is not None, "data.synthetic_num", "must be >= data.batch_size"),
        (m.head_hidden >= 1, "model.head_hidden", "must be >= 1"),
        (m.embed_dim >= 1, "model.embed_dim", "must be >= 1"),
        (m.queue_size >= 1 and m.queue_size % d.batch_size == 0, "model.queue_size",
         f"must be a multiple of data.batch_size ({d.batch_size}) x processes"),
        (m.temperature > 0, "model.temperature", "must be > 0"),
        (0 <= m.momentum < 1, "model.momentum", "must be in [0, 1)"),
        (o.base_lr > 0, "optim.base_lr", "must be > 0"),
        (o.weight_decay >= 0, "optim.weight_decay", "must be >= 0"),
        (0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)"),
        (o.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0"),
        (0 < o.warmup_start_ratio <= 1, "optim.warmup_start_ratio", "must be in (0, 1]"),
        (o.min_lr >= 0, "optim.min_lr", "must be >= 0"),
        (o.clip_grad_norm is None or o.clip_grad_norm > 0, "optim.clip_grad_norm", "must be > 0 or null"),
        (t.max_epochs >= 1 or t.max_steps > 0, "trainer.max_epochs", "must be >= 1"),
        (t.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "must be >= 1"),
        (t.checkpoint_every_steps >= 1, "trainer.checkpoint_every_steps", "must be >= 1"),
        (t.keep_checkpoints >= 1, "trainer.keep_checkpoints", "must be >= 1"),
        (t.log_every_steps >= 1, "trainer.log_every_steps", "must be >= 1"),
        (t.num_nodes >= 1, "trainer.num_nodes", "must be >= 1"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise UserError(f"{key} = {eval_key(cfg, key)!r} {why}")
