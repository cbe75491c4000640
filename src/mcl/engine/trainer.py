"""The Lightning Trainer every pretraining method runs under, with the engine's callbacks and plugins."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from mcl.engine.checkpoints import AtomicCheckpointIO
from mcl.engine.csvlog import ResumableCSVLogger
from mcl.engine.nonfinite import NonFiniteMonitor
from mcl.engine.preemption import GracefulStop
from mcl.engine.resume import ResumeState


def build_trainer(cfg, run_dir: Path, extra_callbacks: list[Callback] | None = None) -> L.Trainer:
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
