"""The config sections every pretraining method shares, with their paper-mode defaults (docs/method.md).

A method's config (``mcl.methods.<name>``) is a tree of these sections plus its own ``model`` (and ``loss``)
section. Defaults live here and in the method's dataclasses only; models are built from them
(``from_config``). Each section's ``checks()`` states what its own values must be, with keys relative to
the section; ``mcl.config.validate`` prefixes them and runs them with the method's cross-section checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mcl.config import Check

# every torchvision ResNet (mcl.models.backbone.RESNET_CHANNELS); paper mode: resnet50
Arch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
               "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


@dataclass
class DataConfig:
    source: str | None = None          # folder, COCO json, .txt list or tar shards; None: the embedded synthetic scenes
    image_root: str | None = None      # root for a COCO json's file_names (default: the json's folder)
    format: Literal["auto", "files", "shards"] = "auto"   # auto: shards for a {a..b} pattern, .tar, shards.json
                                       # or *.index.json, a folder holding *.tar or a .txt list of .tar
    shard_shuffle_buffer: int = 1000   # tar shards: undecoded samples each loader worker mixes
    batch_size: int = 128              # unique images per device and step (B)
    crop_size: int = 224               # S; MCL and supervised montage: must equal 32 x model.cell_size
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    num_workers: int = 7               # loader workers per device (released config: 7)
    max_image_side: int = 4096         # larger images are decoded at reduced size (memory cap)
    synthetic_num: int = 2048          # embedded scenes: how many, which seed, what size
    synthetic_seed: int = 0
    synthetic_size: int = 256
    synthetic_preset: Literal["standard", "simple"] = "standard"   # mcl.data.synthetic.PRESETS
    augment_on: Literal["loader", "device"] = "loader"   # device: loader decodes + fits a canvas, crops on the GPU
    device_canvas: int | None = None   # augment_on=device: canvas side C (None: 2 x crop_size)

    def checks(self) -> list[Check]:
        return [
            (self.batch_size >= 2, "batch_size", "must be >= 2 (the loss needs negatives, BatchNorm two samples)"),
            (self.crop_size >= 32, "crop_size", "must be >= 32"),
            (len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             "crop_scale", "must be [min, max] with 0 < min <= max <= 1"),
            (self.num_workers >= 0, "num_workers", "must be >= 0"),
            (self.shard_shuffle_buffer >= 1, "shard_shuffle_buffer", "must be >= 1 (1: no shuffling)"),
            (self.format != "shards" or self.source is not None, "format",
             "needs data.source (a shard pattern, folder or index)"),
            (self.synthetic_num >= self.batch_size or self.source is not None, "synthetic_num",
             "must be >= data.batch_size"),
            (self.device_canvas is None or self.device_canvas >= self.crop_size, "device_canvas",
             "must be null or >= data.crop_size"),
        ]


def loader_only(data: DataConfig, method: str) -> Check:
    """The check of a method whose crops are made in the loader only (``data.augment_on=device`` is MCL's)."""
    return (data.augment_on == "loader", "data.augment_on",
            f"must be loader ({method} makes its crops in the loader; only MCL pretraining augments on the device)")


@dataclass
class MontageConfig:
    ratios: list[int] = field(default_factory=lambda: [1, 2, 4, 8])      # r_i: cells per montage side
    repeats: list[int] = field(default_factory=lambda: [1, 1, 1, 2])     # c_i: times each image appears
    interpolation: Literal["nearest", "bilinear_antialias"] = "nearest"  # released: nearest

    def checks(self) -> list[Check]:
        return [
            (len(self.ratios) >= 1, "ratios", "must name at least one level, e.g. [1, 2, 4, 8]"),
            (len(self.ratios) == len(self.repeats), "repeats", "must have one entry per montage.ratios entry"),
            (all(r >= 1 for r in self.ratios) and all(c >= 1 for c in self.repeats), "ratios",
             "and montage.repeats must be >= 1"),
        ]


@dataclass
class EncoderConfig:
    """ResNet + FPN + cell neck: the encoder MCL and supervised montage train (``mcl.models.mcl.Encoder``)."""

    arch: Arch = "resnet50"
    fpn_channels: int = 256
    cell_size: int = 7
    neck_convs: int = 4
    neck_hidden: int = 2048
    embed_dim: int = 256
    sync_bn: bool | Literal["auto"] = "auto"                       # auto: SyncBN with > 1 process

    def checks(self) -> list[Check]:
        return [
            (self.cell_size >= 1, "cell_size", "must be >= 1"),
            (self.fpn_channels >= 1 and self.neck_hidden >= 1 and self.embed_dim >= 1, "fpn_channels",
             "model.neck_hidden and model.embed_dim must be >= 1"),
            (self.neck_convs >= 0, "neck_convs", "must be >= 0"),
        ]


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

    def checks(self) -> list[Check]:
        return [
            (self.base_lr > 0, "base_lr", "must be > 0"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "must be >= 0 or null"),
            (0 < self.warmup_start_ratio <= 1, "warmup_start_ratio", "must be in (0, 1]"),
            (self.min_lr >= 0, "min_lr", "must be >= 0"),
            (self.clip_grad_norm is None or self.clip_grad_norm > 0, "clip_grad_norm", "must be > 0 or null"),
        ]


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

    def checks(self) -> list[Check]:
        return [
            (self.max_epochs >= 1 or self.max_steps > 0, "max_epochs", "must be >= 1"),
            (self.accumulate_grad_batches >= 1, "accumulate_grad_batches", "must be >= 1"),
            (self.checkpoint_every_steps >= 1, "checkpoint_every_steps", "must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1"),
            (self.log_every_steps >= 1, "log_every_steps", "must be >= 1"),
            (self.num_nodes >= 1, "num_nodes", "must be >= 1"),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be >= 1"),
            (self.nonfinite_check_every >= 1, "nonfinite_check_every", "must be >= 1"),
            (self.stop_check_every >= 1, "stop_check_every", "must be >= 1"),
        ]

    def planned_world_size(self, devices: int | None = None) -> int:
        """Processes the run will have, as far as the config tells before the Trainer starts: ``devices`` (or
        ``trainer.devices`` when it is a number, else 1) x ``num_nodes``."""
        per_node = devices or (self.devices if isinstance(self.devices, int) else 1)
        return per_node * self.num_nodes

    def planned_global_batch(self, batch_size: int, devices: int | None = None) -> int:
        """``batch_size x processes x accumulate_grad_batches``: the images behind one optimizer step."""
        return batch_size * self.planned_world_size(devices) * self.accumulate_grad_batches


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

    def checks(self) -> list[Check]:
        return [
            (self.every_steps >= 0, "every_steps", "must be >= 0 (0: off)"),
            (self.image_size >= 32 and self.image_size % 32 == 0, "image_size", "must be a multiple of 32"),
            ((self.json is None) == (self.images is None), "json", "and probe.images must be given together"),
            (self.json is None or self.every_steps > 0, "every_steps", "must be > 0 when probe.json is given"),
            (self.synthetic_train >= 2 and self.synthetic_val >= 1, "synthetic_train",
             "must be >= 2 (and probe.synthetic_val >= 1)"),
            (self.max_pixels >= 1 and self.steps >= 1 and self.k >= 1, "max_pixels",
             "probe.steps and probe.k must be >= 1"),
        ]
