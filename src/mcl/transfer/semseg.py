"""Semantic segmentation transfer: a Semantic FPN head over the detectors' ResNet + BN FPN, scored by mIoU.

Model (``SemanticFPN``): the ResNet body and BatchNorm FPN of ``mcl.transfer.detection`` (torchvision's v2
layout, keys ``backbone.body.*`` / ``backbone.fpn.*``, so every init file a detector takes initialises it through
``load_initial_weights``) and a fresh ``head``, Panoptic FPN's semantic branch (Kirillov et al. 2019): level
P_l (l = 2..5, stride 2^l) goes through max(1, l - 2) stages of 3x3 conv -> BatchNorm -> ReLU, each but P2's
followed by a 2x bilinear upsample, so all four reach stride 4; they are summed, a 1x1 conv gives K + 1
logits and a 4x bilinear upsample brings them to the input size.

Data (``SemsegDataset``, over ``mcl.transfer.coco_data.CocoDetection``): COCO instances become a per-pixel class
map: background 0, category id c -> its contiguous label 1..K (``LabelMap``, sorted ids). Instances are painted
largest first, so where two overlap the smaller one (usually the one in front) is on top; equal areas: the
later annotation. An annotation without a usable segmentation (a box-only json) is painted as its filled box
(the pixels whose centre lies inside it); ``model.masks=false`` fills every box. Crowd regions are ``IGNORE``
(255) where no instance is painted: neither trained nor scored. Every image is resized to a square of
``input.test_min_size`` pixels (bilinear image, nearest class map), in training and evaluation alike
(``input.train_min_sizes`` and ``input.max_size`` are detection's); training flips with ``data.flip_prob``.
Evaluation scores at each image's original size: logits are bilinearly resized back before the argmax.

Metric (``semseg_metrics``), over the confusion matrix M (rows truth, columns prediction) of every val pixel
not ``IGNORE``, in percent:

    IoU_c = M_cc / (sum_j M_cj + sum_i M_ic - M_cc),   pixel accuracy = sum_c M_cc / sum M
    mIoU = mean of IoU_c over the classes with a non-zero union (background included);  mIoU_fg: c >= 1 only
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from mcl.config import from_dict
from mcl.engine.atomic import write_text_atomic
from mcl.errors import UserError
from mcl.models.backbone import make_resnet
from mcl.transfer.coco_data import CocoDetection, _valid_segmentation, eval_generator, segmentation_to_mask
from mcl.transfer.detection import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InitReport,
    bn_fpn_backbone,
    load_initial_weights,
)
from mcl.transfer.finetune_base import FinetuneBase
from mcl.transfer.finetune_config import FinetuneConfig

IGNORE = 255          # class-map value that is neither trained nor scored (crowd regions)
LEVELS = ("p2", "p3", "p4", "p5")
METRICS = ("mIoU", "mIoU_fg", "pixel_acc")


# ---------------------------------------------------------------- the model

def fpn_backbone(arch: str, fpn_channels: int) -> BackboneWithFPN:
    """ResNet ``arch`` + BN FPN of width ``fpn_channels``: the detectors' ``detection.bn_fpn_backbone`` (same keys
    and shapes as ``build_detector(arch, ..., fpn_channels=...).backbone``): outputs ``"0".."3"`` =
    P2..P5 ``(B, C, H/4 .. H/32, ...)`` and ``"pool"`` (P6, unused here)."""
    if fpn_channels < 1:
        raise UserError(f"model.fpn_channels {fpn_channels}: give a positive width (256 is the paper's)")
    return bn_fpn_backbone(make_resnet(arch), fpn_channels)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"head norm {kind!r} should be 'bn' or 'gn'")


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch: ``[P2..P5]`` (``(B, C_in, H_l, W_l)``, strides 4..32) -> ``(B, K+1, H, W)``.

    ``scale_heads.pL`` holds max(1, L - 2) blocks (3x3 conv, norm, ReLU); after each block of P3..P5 the map is
    upsampled 2x (bilinearly, to the next finer level's size, so odd sizes work); the stride-4 sum goes through
    the 1x1 ``classifier`` and a bilinear resize to ``size`` (4x).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int, norm: str):
        super().__init__()
        if norm == "gn" and channels % 32:
            raise ValueError(f"GroupNorm(32) needs a head width divisible by 32, got {channels}")
        self.scale_heads = nn.ModuleDict()
        for level, name in enumerate(LEVELS):
            blocks = [nn.Sequential(nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                                    _norm(norm, channels), nn.ReLU(inplace=True)) for k in range(max(1, level))]
            self.scale_heads[name] = nn.Sequential(*blocks)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, std=0.001)   # detectron2's SemSegFPNHead predictor init
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        total = None
        for level, (x, name) in enumerate(zip(features, LEVELS)):
            for k, block in enumerate(self.scale_heads[name]):
                x = block(x)
                if level > 0:
                    x = F.interpolate(x, size=features[level - 1 - k].shape[-2:], mode="bilinear", align_corners=False)
            total = x if total is None else total + x
        return F.interpolate(self.classifier(total), size=size, mode="bilinear", align_corners=False)


class SemanticFPN(nn.Module):
    """``images (B, 3, H, W)`` RGB in [0, 1] -> logits ``(B, num_classes, H, W)`` (num_classes = K + 1).

    Normalises with the ImageNet mean/std (non-persistent buffers: not in the state dict), runs ``backbone``
    (``backbone.body`` ResNet, ``backbone.fpn`` BN FPN: the detectors' keys) and ``head`` (``SemanticFPNHead``).
    """

    def __init__(self, arch: str, num_classes: int, fpn_channels: int, head_channels: int, head_norm: str):
        super().__init__()
        self.backbone = fpn_backbone(arch, fpn_channels)
        self.head = SemanticFPNHead(self.backbone.out_channels, num_classes, head_channels, head_norm)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg: FinetuneConfig, num_classes: int) -> SemanticFPN:
        m = cfg.model
        return cls(m.arch, num_classes, m.fpn_channels, m.semseg_head_channels, m.semseg_head_norm)

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone((images - self.mean) / self.std)
        return self.head([features[str(k)] for k in range(len(LEVELS))], tuple(images.shape[-2:]))


class SemsegInitReport(InitReport):
    """``InitReport`` for a ``SemanticFPN``: parts ``backbone.body``, ``backbone.fpn`` and ``head``."""

    def __str__(self) -> str:
        return super().__str__().replace("detector initialisation", "Semantic FPN initialisation", 1)


def load_semseg_init(model: SemanticFPN, init: str | None, parts: list[str] | None = None,
                     rescale: str = "none") -> SemsegInitReport:
    """``detection.load_initial_weights`` on ``model`` (same files, same checks; the head is never in a
    pretraining or detector file, so it stays fresh), reported per ``backbone.body``, ``backbone.fpn``, ``head``."""
    report = load_initial_weights(model, init, parts, rescale)
    loaded = dict(report.loaded)
    head = loaded.pop("other", (0, 0))
    loaded.pop("roi_heads.box_head", None)   # a detector part: the Semantic FPN has none
    loaded["head"] = head
    return SemsegInitReport(report.source, loaded, report.random_init, report.unused, report.notes)


# ---------------------------------------------------------------- the data

def paint_class_map(instances: list[tuple[int, np.ndarray]], crowd: list[np.ndarray], height: int,
                    width: int) -> Tensor:
    """``(height, width)`` int64 class map: 0 background, ``label`` under each ``(label, mask (H, W))``.

    Painted in decreasing mask area (stable: equal areas keep their order, the later one on top), so the smaller
    of two overlapping instances wins; then each crowd mask is ``IGNORE`` where still background.
    """
    out = np.zeros((height, width), dtype=np.int64)
    order = sorted(range(len(instances)), key=lambda i: -int(instances[i][1].sum()))
    for i in order:
        label, mask = instances[i]
        out[mask.astype(bool)] = label
    for mask in crowd:
        out[mask.astype(bool) & (out == 0)] = IGNORE
    return torch.from_numpy(out)


def box_mask(box, height: int, width: int) -> np.ndarray:
    """The filled xyxy ``box`` as a ``(height, width)`` uint8 mask: pixels whose centre is inside (at least one)."""
    x1, y1, x2, y2 = box
    c0, r0 = min(width - 1, math.floor(x1 + 0.5)), min(height - 1, math.floor(y1 + 0.5))
    c1, r1 = max(c0 + 1, math.floor(x2 + 0.5)), max(r0 + 1, math.floor(y2 + 0.5))
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[r0:r1, c0:c1] = 1
    return mask


class SemsegDataset(Dataset):
    """``(image (3, S, S) in [0, 1], class_map, image_id)`` from a ``CocoDetection`` (module docstring: painting).

    ``size`` S: the square every image is resized to. ``train``: the class map is resized with it (nearest) and
    both are flipped with ``flip_prob``; otherwise the class map keeps the image's original ``(H, W)``.
    ``boxes_only``: fill every annotation's box even where it has a segmentation (``model.masks=false``).
    """

    def __init__(self, coco: CocoDetection, size: int, *, train: bool, flip_prob: float = 0.0,
                 boxes_only: bool = False):
        if size < 32:
            raise UserError(f"input.test_min_size {size}: the Semantic FPN needs at least 32 px (stride 32)")
        self.coco, self.size, self.train = coco, size, train
        self.flip_prob = flip_prob if train else 0.0
        self.boxes_only = boxes_only
        anns = [(a, coco.coco.imgs[i]) for i in coco.image_ids for _, _, a in coco.targets.get(i, [])]
        self.box_filled = sum(1 for a, img in anns if not self._has_mask(a, img))
        self.annotations = len(anns)
        keep = set(coco.image_ids)
        self.crowd = {}
        for ann in coco.crowd_annotations:
            if ann["image_id"] in keep:
                self.crowd.setdefault(ann["image_id"], []).append(ann)

    def _has_mask(self, ann: dict, img: dict) -> bool:
        return not self.boxes_only and _valid_segmentation(ann.get("segmentation"), img["height"], img["width"])

    def _mask(self, ann: dict, box, img: dict) -> np.ndarray:
        h, w = img["height"], img["width"]
        return segmentation_to_mask(ann["segmentation"], h, w) if self._has_mask(ann, img) else box_mask(box, h, w)

    def report_lines(self) -> list[str]:
        """``CocoDetection``'s report, worded for class maps (crowd regions, categories absent from the set)."""
        rep = self.coco.report
        lines = dataclasses.replace(rep, crowd=0, empty_categories=() if not self.train else rep.empty_categories)
        lines = lines.lines()
        how = (f"model.masks=false: all {self.annotations} boxes filled as masks" if self.boxes_only else
               f"{self.annotations - self.box_filled} segmentation masks, {self.box_filled} box-filled")
        if self.box_filled and not self.boxes_only:
            how += " (annotations without a segmentation: their box is painted)"
        crowd = sum(map(len, self.crowd.values()))
        lines.append(f"{rep.name}: class maps from {self.annotations} annotations: {how}"
                     + (f"; {crowd} crowd regions ignored ({IGNORE})" if crowd else ""))
        if not self.train and rep.empty_categories:
            ids = ", ".join(map(str, rep.empty_categories[:10])) + (" ..." if len(rep.empty_categories) > 10 else "")
            lines.append(f"{rep.name}: {len(rep.empty_categories)} categories have no pixels (ids {ids}); "
                         f"each enters the mIoU only if predicted (then with IoU 0)")
        return lines

    def class_map(self, image_id: int) -> Tensor:
        """The original-size ``(H, W)`` int64 class map of ``image_id``."""
        img = self.coco.coco.imgs[image_id]
        instances = [(label, self._mask(ann, box, img)) for box, label, ann in self.coco.targets.get(image_id, [])]
        crowd = []
        for ann in self.crowd.get(image_id, []):
            box = [ann["bbox"][0], ann["bbox"][1], ann["bbox"][0] + ann["bbox"][2], ann["bbox"][1] + ann["bbox"][3]]
            crowd.append(self._mask(ann, box, img))
        return paint_class_map(instances, crowd, img["height"], img["width"])

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image_id = self.coco.image_ids[index]
        image = self.coco.load_image(image_id)
        target = self.class_map(image_id)
        s = (self.size, self.size)
        image = F.interpolate(image[None], size=s, mode="bilinear", align_corners=False, antialias=True)[0]
        if self.train:
            target = F.interpolate(target[None, None].float(), size=s, mode="nearest-exact")[0, 0].long()
            if self.flip_prob and torch.rand(()) < self.flip_prob:
                image, target = image.flip(-1), target.flip(-1)
        return image.clamp_(0, 1), target, image_id


def collate_semseg(batch: list[tuple]) -> tuple[Tensor, list[Tensor], list[int]]:
    """``[(image, class_map, id), ...] -> (images (B, 3, S, S), [class_map, ...], [id, ...])`` (val maps differ
    in size, so they stay a list)."""
    images, maps, ids = zip(*batch)
    return torch.stack(images), list(maps), list(ids)


def make_semseg_loader(dataset: SemsegDataset, batch_size: int, num_workers: int, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_semseg, persistent_workers=num_workers > 0, drop_last=False,
                      generator=None if shuffle else eval_generator())


# ---------------------------------------------------------------- the metric

def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(num_classes, num_classes)`` int64 counts, rows = truth, columns = prediction; ``target == IGNORE``
    pixels are left out. ``pred`` and ``target``: integer tensors of one shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != IGNORE
    t, p = target[keep].long(), pred[keep].long()
    if len(t) and (int(t.max()) >= num_classes or int(t.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}: target {int(t.min())}..{int(t.max())}, "
                         f"prediction max {int(p.max())}")
    index = t * num_classes + p
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def semseg_metrics(conf: Tensor, class_names: list[str] | None = None) -> dict:
    """mIoU, mIoU_fg (classes 1..), pixel accuracy and per-class IoU of confusion matrix ``conf`` (K+1, K+1), in
    percent (module docstring). A class with a zero union is left out of the means (its IoU is None); a mean
    over no class is None."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = [float(100 * t / u) if u > 0 else None for t, u in zip(tp, union)]
    names = class_names or [str(c) for c in range(len(iou))]

    def mean(values):
        seen = [v for v in values if v is not None]
        return sum(seen) / len(seen) if seen else None

    total = float(conf.sum())
    return {"mIoU": mean(iou), "mIoU_fg": mean(iou[1:]),
            "pixel_acc": float(100 * tp.sum() / total) if total else None,
            "per_class_IoU": dict(zip(names, iou)), "pixels": int(total)}


def format_semseg_table(results: dict) -> str:
    """A fixed-width table of ``semseg_metrics``' means, then the per-class IoU; "-" where undefined."""
    cell = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [f"{'':8}" + "".join(f"{m:>11}" for m in METRICS),
             f"{'semseg':8}" + "".join(f"{cell(results[m]):>11}" for m in METRICS)]
    per_class = ", ".join(f"{n} {cell(v)}" for n, v in results.get("per_class_IoU", {}).items())
    lines += textwrap.wrap(f"IoU per class: {per_class}", 116, subsequent_indent="  ")
    return "\n".join(lines)


def write_semseg_results(out_dir: str | Path, results: dict, **extra) -> Path:
    """``out_dir/results.json``: the metrics (percent), per-class IoU, the confusion matrix and ``extra``."""
    path = Path(out_dir) / "results.json"
    write_text_atomic(path, json.dumps({**results, **extra}, indent=2))
    return path


# ---------------------------------------------------------------- fine-tuning (Lightning)

class SemsegFinetuneModule(FinetuneBase):
    """Fine-tunes a ``SemanticFPN`` with per-pixel cross-entropy (``IGNORE`` left out) and scores mIoU.

    Optimisation, frozen modules and the saved file: ``mcl.transfer.finetune_base.FinetuneBase``. Validation keeps each
    image's confusion matrix (sparse), gathers them from every process, keeps one per image id (samplers pad),
    sums them and writes ``semseg_metrics`` to ``eval_dir/results.json`` on rank 0.
    """

    TASK = "semseg"

    def __init__(self, config: dict, category_ids: list[int], category_names: list[str]):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = from_dict(FinetuneConfig, config)
        self.class_names = ["background", *category_names]
        self.num_classes = len(self.class_names)
        self.model = SemanticFPN.from_config(self.cfg, self.num_classes)
        self.start()
        self._confusions: list = []

    def network(self) -> nn.Module:
        return self.model

    def set_evaluation(self, eval_dir: str | Path, **extra) -> None:
        self.eval_dir, self.eval_extra = Path(eval_dir), extra

    def training_step(self, batch, batch_idx):
        images, maps, _ = batch
        target = torch.stack(maps)
        logits = self.model(images)
        if (target != IGNORE).any():
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE)
        else:   # every pixel ignored: a zero loss that keeps the graph (DDP needs every parameter used)
            loss = logits.sum() * 0.0
        if not torch.isfinite(loss):
            raise UserError(f"training diverged at step {self.global_step} (loss {loss.item()}); "
                            f"lower schedule.base_lr or raise schedule.warmup_iters")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        self._last_loss = loss.detach()
        return loss

    def on_validation_epoch_start(self) -> None:
        self._confusions = []

    def validation_step(self, batch, batch_idx):
        images, maps, ids = batch
        logits = self.model(images)
        for i, (target, image_id) in enumerate(zip(maps, ids)):
            up = F.interpolate(logits[i:i + 1], size=target.shape, mode="bilinear", align_corners=False)
            flat = confusion_matrix(up.argmax(1)[0], target, self.num_classes).flatten()
            nz = flat.nonzero()[:, 0]
            self._confusions.append((int(image_id), nz.cpu().tolist(), flat[nz].cpu().tolist()))

    def on_validation_epoch_end(self) -> None:
        per_image = {i: (idx, counts) for i, idx, counts in self.gather(self._confusions)}  # a padded twin replaces
        self._confusions = []
        flat = torch.zeros(self.num_classes ** 2, dtype=torch.int64)
        for idx, counts in per_image.values():
            flat.index_add_(0, torch.tensor(idx, dtype=torch.int64), torch.tensor(counts, dtype=torch.int64))
        conf = flat.reshape(self.num_classes, self.num_classes)
        results = semseg_metrics(conf, self.class_names)   # the same on every rank: all of them gathered everything
        self.last_results = results
        self.last_eval_step = self.global_step
        if self.trainer.is_global_zero:
            if self.eval_dir is None:
                raise RuntimeError("set_evaluation(eval_dir) must be called before validating")
            last = getattr(self, "_last_loss", None)
            write_semseg_results(self.eval_dir, results, units="percent", num_images=len(per_image),
                                 confusion=conf.tolist(), step=self.global_step,
                                 train_loss_last=float(last) if last is not None else None, **self.eval_extra)
            print(f"\nsemantic segmentation at step {self.global_step} ({len(per_image)} images):\n"
                  f"{format_semseg_table(results)}\nwritten to {self.eval_dir}", flush=True)
        self.log_dict({f"val/{m}": results[m] for m in METRICS if results[m] is not None}, sync_dist=True)
