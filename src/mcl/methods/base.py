"""What every pretraining method shares: the LightningModule base (:class:`PretrainBase`) and the data module.

A method (``mcl.methods.<name>``) is a subclass of :class:`PretrainBase` that names itself (``NAME``, the
recipe's ``method:`` and the checkpoint's ``mcl_method``), its config dataclass (``Config``), how its model
is built (``build_model``), its data (``datamodule``), its step (``training_step``) and its ``--dry-run``
text (``describe``). The base holds the rest: SyncBN with > 1 process, the speed settings, the optimiser
and its warm-up + cosine schedule per step (lr = base_lr x global_batch / 256, global_batch = batch_size x
processes x accumulation), the EMA target update after every optimizer step for methods with a target,
the non-finite guard around the step (``mcl.engine.nonfinite``), images/s and the checkpoint tags.
"""

from __future__ import annotations

import time
from typing import Any, Callable, ClassVar

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mcl.config import from_dict
from mcl.data.shards import ShardDataset, ShardLoader, open_shards, wants_shards
from mcl.data.sources import ImageDataset, SkipReport, collate_views, list_images
from mcl.data.synthetic import SyntheticScenes
from mcl.engine.checkpoints import FORMAT_TAG
from mcl.engine.nonfinite import NonFiniteGuard, injected_steps
from mcl.engine.resume import EpochSampler, SeededCollate, SeededItems, resume_position
from mcl.engine.speed import apply_speed_settings
from mcl.errors import UserError
from mcl.models.ema import ema_update
from mcl.optim import build_optimizer, scaled_lr, warmup_cosine_factor


def open_image_source(d, transform, max_side: int, seed: int) -> Dataset:
    """``data.source`` as a dataset of ``transform(image)``: the embedded synthetic scenes (no source), tar
    shards (``data.format``) or image files (folder, COCO json, ``.txt`` list); decoded at most ``max_side``."""
    if d.source is None:
        return SyntheticScenes(num=d.synthetic_num, seed=d.synthetic_seed, size=d.synthetic_size, transform=transform,
                               preset=d.synthetic_preset)
    if wants_shards(d.source, d.format):
        return open_shards(d.source, transform, max_side=max_side, seed=seed, shuffle_buffer=d.shard_shuffle_buffer)
    return ImageDataset(list_images(d.source, d.image_root), transform, max_side=max_side, source_name=str(d.source))


class DatasetModule(L.LightningDataModule):
    """``build(cfg) -> Dataset`` batched by ``collate``: shuffled, drop-last, ``cfg.data.batch_size`` per process.

    Files and the synthetic scenes: the order, the sharding across processes and the augmentation
    randomness are functions of ``trainer.seed``, the epoch and the item (``mcl.engine.resume``), and a
    resumed run starts at the batch after the last one its checkpoint trained on.
    A :class:`ShardDataset` (tar shards) is split here per process and served by a :class:`ShardLoader`
    (no shuffle flag, no sampler: Lightning does not inject one for an IterableDataset) that hands it the
    fit loop's epoch at every ``iter()``.
    """

    def __init__(self, cfg, build: Callable[[object], Dataset], collate: Callable = collate_views):
        super().__init__()
        self.cfg, self.build, self.collate = cfg, build, collate
        self.dataset = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = self.build(self.cfg)

    def train_dataloader(self) -> DataLoader:
        d = self.cfg.data
        world = self.trainer.world_size if self.trainer is not None else 1
        if len(self.dataset) < d.batch_size * world:
            raise UserError(f"the dataset has {len(self.dataset)} images, fewer than one global batch "
                            f"({d.batch_size} x {world} processes): lower data.batch_size or add images")
        if isinstance(self.dataset, ShardDataset):
            rank = self.trainer.global_rank if self.trainer is not None else 0
            return ShardLoader(self.dataset.split(rank, world, d.batch_size, d.num_workers), self._epoch,
                               batch_size=d.batch_size, drop_last=True, num_workers=d.num_workers,
                               collate_fn=self.collate, pin_memory=torch.cuda.is_available(),
                               persistent_workers=d.num_workers > 0)
        seed, rank = self.cfg.trainer.seed, self.trainer.global_rank if self.trainer is not None else 0
        sampler = EpochSampler(len(self.dataset), d.batch_size, seed, rank, world, resume_position(self.trainer))
        return DataLoader(SeededItems(self.dataset, seed), batch_size=d.batch_size, sampler=sampler, drop_last=True,
                          num_workers=d.num_workers, collate_fn=SeededCollate(self.collate, seed),
                          generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
                          persistent_workers=d.num_workers > 0)

    def _epoch(self) -> int:
        """The epoch Lightning hands samplers (``set_epoch``), restored on resume."""
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0


class PretrainBase(L.LightningModule):
    """What every pretraining method needs around its ``self.model`` (module docstring).

    A subclass sets ``NAME``, ``TITLE`` and ``Config`` and defines ``build_model``, ``datamodule``,
    ``trainable`` and ``training_step``; one with an EMA target (``model.target`` following ``model.online``)
    defines ``ema_momentum``. ``cfg`` must have ``data.batch_size``, ``optim`` (an ``OptimConfig``),
    ``trainer`` and ``model.sync_bn``.
    """

    NAME: ClassVar[str]                  # the recipe's `method:` and the checkpoint's mcl_method
    TITLE: ClassVar[str]                 # for people: "MoCo v2"
    Config: ClassVar[type]               # the method's config dataclass (mcl.config loads recipes into it)
    LOGS_MOMENTUM: ClassVar[bool] = False   # log train/momentum (a scheduled EMA momentum)

    model: nn.Module
    guard: NonFiniteGuard | None = None
    _last_logged_step: int = 0           # the optimizer step whose schedule was last logged
    _last_ema_step: int = 0              # the optimizer step of the last EMA target update
    _momentum: float | None = None       # the EMA momentum of that update

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = from_dict(self.Config, config)
        self.model = self.build_model(self.cfg)
        self.skip_report: SkipReport | None = None
        self._step_timer: float | None = None

    # ----- what a method defines ------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def prepare(cls, cfg) -> Any:
        """Work on a validated config before the module is built (supervised: the classes of the data);
        what it returns is handed to :meth:`datamodule`."""
        return None

    @classmethod
    def datamodule(cls, cfg, prepared: Any = None) -> L.LightningDataModule:
        raise NotImplementedError

    @classmethod
    def describe(cls, cfg) -> str:
        """``--dry-run`` text: the resolved plan, printed before any work."""
        raise NotImplementedError

    def trainable(self) -> nn.Module:
        """What the optimiser updates."""
        raise NotImplementedError

    def ema_momentum(self, step: int) -> float | None:
        """The EMA momentum of optimizer step ``step`` (None: the method has no target encoder)."""
        return None

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        """The end-of-run text's figures (``train/*`` as last logged): every one by default."""
        return [f"  {k[len('train/'):]:<14} {v:.4f}" for k, v in sorted(metrics.items())]

    # ----- shared ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        mode = self.cfg.model.sync_bn
        if mode is True or (mode == "auto" and self.trainer.world_size > 1):
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        t = self.cfg.trainer
        strategy = getattr(self.trainer, "strategy", None)
        device_type = strategy.root_device.type if strategy is not None else "cpu"
        applied = apply_speed_settings(self.model, t.channels_last, t.compile, device_type)
        if applied and getattr(self.trainer, "is_global_zero", True):
            print(f"speed settings: {', '.join(applied)}", flush=True)
        self.skip_report = SkipReport(self.cfg.data.source or "the synthetic scenes")
        if t.skip_nonfinite:
            self.guard = NonFiniteGuard(injected_steps(), use_loss=self.trainer.world_size == 1)

    # ----- the non-finite guard around the optimizer step (mcl.engine.nonfinite) -------------------------
    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if self.guard is not None:
            loss = self.guard.observe_loss(loss, self.trainer.global_step + 1)
        super().backward(loss, *args, **kwargs)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.guard is not None:
            self.guard.observe_grads(optimizer)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        if self.guard is not None:
            self.guard.snapshot(optimizer, self.model)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.after_optimizer_step(self.guard.restore() if self.guard is not None else None)

    def after_optimizer_step(self, ok: torch.Tensor | None) -> None:
        """Right after every optimizer step, before any checkpoint of that step is written: the EMA target
        update of step k = global_step + 1, for a method with a target. ``ok``: the device flag of
        ``mcl.engine.nonfinite`` (False: the step was undone, and so is the update), or None."""
        step = self.trainer.global_step + 1
        momentum = self.ema_momentum(step)
        if momentum is None:
            return
        ema_update(self.model.target, self.model.online, momentum, ok)
        self._momentum, self._last_ema_step = momentum, step

    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def global_batch(self) -> int:
        return self.cfg.data.batch_size * self.world_size() * self.cfg.trainer.accumulate_grad_batches

    def steps_per_epoch(self) -> int:
        return max(len(self.trainer.datamodule.dataset) // self.global_batch(), 1)

    def total_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self):
        o = self.cfg.optim
        lr = scaled_lr(o.base_lr, self.global_batch())
        optimizer = build_optimizer(self.trainable(), o.name, lr, o.weight_decay, o.momentum, o.trust_coefficient,
                                    o.exclude_bn_bias)
        total = self.total_steps()
        warmup = o.warmup_steps if o.warmup_steps is not None else round(o.warmup_epochs * self.steps_per_epoch())
        warmup = min(int(warmup), total)
        min_lr = min(o.min_lr, lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: warmup_cosine_factor(k, total, warmup, lr, min_lr, o.warmup_start_ratio))
        self.planned = {"lr": lr, "total_steps": total, "warmup_steps": warmup, "global_batch": self.global_batch()}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def note_batch(self, batch: dict) -> int:
        """Report skipped files and log images/s; returns the per-process batch size."""
        if batch.get("skipped") and self.skip_report is not None:
            self.skip_report.update(batch["skipped"])
        bs = batch["crops"].shape[0]
        now = time.perf_counter()
        if self._step_timer is not None:
            self.log("img_per_s", bs * self.world_size() / max(now - self._step_timer, 1e-9), prog_bar=True,
                     batch_size=bs)
        self._step_timer = now
        return bs

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Once per optimizer step (not per accumulated batch): ``train/momentum`` of a method with a target,
        ``train/lr`` and ``train/global_step`` (the checkpoint callback monitors the latter)."""
        if self.trainer.global_step > self._last_logged_step:
            self._last_logged_step = self.trainer.global_step
            if self.LOGS_MOMENTUM and self._momentum is not None:
                self.log("train/momentum", self._momentum, batch_size=1)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)
            self.log("train/global_step", float(self.trainer.global_step), batch_size=1)

    def on_train_epoch_end(self) -> None:
        if self.skip_report is not None and self.skip_report.count:
            print(self.skip_report.summary(), flush=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mcl_format"] = FORMAT_TAG
        checkpoint["mcl_method"] = self.NAME
        checkpoint["mcl_last_ema_step"] = self._last_ema_step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._last_ema_step = self._last_logged_step = int(checkpoint.get("mcl_last_ema_step", 0))
