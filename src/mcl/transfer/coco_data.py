"""COCO-format detection data for torchvision detectors.

``CocoDetection(json, image_root, train=...)`` yields ``(image, target)``: ``image`` a float tensor
``(3, H, W)`` in [0, 1] (RGB, original size) and, for training, ``target`` with ``boxes (N, 4)``
xyxy pixels, ``labels (N,)`` in 1..K, ``masks (N, H, W)`` uint8 (Mask R-CNN only) and ``image_id``;
for evaluation ``target`` holds only ``image_id``.

Resizing is left to the detector's ``GeneralizedRCNNTransform`` (see ``detection.MultiScaleTransform``):
it already resizes images, boxes and masks together, draws the short side per image in training and,
at test time, maps predictions back to the original image, which is the frame COCO scores in. Doing
it here as well would resize twice. The dataset only flips (train): ``x1' = W - x2, x2' = W - x1``.

Annotations are checked once when the file is read. Boxes are clipped to the image; annotations that
cannot be used (box malformed or of zero area after clipping, unknown image or category, unusable
segmentation when masks are trained) are dropped and counted in one line. Crowd regions are not
training targets (COCOeval uses them, at evaluation, to ignore detections).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor

from mcl.errors import UserError


def load_coco_json(path: str | Path) -> COCO:
    """A pycocotools ``COCO`` index of the json at ``path``, read quietly, with one-line errors."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"COCO json not found: {path} (check the path)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read COCO json {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path} is not a COCO detection json (it needs an 'images' list)")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    for key in ("annotations", "categories"):
        if not isinstance(data[key], list):
            raise UserError(f"{path}: '{key}' should be a list")
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= set(img):
            raise UserError(f"{path}: every image needs id, file_name, width and height (first bad one: {img!r:.120})")
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not {"id", "image_id", "category_id"} <= set(ann):
            raise UserError(f"{path}: every annotation needs id, image_id and category_id "
                            f"(first bad one: {ann!r:.120})")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@dataclass(frozen=True)
class LabelMap:
    """Category ids of a COCO json <-> contiguous detector labels 1..K (0 is background), by sorted id."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco(cls, coco: COCO) -> LabelMap:
        cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in cats), tuple(str(c.get("name", c["id"])) for c in cats))

    @property
    def num_classes(self) -> int:
        """K + 1, torchvision's ``num_classes`` (background included)."""
        return len(self.category_ids) + 1

    def label_to_category(self) -> dict[int, int]:
        return {i + 1: c for i, c in enumerate(self.category_ids)}

    def category_to_label(self) -> dict[int, int]:
        return {c: i + 1 for i, c in enumerate(self.category_ids)}


@dataclass
class CleanReport:
    """What reading a json kept and dropped (counts by reason)."""

    name: str
    train: bool
    kept: int = 0
    clipped: int = 0
    crowd: int = 0
    dropped: Counter = field(default_factory=Counter)
    first_dropped: dict = field(default_factory=dict)
    images_without_targets: int = 0
    missing_images: int = 0
    empty_categories: tuple[int, ...] = ()

    def lines(self) -> list[str]:
        out = []
        if self.dropped:
            reasons = ", ".join(f"{n} {why} (first: annotation id {self.first_dropped[why]})"
                                for why, n in self.dropped.most_common())
            out.append(f"{self.name}: dropped {sum(self.dropped.values())} of "
                       f"{self.kept + self.crowd + sum(self.dropped.values())} annotations: {reasons}")
        if self.crowd:
            out.append(f"{self.name}: {self.crowd} crowd regions are not detection targets")
        if self.clipped:
            out.append(f"{self.name}: clipped {self.clipped} boxes to the image")
        if self.images_without_targets:
            out.append(f"{self.name}: {self.images_without_targets} images have no usable annotation "
                       f"and are left out of training")
        if self.missing_images:
            out.append(f"{self.name}: skipped {self.missing_images} images missing on disk")
        if self.empty_categories:
            ids = ", ".join(map(str, self.empty_categories[:10])) + (" ..." if len(self.empty_categories) > 10 else "")
            consequence = "they keep a label but cannot be learned" if self.train else "they are not scored"
            out.append(f"{self.name}: {len(self.empty_categories)} categories have no annotations "
                       f"(ids {ids}); {consequence}")
        return out


def _valid_segmentation(seg, height: int, width: int) -> bool:
    if isinstance(seg, list):
        return bool(seg) and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg)
    if isinstance(seg, dict):
        return "counts" in seg and list(seg.get("size", [])) == [height, width]
    return False


def segmentation_to_mask(seg, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as a ``(height, width)`` uint8 mask."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle)


def clean_box(bbox, width: int, height: int) -> tuple[list[float] | None, bool]:
    """COCO ``[x, y, w, h]`` -> xyxy clipped to the image, and whether clipping changed it; None if unusable."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None, False
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, False
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, False
    x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    if x2 <= x1 or y2 <= y1:
        return None, False
    return [x1, y1, x2, y2], (x1, y1, x2, y2) != (x, y, x + w, y + h)


def has_segmentations(coco: COCO) -> bool:
    """True if any non-crowd annotation carries a segmentation (then Mask R-CNN, else Faster R-CNN)."""
    return any(a.get("segmentation") and not a.get("iscrowd", 0) for a in coco.dataset["annotations"])


class CocoDetection(Dataset):
    """A COCO-format set for a torchvision detector (module docstring: what is returned and dropped).

    ``train``: build targets, drop images with no usable annotation, flip with ``flip_prob``.
    ``label_map``: the train set's map, given to the val set so both share labels.
    ``with_masks``: decode masks into the targets (default: the json has segmentations).
    ``with_keypoints``: keypoint targets ``keypoints (N, K, 3)`` (x, y, COCO visibility) for Keypoint R-CNN; the
    categories' ``keypoints`` names give K and the flip order (``left*`` <-> ``right*``); an annotation without
    keypoints is dropped.
    ``skip_missing_images``: leave out images missing on disk instead of refusing the set.
    ``coco``: the json already read by ``load_coco_json`` (a caller that checked it first need not parse it again).
    """

    def __init__(self, json_path: str | Path, image_root: str | Path, *, train: bool,
                 label_map: LabelMap | None = None, with_masks: bool | None = None, flip_prob: float = 0.5,
                 skip_missing_images: bool = False, name: str | None = None, coco: COCO | None = None,
                 with_keypoints: bool = False):
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        self.train = train
        self.flip_prob = flip_prob if train else 0.0
        self.coco = coco if coco is not None else load_coco_json(self.json_path)
        self.label_map = label_map or LabelMap.from_coco(self.coco)
        self.with_masks = has_segmentations(self.coco) if with_masks is None else with_masks
        if train and self.with_masks and not has_segmentations(self.coco):
            raise UserError(f"{self.json_path} has no segmentation to train masks on; "
                            f"set model.masks=auto or false (Faster R-CNN)")
        self.with_keypoints = with_keypoints
        self.keypoint_names = keypoint_names(self.coco, self.json_path) if with_keypoints else ()
        self.flip_order = keypoint_flip_order(self.keypoint_names)
        self.report = CleanReport(name or f"{'train' if train else 'val'} set {self.json_path.name}", train)
        if not self.image_root.is_dir():
            raise UserError(f"image folder not found: {self.image_root} (give the folder the json's file_name "
                            f"entries are relative to)")
        self.targets = self._clean_annotations()
        image_ids = sorted(self.coco.imgs)
        if train:
            self.report.images_without_targets = sum(1 for i in image_ids if not self.targets.get(i))
            image_ids = [i for i in image_ids if self.targets.get(i)]
        self.image_ids = self._check_files(image_ids, skip_missing_images)
        if not self.image_ids:
            raise UserError(f"{self.json_path}: no usable {'training' if train else 'evaluation'} images "
                            f"({len(self.coco.imgs)} images, {self.report.kept} usable annotations)")

    def _clean_annotations(self) -> dict[int, list[tuple[list[float], int, dict]]]:
        """Per image id, the usable non-crowd annotations as ``(xyxy, label, annotation)``."""
        to_label = self.label_map.category_to_label()
        out: dict[int, list] = {}
        used_categories = set()
        rep = self.report
        self.crowd_annotations = []
        for ann in self.coco.dataset["annotations"]:
            img = self.coco.imgs.get(ann.get("image_id"))
            box, clipped = clean_box(ann.get("bbox"), img["width"], img["height"]) if img else (None, False)
            if ann.get("iscrowd", 0):
                rep.crowd += 1
                if box is not None:
                    self.crowd_annotations.append(ann)
                continue
            if img is None:
                why = "with an unknown image_id"
            elif ann.get("category_id") not in to_label:
                why = "with a category_id not in the train categories"
            elif box is None:
                why = "with a malformed, zero-area or outside-the-image box"
            elif self.with_masks and not _valid_segmentation(ann.get("segmentation"), img["height"], img["width"]):
                why = "without a usable segmentation"
            elif self.with_keypoints and not _valid_keypoints(ann, len(self.keypoint_names)):
                why = "without keypoints"
            else:
                rep.kept += 1
                rep.clipped += clipped
                used_categories.add(ann["category_id"])
                out.setdefault(img["id"], []).append((box, to_label[ann["category_id"]], ann))
                continue
            rep.dropped[why] += 1
            rep.first_dropped.setdefault(why, ann.get("id"))
        rep.empty_categories = tuple(c for c in self.label_map.category_ids if c not in used_categories)
        if self.train and rep.kept == 0:
            raise UserError(f"{self.json_path}: no usable training annotations "
                            f"({sum(rep.dropped.values())} dropped, {rep.crowd} crowd); check bbox and category_id")
        return out

    def _check_files(self, image_ids: list[int], skip_missing: bool) -> list[int]:
        missing = [i for i in image_ids if not (self.image_root / self.coco.imgs[i]["file_name"]).is_file()]
        if missing and not skip_missing:
            first = self.image_root / self.coco.imgs[missing[0]]["file_name"]
            raise UserError(f"{self.json_path}: {len(missing)} of {len(image_ids)} images are missing on disk "
                            f"(first: {first}); fix the image folder or set data.skip_missing_images=true")
        self.report.missing_images = len(missing)
        gone = set(missing)
        return [i for i in image_ids if i not in gone]

    def evaluation_gt(self) -> COCO:
        """The ground truth COCOeval should score against: this set's images (missing ones left out), its
        usable annotations as written in the file, and crowd regions (``area``/``iscrowd`` filled if absent)."""
        keep = set(self.image_ids)
        anns = [a for i in self.image_ids for _, _, a in self.targets.get(i, [])]
        anns += [a for a in self.crowd_annotations if a["image_id"] in keep]
        anns = [{**a, "iscrowd": a.get("iscrowd", 0), "area": a.get("area", a["bbox"][2] * a["bbox"][3])}
                for a in anns]
        if not anns:
            raise UserError(f"{self.json_path}: the evaluation set has no usable annotations, nothing to score")
        gt = COCO()
        gt.dataset = {**self.coco.dataset, "images": [self.coco.imgs[i] for i in self.image_ids],
                      "annotations": anns}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
        return gt

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> torch.Tensor:
        """The image as float ``(3, H, W)`` in [0, 1]; its size must match the json's width and height."""
        info = self.coco.imgs[image_id]
        path = self.image_root / info["file_name"]
        try:
            with Image.open(path) as im:
                image = pil_to_tensor(im.convert("RGB"))
        except OSError as exc:
            raise UserError(f"cannot decode image {path}: {exc}") from None
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            raise UserError(f"{path} is {image.shape[2]}x{image.shape[1]} but {self.json_path.name} says "
                            f"{info['width']}x{info['height']}; fix the json's width/height")
        return image.float().div_(255)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.image_ids[index]
        image = self.load_image(image_id)
        if not self.train:
            return image, {"image_id": image_id}
        anns = self.targets[image_id]
        height, width = image.shape[1:]
        target = {
            "boxes": torch.tensor([a[0] for a in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a[1] for a in anns], dtype=torch.int64),
            "image_id": image_id,
        }
        if self.with_masks:
            masks = [segmentation_to_mask(a[2]["segmentation"], height, width) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(masks))
        if self.with_keypoints:
            points = [a[2]["keypoints"] for a in anns]
            target["keypoints"] = torch.tensor(points, dtype=torch.float32).reshape(len(anns), -1, 3)
        if self.flip_prob and torch.rand(()) < self.flip_prob:
            image, target = hflip(image, target, self.flip_order)
        return image, target


def keypoint_names(coco: COCO, path: Path) -> tuple[str, ...]:
    """The keypoint names every category of the json shares (COCO's ``categories[i].keypoints``); one-line errors
    for a json without them or with categories that disagree."""
    names = {tuple(c.get("keypoints") or ()) for c in coco.dataset["categories"]}
    if names == {()} or not names:
        raise UserError(f"{path} has no keypoint names (categories[].keypoints) for Keypoint R-CNN: give a COCO "
                        f"keypoints json, or choose another model.detector")
    if len(names) > 1:
        raise UserError(f"{path}: the categories name different keypoints ({sorted(len(n) for n in names)} names); "
                        f"Keypoint R-CNN needs one list shared by every category")
    return names.pop()


def keypoint_flip_order(names: tuple[str, ...]) -> list[int]:
    """Where each keypoint goes in a left-right mirror: a name's ``left`` <-> ``right`` counterpart, else itself."""
    def mirror(name: str) -> str:
        return name.replace("left", "\0").replace("right", "left").replace("\0", "right")
    index = {n: i for i, n in enumerate(names)}
    return [index.get(mirror(n), i) for i, n in enumerate(names)]


def _valid_keypoints(ann: dict, k: int) -> bool:
    points = ann.get("keypoints")
    return isinstance(points, list) and len(points) == 3 * k and any(v > 0 for v in points[2::3])


def hflip(image: torch.Tensor, target: dict, flip_order: list[int] | None = None) -> tuple[torch.Tensor, dict]:
    """Mirror ``image (3, H, W)`` and its boxes/masks/keypoints left-right: ``x1' = W - x2``, ``x2' = W - x1``,
    keypoint ``x' = W - x``, and keypoint ``j`` becomes ``flip_order[j]`` (left <-> right)."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "keypoints" in target:
        points = target["keypoints"].clone()
        points[..., 0] = torch.where(points[..., 2] > 0, width - points[..., 0], points[..., 0])
        target["keypoints"] = points[:, flip_order] if flip_order else points
    return image.flip(-1), target


def collate(batch: list[tuple]) -> tuple[list, list]:
    """Detectors take lists (images differ in size): ``[(img, tgt), ...] -> ([img, ...], [tgt, ...])``."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def eval_generator() -> torch.Generator:
    """A private generator for an evaluation loader: a DataLoader draws its workers' base seed from its generator
    each time it is iterated, and from the global RNG without one, so each evaluation during training would shift
    the training's shuffles and augmentations (a run evaluated every N steps would train other weights)."""
    return torch.Generator().manual_seed(0)


def make_loader(dataset: CocoDetection, batch_size: int, num_workers: int, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate, persistent_workers=num_workers > 0, drop_last=False,
                      generator=None if shuffle else eval_generator())
