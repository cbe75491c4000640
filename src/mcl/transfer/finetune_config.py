"""The fine-tuning recipe: typed sections loaded with ``mcl.config.load_config(FinetuneConfig, ...)``.

The paper's transfer (docs/method.md, "Transfer") is Mask R-CNN R50-FPN, 1x = 90k iterations at a global
batch of 16, lr 0.02, lr x0.1 at 2/3 and 8/9 of training, train short side 640-800, test 800.
Every number here is stated at ``schedule.reference_batch`` images per step; ``resolve_schedule``
turns it into the run's numbers for the real global batch B (linear scaling rule):

    lr = base_lr * B / reference_batch
    iterations = round(iterations_1x * factor * reference_batch / B)   (same number of epochs)
    warmup = round(warmup_iters * reference_batch / B),  milestones = round(step_k * iterations)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mcl.config import Check
from mcl.sections import Arch

DATA_PATHS = ("train_json", "train_images", "val_json", "val_images")

@dataclass
class DataConfig:
    """COCO-format train/val sets; with none given, synthetic scenes are generated under the run folder."""

    train_json: str | None = None
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    synthetic_train_num: int = 64
    synthetic_val_num: int = 16
    synthetic_size: int = 128
    synthetic_seed: int = 0  # train scenes use this seed, val scenes seed + 1
    synthetic_preset: Literal["standard", "simple"] = "standard"  # mcl.data.synthetic.PRESETS
    skip_missing_images: bool = False
    batch_size: int = 2  # per device
    num_workers: int = 4
    flip_prob: float = 0.5

    def checks(self) -> list[Check]:
        given = [k for k in DATA_PATHS if getattr(self, k)]
        missing = [k for k in DATA_PATHS if k not in given]
        return [
            (not given or not missing, missing[0] if missing else "train_json",
             f"is missing: give all of data.{', data.'.join(DATA_PATHS)} or none of them"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.num_workers >= 0, "num_workers", "must be >= 0"),
            (0 <= self.flip_prob <= 1, "flip_prob", "must be in [0, 1]"),
            (self.synthetic_train_num >= 1 and self.synthetic_val_num >= 1, "synthetic_train_num",
             "and data.synthetic_val_num must be >= 1"),
        ]

    @property
    def synthetic(self) -> bool:
        return self.train_json is None


@dataclass
class ModelConfig:
    """Detector layout (torchvision ``maskrcnn_resnet50_fpn_v2``) and the proposal/ROI budgets."""

    arch: Arch = "resnet50"
    # maskrcnn / fasterrcnn: torchvision's v2 layout (the paper's Mask R-CNN; fasterrcnn = no mask head);
    # retinanet: torchvision's retinanet_resnet50_fpn_v2 layout; keypointrcnn: the v2 layout with a keypoint head
    detector: Literal["maskrcnn", "fasterrcnn", "retinanet", "keypointrcnn"] = "maskrcnn"
    init: str | None = None  # mcl checkpoint, exported/torchvision state dict, "torchvision", or null (random)
    init_parts: list[str] | None = None  # load only these of backbone.body, backbone.fpn, roi_heads.box_head
    # unit_variance: scale each loaded conv (before a BN) per channel so its pre-BN running variance is 1, as at
    # random init: the same function, random init's relative fine-tuning steps (mcl.transfer.rescale). Paper: none
    rescale_init: Literal["none", "unit_variance"] = "none"
    masks: bool | Literal["auto"] = "auto"  # auto: Mask R-CNN if the train json has segmentations
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    box_detections_per_img: int = 100
    box_score_thresh: float = 0.05  # detections scored below are dropped before AP (torchvision, detectron2)
    anchor_sizes: list[int] | None = None  # one per P2..P6; None: torchvision's 32, 64, 128, 256, 512
    fpn_channels: int = 256  # FPN and head-conv width (paper: 256); must match the pretraining's to transfer
    # module-name prefixes kept frozen (no gradient, BatchNorm in eval mode), e.g. [backbone.body, backbone.fpn]
    # for the frozen-backbone detection probe; null: nothing frozen (the paper: nothing frozen)
    freeze: list[str] | None = None
    semseg_head_channels: int = 128     # --task semseg: the Semantic FPN head's width (Panoptic FPN's: 128)
    semseg_head_norm: Literal["bn", "gn"] = "bn"   # bn: as everywhere in our detectors; gn: Panoptic FPN's GroupNorm

    def checks(self) -> list[Check]:
        return [
            (self.fpn_channels >= 1, "fpn_channels", "must be a positive width (paper: 256)"),
            (0 <= self.box_score_thresh < 1, "box_score_thresh", "must be in [0, 1)"),
            (self.anchor_sizes is None or len(self.anchor_sizes) == 5, "anchor_sizes",
             "must give one size per FPN level P2..P6 (5), or null"),
        ]


@dataclass
class InputConfig:
    """Image sizes: the detector's own transform resizes (see ``detection.MultiScaleTransform``)."""

    train_min_sizes: list[int] = field(default_factory=lambda: [640, 672, 704, 736, 768, 800])
    max_size: int = 1333
    test_min_size: int = 800

    def checks(self) -> list[Check]:
        return [
            (bool(self.train_min_sizes) and min(self.train_min_sizes) >= 1, "train_min_sizes",
             "must be a non-empty list of sizes"),
            (self.max_size >= 1 and self.test_min_size >= 1, "max_size", "and input.test_min_size must be >= 1"),
        ]


@dataclass
class ScheduleConfig:
    """SGD + linear warm-up + step decay, stated at ``reference_batch`` (see the module docstring)."""

    iterations_1x: int = 90000
    factor: float = 1.0  # 2x schedule: 2.0
    reference_batch: int = 16
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0  # BN weights/biases (detectron2's default)
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    steps: list[float] = field(default_factory=lambda: [2 / 3, 8 / 9])

    def checks(self) -> list[Check]:
        return [
            (self.factor > 0, "factor", "must be > 0"),
            (self.iterations_1x >= 1, "iterations_1x", "must be >= 1"),
            (self.reference_batch >= 1, "reference_batch", "must be >= 1"),
            (self.base_lr > 0, "base_lr", "must be > 0"),
            (all(0 < x < 1 for x in self.steps) and list(self.steps) == sorted(self.steps), "steps",
             "must be increasing fractions in (0, 1)"),
        ]


@dataclass
class TrainerConfig:
    """Lightning Trainer settings; the same engine as pretraining (DDP, SyncBN, AMP, resume)."""

    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # AMP: "16-mixed" / "bf16-mixed"; "auto": bf16/16-mixed on GPU, 32 on CPU
    accumulate_grad_batches: int = 1
    sync_batchnorm: bool = True  # BN -> SyncBN when more than one process (the paper's setting)
    gradient_clip_val: float | None = None
    checkpoint_every_steps: int = 5000
    keep_checkpoints: int = 2
    eval_every_steps: int = 0  # 0: evaluate once, at the end
    log_every_steps: int = 20
    progress_bar: bool = True
    out: str = "runs/finetune"
    seed: int = 0

    def checks(self) -> list[Check]:
        return [
            (self.accumulate_grad_batches >= 1, "accumulate_grad_batches", "must be >= 1"),
            (self.checkpoint_every_steps >= 1, "checkpoint_every_steps", "must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1"),
            (self.eval_every_steps >= 0, "eval_every_steps", "must be >= 0 (0: at the end)"),
            (self.log_every_steps >= 1, "log_every_steps", "must be >= 1"),
        ]


@dataclass
class FinetuneConfig:
    task: Literal["detection", "semseg"] = "detection"   # semseg: a Semantic FPN head (mcl.transfer.semseg), mIoU
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass(frozen=True)
class ResolvedSchedule:
    """The schedule in the run's own steps (optimizer steps at ``global_batch`` images each)."""

    global_batch: int
    iterations: int
    lr: float
    warmup_iters: int
    milestones: tuple[int, ...]

    def describe(self) -> str:
        return (f"schedule: {self.iterations} iterations at global batch {self.global_batch}, lr {self.lr:g}, "
                f"warm-up {self.warmup_iters} its, lr x0.1 at {list(self.milestones)}")


def resolve_schedule(cfg: ScheduleConfig, global_batch: int) -> ResolvedSchedule:
    """Scale ``cfg`` (stated at ``cfg.reference_batch``) to ``global_batch`` by the linear scaling rule."""
    ratio = cfg.reference_batch / global_batch
    iterations = max(1, round(cfg.iterations_1x * cfg.factor * ratio))
    return ResolvedSchedule(
        global_batch=global_batch,
        iterations=iterations,
        lr=cfg.base_lr / ratio,
        warmup_iters=min(iterations, round(cfg.warmup_iters * ratio)),
        milestones=tuple(round(s * iterations) for s in cfg.steps),
    )


def lr_factor(step: int, schedule: ResolvedSchedule, warmup_factor: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    warm-up: ``w + (1 - w) * step / warmup_iters`` for ``step < warmup_iters`` (w = warmup_factor),
    times ``0.1 ** (number of milestones <= step)``.
    """
    decay = 0.1 ** sum(step >= m for m in schedule.milestones)
    if step < schedule.warmup_iters:
        alpha = step / schedule.warmup_iters
        return decay * (warmup_factor * (1 - alpha) + alpha)
    return decay

