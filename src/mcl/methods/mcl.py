"""MCL pretraining (docs/method.md): its config, its LightningModule and its ``--dry-run`` plan.

The model and its forward are ``mcl.models.mcl.MCL`` (usable in any training loop); the loss is
``mcl.losses.multi_level_loss``. Here: LARS with the warm-up + cosine schedule (``PretrainBase``), the
EMA target update with the cosine momentum ``m_0 -> 1``, per-level logging, the 8-crop data, and the
optional batched augmentation on the device (``data.augment_on=device``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from mcl.config import Check
from mcl.data.device_views import CanvasCollate, CanvasImage, DeviceMultiCropViews, canvas_side
from mcl.data.sources import collate_views
from mcl.data.views import MultiCropViews
from mcl.methods.base import DatasetModule, PretrainBase, open_image_source
from mcl.models.ema import cosine_momentum
from mcl.models.mcl import MCL, fpn_level_for
from mcl.montage import level_specs
from mcl.optim import scaled_lr
from mcl.sections import DataConfig, EncoderConfig, MontageConfig, OptimConfig, ProbeConfig, TrainerConfig


@dataclass
class MCLModelConfig(EncoderConfig):
    predictor_hidden: int = 2048
    compute_mode: Literal["efficient", "faithful"] = "efficient"  # faithful: the released code's compute
    momentum_base: float = 0.99                                    # EMA m_0 (cosine to 1.0)
    activation_checkpointing: bool = False                         # recompute backbone stages in backward

    def checks(self) -> list[Check]:
        return super().checks() + [
            (self.predictor_hidden >= 1, "predictor_hidden", "must be >= 1"),
            (0 <= self.momentum_base < 1, "momentum_base", "must be in [0, 1)"),
        ]


@dataclass
class MCLLossConfig:
    temperature: float = 1.0
    level_weights: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125, 0.125])
    positives: Literal["top", "same", "neighbour", "all"] = "top"   # paper: every level -> level-0 target

    def checks(self) -> list[Check]:
        return [
            (self.temperature > 0, "temperature", "must be > 0"),
            (all(w >= 0 for w in self.level_weights), "level_weights", "must be >= 0"),
        ]


def montage_geometry_checks(cfg) -> list[Check]:
    """The montage pyramid's fit to the batch and the FPN, for MCL and supervised montage: one weight per
    level, whole montages per level (``data.batch_size``), and every level on an FPN map of whole cells."""
    m, d = cfg.montage, cfg.data
    if len(m.ratios) != len(m.repeats) or not m.ratios:
        return []                                  # MontageConfig's own checks say so
    checks: list[Check] = [(len(cfg.loss.level_weights) == len(m.ratios), "loss.level_weights",
                            f"must have one weight per montage level ({len(m.ratios)} from montage.ratios)")]
    for spec in level_specs(m.ratios, m.repeats):
        checks.append(_holds(lambda spec=spec: spec.num_montages(d.batch_size), "data.batch_size"))
        checks.append(_holds(lambda spec=spec: fpn_level_for(d.crop_size, cfg.model.cell_size, spec.ratio),
                             "data.crop_size"))
    return checks


def _holds(compute, key: str) -> Check:
    """A check from a pure function's ``ValueError`` (which states the facts), naming ``key``."""
    try:
        compute()
        return (True, key, "")
    except ValueError as exc:
        return (False, key, f"does not fit: {exc}")


@dataclass
class MCLConfig:
    """MCL's recipe: paper mode (docs/method.md) unless a comment says otherwise."""

    method: Literal["mcl"] = "mcl"
    data: DataConfig = field(default_factory=DataConfig)
    montage: MontageConfig = field(default_factory=MontageConfig)
    model: MCLModelConfig = field(default_factory=MCLModelConfig)
    loss: MCLLossConfig = field(default_factory=MCLLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def checks(self) -> list[Check]:
        geometry = montage_geometry_checks(self)
        if all(ok for ok, _, _ in geometry) and self.montage.ratios:
            geometry += [
                ((self.montage.ratios[0], self.montage.repeats[0]) == (1, 1), "montage.ratios",
                 "must start with the plain crops (ratio 1, repeats 1): level 0 supplies the targets"),
                (self.data.crop_size == 32 * self.model.cell_size, "data.crop_size",
                 f"must equal 32 x model.cell_size = {32 * self.model.cell_size} (level 0 reads P5)"),
            ]
        return geometry


# ---------------------------------------------------------------- data

def build_views(cfg: MCLConfig) -> MultiCropViews | CanvasImage:
    """The loader's per-image transform: the 8-crop augmentation (4 crops per view, one per level), or with
    ``data.augment_on=device`` only the canvas (the crops are then made by ``build_device_views`` in the step)."""
    if cfg.data.augment_on == "device":
        return CanvasImage(canvas_side(cfg.data.crop_size, cfg.data.device_canvas))
    return MultiCropViews(crop_size=cfg.data.crop_size, scale=tuple(cfg.data.crop_scale),
                          crops_per_view=len(cfg.montage.ratios))


def build_device_views(cfg: MCLConfig) -> DeviceMultiCropViews | None:
    """``data.augment_on=device``: the batched 8-crop augmentation run in the training step; else None."""
    if cfg.data.augment_on != "device":
        return None
    return DeviceMultiCropViews(crop_size=cfg.data.crop_size, scale=tuple(cfg.data.crop_scale),
                                crops_per_view=len(cfg.montage.ratios))


def build_dataset(cfg: MCLConfig):
    """The configured image source (or the embedded synthetic scenes), yielding 8-crop samples."""
    views = build_views(cfg)
    d = cfg.data
    max_side = d.max_image_side if d.augment_on == "loader" else min(d.max_image_side, views.side)
    return open_image_source(d, views, max_side, cfg.trainer.seed)


def build_model(cfg: MCLConfig) -> MCL:
    """The MCL model of a config."""
    return MCL.from_config(cfg)


# ---------------------------------------------------------------- Lightning

class MCLPretrainModule(PretrainBase):
    """The MCL model, LARS + warm-up/cosine, the EMA target update, and per-level logging."""

    NAME = "mcl"
    TITLE = "MCL"
    Config = MCLConfig
    LOGS_MOMENTUM = True

    def __init__(self, config: dict):
        super().__init__(config)
        self.views_on_device = build_device_views(self.cfg)     # data.augment_on=device: crops made in the step

    @classmethod
    def build_model(cls, cfg: MCLConfig) -> MCL:
        return build_model(cfg)

    @classmethod
    def datamodule(cls, cfg: MCLConfig, prepared=None) -> DatasetModule:
        """``B`` images x ``2L`` crops from the configured source (or the synthetic scenes)."""
        device_views = build_device_views(cfg)
        return DatasetModule(cfg, build_dataset, CanvasCollate(device_views) if device_views else collate_views)

    @classmethod
    def describe(cls, cfg: MCLConfig) -> str:
        return describe_plan(cfg)

    def trainable(self) -> torch.nn.Module:
        """What the optimiser updates: the online encoder and the predictors (not the EMA target)."""
        return torch.nn.ModuleDict({"online": self.model.online, "predictors": self.model.predictors})

    def ema_momentum(self, step: int) -> float:
        return cosine_momentum(step, self.total_steps(), self.cfg.model.momentum_base)

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

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        lines = []
        for lv in sorted({k.split("level")[-1] for k in metrics if "loss_level" in k}):
            lines.append(f"  level {lv}: loss {metrics.get(f'train/loss_level{lv}', float('nan')):.4f}  "
                         f"pos cos {metrics.get(f'train/pos_cos_level{lv}', float('nan')):.3f}  "
                         f"neg cos {metrics.get(f'train/neg_cos_level{lv}', float('nan')):.3f}")
        if "train/loss" in metrics:
            lines.append(f"  total loss {metrics['train/loss']:.4f}")
        return lines


# ---------------------------------------------------------------- --dry-run

def describe_plan(cfg: MCLConfig, world_size: int | None = None) -> str:
    """Batch sizes, levels, montages, lr after scaling, schedule, FLOPs, memory and a time estimate, as text."""
    t = cfg.trainer
    world = t.planned_world_size(world_size)
    b = cfg.data.batch_size
    global_batch = t.planned_global_batch(b, world_size)
    specs = level_specs(cfg.montage.ratios, cfg.montage.repeats)
    lines = [
        f"method: {MCLPretrainModule.TITLE}",
        f"per-device batch B = {b} unique images; processes = {world} "
        f"({'devices=' + str(t.devices)} x nodes={t.num_nodes}); accumulation = {t.accumulate_grad_batches}",
        f"global batch = {global_batch}; lr = {cfg.optim.base_lr} x {global_batch}/256 = "
        f"{scaled_lr(cfg.optim.base_lr, global_batch):.4g} ({cfg.optim.name})",
        f"crops: {2 * len(specs)} per image ({len(specs)} per view) of {cfg.data.crop_size}px; "
        f"compute mode: {cfg.model.compute_mode}; arch: {cfg.model.arch}",
        ("augmentation: on the training device (loader workers decode and fit each image into a "
         f"{cfg.data.device_canvas or 2 * cfg.data.crop_size}px canvas)" if cfg.data.augment_on == "device"
         else f"augmentation: per image in the loader workers ({cfg.data.num_workers} per device)"),
        "level  ratio  cell px  FPN  montages/view/device  cells/view/device",
    ]
    total = 0
    for i, s in enumerate(specs):
        m = s.num_montages(b)
        total += m
        k = fpn_level_for(cfg.data.crop_size, cfg.model.cell_size, s.ratio)
        lines.append(f"{i:>5}  {s.ratio:>5}  {cfg.data.crop_size // s.ratio:>7}  P{k + 2:<2}  {m:>20}  "
                     f"{m * s.ratio ** 2:>17}")
    lines.append(f"images per view per device: {total} of {cfg.data.crop_size}x{cfg.data.crop_size}")
    lines.append(f"schedule: {t.max_steps} optimizer steps" if t.max_steps > 0 else f"schedule: {t.max_epochs} epochs")
    lines += cost_lines(cfg)
    return "\n".join(lines)


def cost_lines(cfg: MCLConfig, results_dir: Path = Path("benchmarks/results")) -> list[str]:
    """FLOPs per device step (counted on the meta device), parameter memory, and a time estimate."""
    from mcl.bench.flops import mcl_step_flops

    flops = mcl_step_flops(cfg)
    lines = [f"FLOPs per device step (fwd+bwd online, fwd target): {flops.total / 1e12:.3f} TFLOP "
             f"({flops.per_image / 1e9:.1f} GFLOP per unique image, {cfg.model.compute_mode} mode)"]
    with torch.device("meta"):
        model = build_model(cfg)
    online = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("target."))
    target = sum(p.numel() for n, p in model.named_parameters() if n.startswith("target."))
    state_bytes = 4 * (3 * online + target)          # fp32 weights, gradients, momentum; EMA target
    lines.append(f"parameters: {online / 1e6:.1f} M trained + {target / 1e6:.1f} M EMA target; weights, grads and "
                 f"optimizer state ~{state_bytes / 2**30:.2f} GiB per device (activations come on top: see mcl bench)")
    lines.append(estimate_epoch_time(cfg, results_dir))
    return lines


def estimate_epoch_time(cfg: MCLConfig, results_dir: Path) -> str:
    """Time per epoch from a ``mcl bench`` step time measured for the same model, batch and crop size."""
    m, d = cfg.model, cfg.data
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            variants = data["timing"]["variants"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for v in variants.values():
            info = v.get("info", {})
            if (info.get("kind"), info.get("compute_mode"), info.get("arch"), info.get("crop_size"),
                    info.get("batch_size")) == ("mcl", m.compute_mode, m.arch, d.crop_size, d.batch_size):
                if "median_s" not in v:
                    continue
                device = data.get("machine", {}).get("device_name", "?")
                peak = v.get("peak_bytes_max")
                memory = f"; memory a step adds at its peak (measured) {peak / 2**30:.2f} GiB" if peak else ""
                if d.source is None:
                    return (f"time: {v['median_s']:.2f} s per device step on {device} ({path.name}); "
                            f"an epoch of {d.synthetic_num} synthetic images ~ "
                            f"{v['median_s'] * d.synthetic_num / d.batch_size / 60:.1f} min on one device{memory}")
                return (f"time: {v['median_s']:.2f} s per device step on {device} ({path.name}); "
                        f"x (images / global batch) per epoch{memory}")
    return (f"time: no benchmark figure for {m.arch} {m.compute_mode} at B={d.batch_size}, {d.crop_size}px "
            f"in {results_dir} (run `mcl bench` on this machine to get one, with the peak memory of a step)")
