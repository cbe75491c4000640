"""Lightning glue for MCL pretraining: the data module, the LightningModule and the Trainer factory.

Lightning provides DDP across devices and nodes, SLURM, mixed precision, SyncBN, gradient
clipping and accumulation, checkpoint/resume, the progress bar and the loggers. This module adds
what MCL needs: the model, LARS with the warm-up + cosine schedule, the EMA update after every
optimizer step, and per-level logging; and, for every method, the reliability pieces: a data order
and augmentation that resume exactly (``mcl.resume``), non-finite steps skipped on the device
(``mcl.nonfinite``) and a checkpoint-then-stop on SIGTERM/SIGINT/SIGUSR1 (``mcl.preemption``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mcl.checkpoints import FORMAT_TAG, AtomicCheckpointIO, newest_valid_checkpoint
from mcl.config import from_dict, to_dict
from mcl.csvlog import ResumableCSVLogger
from mcl.data.shards import ShardDataset, ShardLoader, open_shards, wants_shards
from mcl.data.sources import ImageDataset, SkipReport, collate_views, list_images
from mcl.data.synthetic import SyntheticScenes
from mcl.data.device_views import CanvasCollate, CanvasImage, DeviceMultiCropViews, canvas_side
from mcl.data.views import MultiCropViews
from mcl.errors import UserError
from mcl.models.ema import cosine_momentum, ema_update
from mcl.models.mcl import MCL
from mcl.nonfinite import NonFiniteGuard, NonFiniteMonitor, injected_steps
from mcl.optim import build_optimizer, scaled_lr, warmup_cosine_factor
from mcl.preemption import GracefulStop
from mcl.pretrain_config import PretrainConfig
from mcl.resume import EpochSampler, ResumeState, SeededCollate, SeededItems, resume_position
from mcl.speed import apply_speed_settings


def build_model(cfg: PretrainConfig) -> MCL:
    """The MCL model described by a config (validates the geometry)."""
    m = cfg.model
    model = MCL(arch=m.arch, crop_size=cfg.data.crop_size, cell_size=m.cell_size, ratios=cfg.montage.ratios,
                repeats=cfg.montage.repeats, fpn_channels=m.fpn_channels, neck_convs=m.neck_convs,
                neck_hidden=m.neck_hidden, embed_dim=m.embed_dim, predictor_hidden=m.predictor_hidden,
                level_weights=cfg.loss.level_weights, temperature=cfg.loss.temperature,
                compute_mode=m.compute_mode, interpolation=cfg.montage.interpolation, positives=cfg.loss.positives,
                activation_checkpointing=m.activation_checkpointing)
    model.num_montages(cfg.data.batch_size)
    return model


def build_views(cfg: PretrainConfig) -> MultiCropViews | CanvasImage:
    """The loader's per-image transform: the 8-crop augmentation (4 crops per view, one per level), or with
    ``data.augment_on=device`` only the canvas (the crops are then made by ``build_device_views`` in the step)."""
    if cfg.data.augment_on == "device":
        return CanvasImage(canvas_side(cfg.data.crop_size, cfg.data.device_canvas))
    return MultiCropViews(crop_size=cfg.data.crop_size, scale=tuple(cfg.data.crop_scale),
                          crops_per_view=len(cfg.montage.ratios))


def build_device_views(cfg: PretrainConfig) -> DeviceMultiCropViews | None:
    """``data.augment_on=device``: the batched 8-crop augmentation run in the training step; else None."""
    if cfg.data.augment_on != "device":
        return None
    return DeviceMultiCropViews(crop_size=cfg.data.crop_size, scale=tuple(cfg.data.crop_scale),
                                crops_per_view=len(cfg.montage.ratios))


def open_image_source(d, transform, max_side: int, seed: int) -> Dataset:
    """``data.source`` as a dataset of ``transform(image)``: the embedded synthetic scenes (no source), tar
    shards (``data.format``) or image files (folder, COCO json, ``.txt`` list); decoded at most ``max_side``."""
    if d.source is None:
        return SyntheticScenes(num=d.synthetic_num, seed=d.synthetic_seed, size=d.synthetic_size, transform=transform,
                               preset=d.synthetic_preset)
    if wants_shards(d.source, d.format):
        return open_shards(d.source, transform, max_side=max_side, seed=seed, shuffle_buffer=d.shard_shuffle_buffer)
    return ImageDataset(list_images(d.source, d.image_root), transform, max_side=max_side, source_name=str(d.source))


def build_dataset(cfg: PretrainConfig):
    """The configured image source (or the embedded synthetic scenes), yielding 8-crop samples."""
    views = build_views(cfg)
    d = cfg.data
    max_side = d.max_image_side if d.augment_on == "loader" else min(d.max_image_side, views.side)
    return open_image_source(d, views, max_side, cfg.trainer.seed)


class DatasetModule(L.LightningDataModule):
    """``build(cfg) -> Dataset`` batched by ``collate``: shuffled, drop-last, ``cfg.data.batch_size`` per process.

    Files and the synthetic scenes: the order, the sharding across processes and the augmentation
    randomness are functions of ``trainer.seed``, the epoch and the item (``mcl.resume``), and a
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


class MCLDataModule(DatasetModule):
    """MCL's batches: ``B`` images x ``2L`` crops from the configured source (or the synthetic scenes)."""

    def __init__(self, cfg: PretrainConfig):
        device_views = build_device_views(cfg)
        super().__init__(cfg, build_dataset, CanvasCollate(device_views) if device_views else collate_views)


class PretrainBase(L.LightningModule):
    """What every pretraining method needs around its ``self.model``; subclasses define ``trainable()``.

    ``cfg`` must have ``data.batch_size``, ``optim`` (an ``OptimConfig``), ``trainer`` and ``model.sync_bn``.
    lr = base_lr x global_batch / 256, with global_batch = batch_size x processes x accumulation.
    """

    model: nn.Module
    guard: NonFiniteGuard | None = None
    _last_logged_step: int = 0       # the optimizer step whose schedule was last logged

    def trainable(self) -> nn.Module:
        raise NotImplementedError

    def after_optimizer_step(self, ok: torch.Tensor | None) -> None:
        """Called right after every optimizer step, before any checkpoint of that step is written.

        ``ok`` is the device flag of ``mcl.nonfinite`` (False: the step was undone), or None.
        """

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

    # ----- the non-finite guard around the optimizer step (mcl.nonfinite) ------------------------------
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
        if batch.get("skipped") and getattr(self, "skip_report", None) is not None:
            self.skip_report.update(batch["skipped"])
        bs = batch["crops"].shape[0]
        now = time.perf_counter()
        last = getattr(self, "_step_timer", None)
        if last is not None:
            self.log("img_per_s", bs * self.world_size() / max(now - last, 1e-9), prog_bar=True, batch_size=bs)
        self._step_timer = now
        return bs

    def log_schedule(self) -> None:
        """``train/lr`` and ``train/global_step`` (the checkpoint callback monitors the latter)."""
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)
        self.log("train/global_step", float(self.trainer.global_step), batch_size=1)

    def log_step_extras(self) -> None:
        """Per-optimizer-step figures of a method, logged beside the schedule (none by default)."""

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Once per optimizer step (not per accumulated batch): the method's extras and the schedule."""
        if self.trainer.global_step > self._last_logged_step:
            self._last_logged_step = self.trainer.global_step
            self.log_step_extras()
            self.log_schedule()

    def on_train_epoch_end(self) -> None:
        report = getattr(self, "skip_report", None)
        if report is not None and report.count:
            print(report.summary(), flush=True)


class MCLPretrainModule(PretrainBase):
    """The MCL model, LARS + warm-up/cosine, the EMA target update, and per-level logging."""

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg: PretrainConfig = from_dict(PretrainConfig, config)
        self.model = build_model(self.cfg)
        self.views_on_device = build_device_views(self.cfg)     # data.augment_on=device: crops made in the step
        self.skip_report: SkipReport | None = None
        self._last_ema_step = 0
        self._momentum = cosine_momentum(0, 1, self.cfg.model.momentum_base)
        self._step_timer: float | None = None

    def trainable(self) -> torch.nn.Module:
        """What the optimiser updates: the online encoder and the predictors (not the EMA target)."""
        return torch.nn.ModuleDict({"online": self.model.online, "predictors": self.model.predictors})

    # ----- the step --------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.views_on_device is not None:                   # canvases -> (B, 2k, 3, S, S), under no_grad
            batch["crops"] = self.views_on_device.apply(batch["canvas"], batch["params"])
        bs = self.note_batch(batch)
        out = self.model(batch["crops"])
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=bs)
        for i, s in enumerate(out.levels):
            self.log(f"train/loss_level{i}", s.loss, batch_size=bs)
            self.log(f"train/pos_cos_level{i}", s.pos_cosine, batch_size=bs)
            self.log(f"train/neg_cos_level{i}", s.neg_cosine, batch_size=bs)
        return out.loss

    def after_optimizer_step(self, ok: torch.Tensor | None) -> None:
        """The EMA target update of step k = global_step + 1 (none where the step was skipped)."""
        step = self.trainer.global_step + 1
        self._momentum = cosine_momentum(step, self.total_steps(), self.cfg.model.momentum_base)
        ema_update(self.model.target, self.model.online, self._momentum, ok)
        self._last_ema_step = step

    def log_step_extras(self) -> None:
        self.log("train/momentum", self._momentum, batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mcl_last_ema_step"] = self._last_ema_step
        checkpoint["mcl_format"] = FORMAT_TAG

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._last_ema_step = self._last_logged_step = int(checkpoint.get("mcl_last_ema_step", 0))


def build_trainer(cfg: PretrainConfig, run_dir: Path, extra_callbacks: list[Callback] | None = None) -> L.Trainer:
    """A Lightning Trainer with checkpointing every N steps (newest K kept, plus ``last.ckpt``) and logs,
    plus ``ResumeState``, ``NonFiniteMonitor`` and ``GracefulStop`` (in that order, before the checkpoint)."""
    t = cfg.trainer
    checkpoint = ModelCheckpoint(dirpath=run_dir, filename="step{step:07d}", auto_insert_metric_name=False,
                                 every_n_train_steps=t.checkpoint_every_steps, save_last=True,
                                 monitor="train/global_step", mode="max", save_top_k=t.keep_checkpoints)
    callbacks: list[Callback] = [ResumeState(),
                                 NonFiniteMonitor(run_dir, t.nonfinite_check_every, t.max_nonfinite_steps),
                                 GracefulStop(t.stop_check_every), checkpoint]
    if t.progress_bar:  # the bar reads the logged loss (a host sync) only when it refreshes
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_steps)))
    callbacks += extra_callbacks or []
    loggers = [ResumableCSVLogger(run_dir, name="logs", version="", flush_logs_every_n_steps=t.log_every_steps),
               TensorBoardLogger(run_dir, name="logs", version="")]
    precision = resolve_precision(t.precision)
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():            # GracefulStop saves and requeues; Lightning's handler would not save
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        default_root_dir=run_dir, max_epochs=t.max_epochs if t.max_steps <= 0 else -1, max_steps=t.max_steps,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=precision, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.clip_grad_norm, gradient_clip_algorithm="norm",
        log_every_n_steps=t.log_every_steps, callbacks=callbacks, logger=loggers,
        deterministic=t.deterministic, enable_progress_bar=t.progress_bar, enable_model_summary=False,
        use_distributed_sampler=False, plugins=plugins,     # sharding: DatasetModule's EpochSampler
    )


def resolve_precision(precision: str) -> str:
    """``auto``: bf16-mixed on GPUs that support it, 16-mixed on other GPUs, 32-true on the CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """``last.ckpt`` if it is valid, else the newest valid ``*.ckpt`` in the run folder, else None."""
    return newest_valid_checkpoint(run_dir)


def config_dict(cfg: PretrainConfig) -> dict:
    return to_dict(cfg)
