"""Lightning glue for the MoCo v2 baseline, and the method-agnostic pieces it shares with other baselines.

Shared (used by ``mcl.supervised`` too, and living in ``mcl.train``): ``DatasetModule`` (a dataset factory + collate ->
shuffled drop-last loaders, sharded by Lightning), and ``mcl.train.PretrainBase`` (SyncBN with > 1 process,
global batch, optimiser + warm-up/cosine per step from ``OptimConfig``, images/s). The Trainer is
``mcl.train.build_trainer`` unchanged (it reads only ``cfg.trainer`` and ``cfg.optim.clip_grad_norm``).

MoCo-specific: :class:`MoCoPretrainModule` runs ``mcl.models.moco.MoCo``, checks that the queue is a
multiple of the global batch, updates the key encoder after every optimizer step, and tags the
checkpoint ``mcl_format = "mcl-pretrain/1"``, ``mcl_method = "moco_v2"``.
"""

from __future__ import annotations


import torch
from torch import nn
from torch.utils.data import Dataset

from mcl.checkpoints import FORMAT_TAG
from mcl.config import from_dict
from mcl.data.moco_views import TwoCropViews
from mcl.data.sources import collate_views
from mcl.models.ema import ema_update
from mcl.models.moco import MoCo
from mcl.moco_config import MoCoConfig
from mcl.optim import scaled_lr
from mcl.train import DatasetModule, PretrainBase, open_image_source


# ---------------------------------------------------------------- MoCo

def build_moco_model(cfg: MoCoConfig) -> MoCo:
    m = cfg.model
    return MoCo(arch=m.arch, head_hidden=m.head_hidden, embed_dim=m.embed_dim, queue_size=m.queue_size,
                temperature=m.temperature)


def build_moco_dataset(cfg: MoCoConfig) -> Dataset:
    """The configured image source (files, tar shards, or the embedded synthetic scenes), yielding two MoCo v2
    crops per image."""
    views = TwoCropViews(cfg.data.crop_size, tuple(cfg.data.crop_scale))
    return open_image_source(cfg.data, views, cfg.data.max_image_side, cfg.trainer.seed)


def moco_datamodule(cfg: MoCoConfig) -> DatasetModule:
    return DatasetModule(cfg, build_moco_dataset, collate_views)


class MoCoPretrainModule(PretrainBase):
    """MoCo v2: SGD + cosine, the queue of all-gathered keys, the key-encoder EMA after every optimizer step."""

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg: MoCoConfig = from_dict(MoCoConfig, config)
        self.model = build_moco_model(self.cfg)
        self._last_ema_step = 0

    def trainable(self) -> nn.Module:
        return self.model.online

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.model.check_queue(self.cfg.data.batch_size * self.trainer.world_size)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        bs = self.note_batch(batch)
        out = self.model(batch["crops"])
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=bs)
        self.log("train/pos_cos", out.stats.pos_cosine, batch_size=bs)
        self.log("train/neg_cos", out.stats.neg_cosine, batch_size=bs)
        self.log("train/acc", out.stats.accuracy, prog_bar=True, batch_size=bs)
        return out.loss

    def after_optimizer_step(self, ok) -> None:
        """The key-encoder EMA, right after the step (none where ``mcl.nonfinite`` undid the step)."""
        ema_update(self.model.target, self.model.online, self.cfg.model.momentum, ok)
        self._last_ema_step = self.trainer.global_step + 1

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mcl_last_ema_step"] = self._last_ema_step
        checkpoint["mcl_format"] = FORMAT_TAG
        checkpoint["mcl_method"] = "moco_v2"

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._last_ema_step = self._last_logged_step = int(checkpoint.get("mcl_last_ema_step", 0))


def describe_moco_plan(cfg: MoCoConfig) -> str:
    """``--dry-run`` text: batch, lr after scaling, queue, schedule."""
    t = cfg.trainer
    world = (t.devices if isinstance(t.devices, int) else 1) * t.num_nodes
    global_batch = cfg.data.batch_size * world * t.accumulate_grad_batches
    keys = cfg.data.batch_size * world
    m = cfg.model
    return "\n".join([
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
