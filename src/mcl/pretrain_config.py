"""The pretraining config tree. Defaults are paper mode (MCL-SPEC) except where a comment says otherwise.

Recipes under ``configs/`` override these; every key can be overridden on the command line
(``optim.base_lr=0.5`` or ``--optim.base_lr 0.5``). ``validate`` refuses out-of-range values before
any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mcl.errors import UserError


@dataclass
class DataConfig:
    source: str | None = None          # folder, COCO json, .txt list or tar shards; None: the embedded synthetic scenes
    image_root: str | None = None      # root for a COCO json's file_names (default: the json's folder)
    format: Literal["auto", "files", "shards"] = "auto"   # auto: shards for a {a..b} pattern, .tar, shards.json
                                       # or *.index.json, a folder holding *.tar or a .txt list of .tar
    shard_shuffle_buffer: int = 1000   # tar shards: undecoded samples each loader worker mixes
    batch_size: int = 128              # unique images per device and step (B)
    crop_size: int = 224               # S; must equal 32 x model.cell_size
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    num_workers: int = 7               # loader workers per device (released config: 7)
    max_image_side: int = 4096         # larger images are decoded at reduced size (memory cap)
    synthetic_num: int = 2048          # embedded scenes: how many, which seed, what size
    synthetic_seed: int = 0
    synthetic_size: int = 256
    synthetic_preset: Literal["standard", "simple"] = "standard"   # mcl.data.synthetic.PRESETS
    augment_on: Literal["loader", "device"] = "loader"   # device: loader decodes + fits a canvas, crops on the GPU
    device_canvas: int | None = None   # augment_on=device: canvas side C (None: 2 x crop_size)


@dataclass
class MontageConfig:
    ratios: list[int] = field(default_factory=lambda: [1, 2, 4, 8])      # r_i: cells per montage side
    repeats: list[int] = field(default_factory=lambda: [1, 1, 1, 2])     # c_i: times each image appears
    interpolation: Literal["nearest", "bilinear_antialias"] = "nearest"  # released: nearest


@dataclass
class ModelConfig:
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    fpn_channels: int = 256
    cell_size: int = 7
    neck_convs: int = 4
    neck_hidden: int = 2048
    embed_dim: int = 256
    predictor_hidden: int = 2048
    compute_mode: Literal["efficient", "faithful"] = "efficient"  # faithful: the released code's compute
    momentum_base: float = 0.99                                    # EMA m_0 (cosine to 1.0)
    sync_bn: bool | Literal["auto"] = "auto"                       # auto: SyncBN with > 1 process
    activation_checkpointing: bool = False                         # recompute backbone stages in backward


@dataclass
class LossConfig:
    temperature: float = 1.0
    level_weights: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125, 0.125])
    positives: Literal["top", "same", "neighbour", "all"] = "top"   # paper: every level -> level-0 target


@dataclass
class OptimConfig:
    name: Literal["lars", "sgd"] = "lars"
    base_lr: float = 1.0               # lr = base_lr x global_batch / 256
    weight_decay: float = 1e-5
    momentum: float = 0.9
    trust_coefficient: float = 0.001   # LARS eta
    exclude_bn_bias: bool = True       # BN and biases: no weight decay, no LARS adaptation
    warmup_epochs: float = 10.0
    warmup_steps: int | None = None    # overrides warmup_epochs when set
    warmup_start_ratio: float = 1e-4
    min_lr: float = 1e-4               # end of the per-iteration cosine
    clip_grad_norm: float | None = 500.0


@dataclass
class TrainerConfig:
    out: str = "runs/mcl"
    max_epochs: int = 100
    max_steps: int = -1                # > 0: stop after this many optimizer steps (schedules span them)
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"            # bf16-mixed on bf16 GPUs, 16-mixed on others, 32 on CPU; paper: 16-mixed
    accumulate_grad_batches: int = 1
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    log_every_steps: int = 10
    seed: int = 0                      # weights, data order, augmentation: a run is a function of it
    deterministic: bool = False
    progress_bar: bool = True
    skip_nonfinite: bool = True        # undo (on the device) optimizer steps with a non-finite loss/gradient
    max_nonfinite_steps: int = 25      # stop after this many in a row (fp16's loss scaler needs <= 16)
    nonfinite_check_every: int = 50    # steps between host reads of the non-finite counters
    stop_check_every: int = 10         # steps between the processes' agreement on a stop signal (> 1 process)
    channels_last: bool | Literal["auto"] = "auto"   # auto: NHWC conv weights when training on CUDA
    compile: bool = False              # torch.compile the ResNet bodies (in place; checkpoints unchanged)


@dataclass
class ProbeConfig:
    """The online dense probe (``mcl.probes.online``): RoI kNN / linear and linear segmentation of the online
    encoder's frozen features on a small labelled set, every ``every_steps`` optimizer steps (0: off, the paper
    recipe). It draws from no training RNG and touches neither the data order nor the model, so resume stays
    exact. ``json``/``images``: a COCO json with boxes (masks optional), its images split even / odd into
    probe-train / held-out; None: synthetic scenes (seeds ``synthetic_seed``, ``+ 1``) under ``OUT/probe_data``."""

    every_steps: int = 0
    json: str | None = None
    images: str | None = None
    synthetic_train: int = 64         # as many as mcl probe's default: 16 held-out scenes (~70 objects) were noise
    synthetic_val: int = 32
    synthetic_seed: int = 7000         # not a pretraining scene seed (those start at 0 and 1000)
    synthetic_size: int = 128
    synthetic_preset: Literal["standard", "simple"] = "standard"
    image_size: int = 128              # probe images are resized to this square (multiple of 32)
    max_pixels: int = 10000            # sampled pixels per split for the segmentation probe
    steps: int = 30                    # L-BFGS iterations per linear probe
    k: int = 20                        # kNN neighbours


def probe_checks(p: ProbeConfig) -> list[Check]:
    return [
        (p.every_steps >= 0, "probe.every_steps", "must be >= 0 (0: off)"),
        (p.image_size >= 32 and p.image_size % 32 == 0, "probe.image_size", "must be a multiple of 32"),
        ((p.json is None) == (p.images is None), "probe.json", "and probe.images must be given together"),
        (p.json is None or p.every_steps > 0, "probe.every_steps", "must be > 0 when probe.json is given"),
        (p.synthetic_train >= 2 and p.synthetic_val >= 1, "probe.synthetic_train", "must be >= 2 (and val >= 1)"),
        (p.max_pixels >= 1 and p.steps >= 1 and p.k >= 1, "probe.max_pixels", "probe.steps and probe.k must be >= 1"),
    ]


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    montage: MontageConfig = field(default_factory=MontageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


Check = tuple[bool, str, str]   # (condition that must hold, key, what it must be)


def data_checks(d: DataConfig) -> list[Check]:
    return [
        (d.batch_size >= 2, "data.batch_size", "must be >= 2 (the loss needs negatives, BatchNorm two samples)"),
        (d.crop_size >= 32, "data.crop_size", "must be >= 32"),
        (len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
         "data.crop_scale", "must be [min, max] with 0 < min <= max <= 1"),
        (d.num_workers >= 0, "data.num_workers", "must be >= 0"),
        (d.shard_shuffle_buffer >= 1, "data.shard_shuffle_buffer", "must be >= 1 (1: no shuffling)"),
        (d.format != "shards" or d.source is not None, "data.format", "needs data.source (a shard pattern, folder or index)"),
        (d.synthetic_num >= d.batch_size or d.source is not None, "data.synthetic_num",
         "must be >= data.batch_size"),
        (d.device_canvas is None or d.device_canvas >= d.crop_size, "data.device_canvas",
         "must be null or >= data.crop_size"),
    ]


def optim_checks(o: OptimConfig) -> list[Check]:
    return [
        (o.base_lr > 0, "optim.base_lr", "must be > 0"),
        (o.weight_decay >= 0, "optim.weight_decay", "must be >= 0"),
        (0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)"),
        (o.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0"),
        (0 < o.warmup_start_ratio <= 1, "optim.warmup_start_ratio", "must be in (0, 1]"),
        (o.min_lr >= 0, "optim.min_lr", "must be >= 0"),
        (o.clip_grad_norm is None or o.clip_grad_norm > 0, "optim.clip_grad_norm", "must be > 0 or null"),
    ]


def trainer_checks(t: TrainerConfig) -> list[Check]:
    return [
        (t.max_epochs >= 1 or t.max_steps > 0, "trainer.max_epochs", "must be >= 1"),
        (t.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "must be >= 1"),
        (t.checkpoint_every_steps >= 1, "trainer.checkpoint_every_steps", "must be >= 1"),
        (t.keep_checkpoints >= 1, "trainer.keep_checkpoints", "must be >= 1"),
        (t.log_every_steps >= 1, "trainer.log_every_steps", "must be >= 1"),
        (t.num_nodes >= 1, "trainer.num_nodes", "must be >= 1"),
        (t.max_nonfinite_steps >= 1, "trainer.max_nonfinite_steps", "must be >= 1"),
        (t.nonfinite_check_every >= 1, "trainer.nonfinite_check_every", "must be >= 1"),
        (t.stop_check_every >= 1, "trainer.stop_check_every", "must be >= 1"),
    ]


def run_checks(cfg, checks: list[Check]) -> None:
    """Raise ``UserError`` naming the first key whose check fails, with its value."""
    for ok, key, why in checks:
        if not ok:
            raise UserError(f"{key} = {eval_key(cfg, key)!r} {why}")


def validate(cfg: PretrainConfig) -> None:
    """Refuse values that cannot work, with one line naming the key; cheap checks only."""
    run_checks(cfg, data_checks(cfg.data) + [
        (cfg.model.cell_size >= 1, "model.cell_size", "must be >= 1"),
        (0 <= cfg.model.momentum_base < 1, "model.momentum_base", "must be in [0, 1)"),
        (cfg.loss.temperature > 0, "loss.temperature", "must be > 0"),
        (all(w >= 0 for w in cfg.loss.level_weights), "loss.level_weights", "must be >= 0"),
    ] + optim_checks(cfg.optim) + trainer_checks(cfg.trainer) + probe_checks(cfg.probe))


def eval_key(cfg: PretrainConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
