"""The online dense probe: a Lightning callback that probes the online encoder during pretraining.

Every ``probe.every_steps`` optimizer steps, on the global-zero process only, the online encoder's weights
are copied (as export renames them) into a separate :class:`~mcl.probes.encoder.FrozenEncoder`, which
encodes a small labelled set; RoI kNN / linear accuracy and linear-segmentation mIoU
(``mcl.probes.run.probe_features``) are logged to every logger (``metrics.csv``, TensorBoard) as
``probe/*`` at that step and drawn in ``summary.png``.

What it leaves alone, so that a resumed run reproduces the uninterrupted one exactly: the training model
(its copy is read, never run: BatchNorm statistics untouched), the RNG (everything runs inside
``torch.random.fork_rng``), the data order (its images are its own) and the optimizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from mcl.probes.data import ProbeSet, load_probe_set, synthetic_probe_sets
from mcl.probes.run import FIGURES

# what the online probe logs: every figure of mcl probe but frozen detection, as probe/<name>
ONLINE_FIGURES = tuple(name for name, (group, *_) in FIGURES.items() if group != "detection")
METRICS = tuple(f"probe/{name}" for name in ONLINE_FIGURES)


def split_even_odd(data: ProbeSet) -> tuple[ProbeSet, ProbeSet]:
    """Images 0, 2, 4, ... and 1, 3, 5, ... of one set, as probe-train and held-out."""
    def take(start: int, name: str) -> ProbeSet:
        return ProbeSet(name, data.images[start::2], data.class_maps[start::2], data.boxes[start::2],
                        data.box_labels[start::2], data.label_map, data.box_masks)
    return take(0, "train"), take(1, "val")


def probe_sets(cfg, run_dir: Path) -> tuple[ProbeSet, ProbeSet]:
    """The probe's two splits for a ``ProbeConfig``."""
    if cfg.json is not None:
        return split_even_odd(load_probe_set(cfg.json, cfg.images, cfg.image_size, name="probe"))
    train, val, _ = synthetic_probe_sets(run_dir / "probe_data", cfg.synthetic_train, cfg.synthetic_val,
                                         cfg.synthetic_size, cfg.synthetic_seed, cfg.image_size, cfg.synthetic_preset)
    return train, val


class OnlineProbe(Callback):
    """Probes ``pl_module.model.online`` every ``cfg.every_steps`` steps (module docstring)."""

    def __init__(self, cfg, run_dir: Path, arch: str, fpn_channels: int | None):
        self.cfg, self.run_dir, self.arch, self.fpn_channels = cfg, Path(run_dir), arch, fpn_channels
        self.encoder = None
        self.sets: tuple[ProbeSet, ProbeSet] | None = None
        self.last_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        """A run resumed at a probe step probes it again (same weights, same figures): resuming drops the CSV
        rows from the first step it logs on (``mcl.engine.csvlog``), and that includes the probe row of this step."""
        if trainer.global_step > 0 and trainer.global_step % self.cfg.every_steps == 0:
            self._probe(trainer, pl_module)
        self.last_step = trainer.global_step

    def _prepare(self) -> None:
        """The labelled splits and the encoder, at the first probe (a short run that never probes pays nothing)."""
        from mcl.probes.encoder import FrozenEncoder

        self.sets = probe_sets(self.cfg, self.run_dir)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)            # the parts the online encoder lacks (a MoCo FPN) are the same every run
            self.encoder = FrozenEncoder("random", self.arch, self.fpn_channels)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.last_step or step % self.cfg.every_steps:
            return
        self.last_step = step
        self._probe(trainer, pl_module)

    def _probe(self, trainer, pl_module) -> None:
        """Measure (global-zero process only) and log ``probe/*`` at the current optimizer step."""
        if not trainer.is_global_zero:
            return
        if self.sets is None:
            self._prepare()
        metrics = self.measure(pl_module)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def measure(self, pl_module) -> dict[str, float]:
        """``{probe/<name>: value}`` of the online encoder's current weights."""
        from mcl.probes.run import ProbeOptions, extract, figure, probe_features

        device = pl_module.device
        devices = [device.index or 0] if device.type == "cuda" else []
        train, val = self.sets
        opts = ProbeOptions(probes=("seg", "roi"), max_pixels=self.cfg.max_pixels, steps=self.cfg.steps, k=self.cfg.k)
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            online = pl_module.model.online
            online = getattr(online, "module", online)
            self.encoder.load_online({k: v.detach() for k, v in online.state_dict().items()})
            self.encoder.to(device)
            feats = [extract(self.encoder, split, opts.max_pixels, seed) for split, seed in ((train, 0), (val, 1))]
            results = probe_features(feats[0], feats[1], train.num_classes, opts)
        return {f"probe/{name}": float(figure(results, name)) for name in ONLINE_FIGURES}


def online_probe(cfg, run_dir: Path) -> list[Callback]:
    """``[OnlineProbe]`` when ``cfg.probe.every_steps > 0``, else ``[]`` (any pretraining config)."""
    probe = getattr(cfg, "probe", None)
    if probe is None or probe.every_steps <= 0:
        return []
    return [OnlineProbe(probe, run_dir, cfg.model.arch, getattr(cfg.model, "fpn_channels", None))]
