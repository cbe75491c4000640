"""A COCO-format set as probe tensors: images resized to ``S x S``, per-pixel class maps, boxes.

Every image is resized (bilinear, antialiased) to ``size x size`` (a multiple of 32, so that every FPN
level tiles it exactly); boxes scale with it and masks are resized nearest. The class map ``(S, S)`` holds
0 for background and the contiguous label ``1..K`` of the object on top (annotations painted largest
first, so a smaller object in front of a larger one keeps its pixels; synthetic masks never overlap).
A set without segmentations is painted with its boxes instead (``box_masks`` is then True, and the
segmentation probe says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcl.errors import UserError
from mcl.transfer.coco_data import CocoDetection, LabelMap, has_segmentations, load_coco_json


@dataclass
class ProbeSet:
    """``images (N, 3, S, S)`` in [0, 1], ``class_maps (N, S, S)`` int64, per image ``boxes (M_i, 4)`` xyxy
    pixels and ``box_labels (M_i,)`` in 1..K."""

    name: str
    images: torch.Tensor
    class_maps: torch.Tensor
    boxes: list[torch.Tensor]
    box_labels: list[torch.Tensor]
    label_map: LabelMap
    box_masks: bool

    @property
    def num_classes(self) -> int:
        """K + 1 (background is class 0)."""
        return self.label_map.num_classes

    def __len__(self) -> int:
        return len(self.images)


def check_size(size: int) -> int:
    if size < 32 or size % 32:
        raise UserError(f"--image-size {size}: give a multiple of 32 (at least 32) so every FPN level tiles it")
    return size


def paint_class_map(labels: list[int], masks: list[np.ndarray] | None, boxes: list[list[float]],
                    height: int, width: int) -> np.ndarray:
    """``(height, width)`` int64: each object's label on its mask (or its box), largest first."""
    out = np.zeros((height, width), np.int64)
    areas = [float(m.sum()) for m in masks] if masks is not None else [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    for k in sorted(range(len(labels)), key=lambda i: -areas[i]):
        if masks is not None:
            out[masks[k].astype(bool)] = labels[k]
        else:
            x1, y1, x2, y2 = boxes[k]
            out[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = labels[k]
    return out


def load_probe_set(json_path: str | Path, image_root: str | Path, size: int, label_map: LabelMap | None = None,
                   name: str = "train", max_images: int | None = None) -> ProbeSet:
    """Read ``json_path`` (boxes, and masks where present) into a :class:`ProbeSet` at ``size x size``.

    Errors name the file: no annotations, no categories, images missing on disk (``CocoDetection``).
    """
    check_size(size)
    coco = load_coco_json(json_path)
    if not coco.dataset["categories"]:
        raise UserError(f"{json_path} has no categories: a probe needs labelled objects "
                        f"(add a 'categories' list naming each category_id)")
    if not coco.dataset["annotations"]:
        raise UserError(f"{json_path} has no annotations: a probe needs labelled objects (boxes, masks optional)")
    with_masks = has_segmentations(coco)
    data = CocoDetection(json_path, image_root, train=True, label_map=label_map, with_masks=with_masks,
                         flip_prob=0.0, name=f"{name} set {Path(json_path).name}", coco=coco)
    count = len(data) if max_images is None else min(len(data), max_images)
    images, maps, boxes, labels = [], [], [], []
    for i in range(count):
        image, target = data[i]
        h, w = image.shape[1:]
        sx, sy = size / w, size / h
        masks = list(target["masks"].numpy()) if with_masks else None
        cmap = paint_class_map(target["labels"].tolist(), masks, target["boxes"].tolist(), h, w)
        images.append(F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True,
                                    align_corners=False)[0].clamp_(0, 1))
        maps.append(F.interpolate(torch.from_numpy(cmap)[None, None].float(), size=(size, size),
                                  mode="nearest")[0, 0].long())
        boxes.append(target["boxes"] * torch.tensor([sx, sy, sx, sy]))
        labels.append(target["labels"])
    return ProbeSet(name, torch.stack(images), torch.stack(maps), boxes, labels, data.label_map, not with_masks)


def synthetic_probe_sets(root: Path, train: int, val: int, size: int, seed: int, image_size: int,
                         preset: str = "standard") -> tuple[ProbeSet, ProbeSet, dict]:
    """Train (seed ``s``) and val (seed ``s + 1``) synthetic scenes, written once under ``root``."""
    from mcl.data.synthetic import write_coco_scenes

    paths = {}
    for split, num, split_seed in (("train", train, seed), ("val", val, seed + 1)):
        json_path = root / f"{split}.json"
        if not json_path.is_file():
            write_coco_scenes(root, num, split_seed, size, split_name=split, preset=preset)
        paths[split] = str(json_path)
    train_set = load_probe_set(paths["train"], root, image_size, name="train")
    val_set = load_probe_set(paths["val"], root, image_size, train_set.label_map, name="val")
    return train_set, val_set, {"train_json": paths["train"], "val_json": paths["val"], "images": str(root)}
