"""Labeled image sources for supervised montage pretraining: each image gets one class index.

Sources (named choices where there is no standard):
- a folder with one subfolder per class: classes are the subfolder names sorted (as torchvision's
  ``ImageFolder``), images are found recursively inside each (hidden files skipped); images lying
  directly in the top folder have no class and are left out (a warning counts them);
- a COCO json: an image's label is the category with the **largest total annotated area** in it
  (sum of ``area``, else ``w * h`` of ``bbox``, over its non-crowd annotations; ties -> the smaller
  category id). Images without a non-crowd annotation are left out (a warning counts them).
  Classes are the json's categories sorted by id;
- the embedded synthetic scenes: the same largest-area rule on each scene's exact annotations; a
  scene with no visible object is replaced by the next scene that has one.

Items are ``ImageDataset``'s dict plus ``"label"`` (int); :func:`collate_labeled` batches them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mcl.data.sources import ImageDataset, SourceError, _list_folder, _read_text, collate_views, list_images
from mcl.data.synthetic import CATEGORIES, SyntheticScenes, render_scene

log = logging.getLogger(__name__)
_SYNTHETIC_INDEX = {c["id"]: i for i, c in enumerate(CATEGORIES)}


@dataclass
class LabeledList:
    """Image paths, their class indices (``0..C-1``) and the class names."""

    paths: list[Path]
    labels: list[int]
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def largest_area_category(annotations: list[dict]) -> int | None:
    """The ``category_id`` with the largest summed area over non-crowd annotations (ties: smaller id)."""
    totals: dict[int, float] = {}
    for ann in annotations:
        if ann.get("iscrowd", 0):
            continue
        area = ann.get("area")
        if area is None:
            bbox = ann.get("bbox") or [0, 0, 0, 0]
            area = float(bbox[2]) * float(bbox[3])
        totals[ann["category_id"]] = totals.get(ann["category_id"], 0.0) + float(area)
    if not totals:
        return None
    return min(totals, key=lambda c: (-totals[c], c))


def list_labeled(source, image_root=None) -> LabeledList:
    """A class-per-subfolder folder or a COCO json -> :class:`LabeledList` (see the module docstring)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _list_class_folders(path)
    if path.suffix.lower() == ".json" and path.is_file():
        return _list_coco_labels(path, image_root)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder; give a folder with one subfolder per class or a COCO .json")
    raise SourceError(f"{path}: supervised pretraining needs labels: give a folder with one subfolder per class "
                      f"or a COCO .json with annotations (a {path.suffix or path.name} list has no labels)")


def _list_class_folders(folder: Path) -> LabeledList:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise SourceError(f"{folder}: found {len(classes)} class subfolder(s); supervised pretraining needs a folder "
                          f"with one subfolder per class (at least 2)")
    paths, labels = [], []
    for index, name in enumerate(classes):
        found = _list_folder(folder / name)
        if not found:
            raise SourceError(f"{folder / name}: class folder has no images; add images or remove the folder")
        paths += found
        labels += [index] * len(found)
    loose = [p for p in _list_folder(folder) if p.parent == folder]
    if loose:
        log.warning("%d images directly in %s have no class subfolder and are left out", len(loose), folder)
    return LabeledList(paths, labels, classes)


def _list_coco_labels(path: Path, image_root) -> LabeledList:
    paths = list_images(path, image_root)                      # validates images[*] and resolves file names
    data = json.loads(_read_text(path))
    categories = sorted(data.get("categories") or [], key=lambda c: c["id"])
    if len(categories) < 2:
        raise SourceError(f"{path}: has {len(categories)} categories; supervised pretraining needs at least 2")
    index_of = {c["id"]: i for i, c in enumerate(categories)}
    per_image: dict = {}
    for ann in data.get("annotations") or []:
        per_image.setdefault(ann.get("image_id"), []).append(ann)
    kept_paths, labels = [], []
    for entry, p in zip(data["images"], paths):
        cat = largest_area_category(per_image.get(entry["id"], []))
        if cat is None:
            continue
        if cat not in index_of:
            raise SourceError(f"{path}: an annotation of image {entry['id']} has category_id {cat}, "
                              f"which is not in 'categories'; fix the json")
        kept_paths.append(p)
        labels.append(index_of[cat])
    if not kept_paths:
        raise SourceError(f"{path}: no image has a non-crowd annotation, so none has a label; use an annotated json")
    if len(kept_paths) < len(paths):
        log.warning("%d of %d images in %s have no non-crowd annotation and are left out",
                    len(paths) - len(kept_paths), len(paths), path)
    return LabeledList(kept_paths, labels, [str(c.get("name", c["id"])) for c in categories])


class LabeledImageDataset(ImageDataset):
    """``ImageDataset`` (robust decoding, unreadable files skipped) whose items also carry ``"label"``."""

    def __init__(self, listing: LabeledList, transform, max_side: int | None = None, source_name: str = ""):
        super().__init__(listing.paths, transform, max_side=max_side, source_name=source_name)
        self.labels = list(listing.labels)
        self.class_names = list(listing.class_names)

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        item["label"] = self.labels[item["index"]]            # the image actually served (after any skip)
        return item


class LabeledSyntheticScenes(SyntheticScenes):
    """Synthetic scenes labelled with their largest-area shape category (7 classes)."""

    class_names = [c["name"] for c in CATEGORIES]

    def __getitem__(self, i: int) -> dict:
        if not -self.num <= i < self.num:
            raise IndexError(f"scene {i} out of range for {self.num} scenes")
        for step in range(self.num):
            j = (int(i) + step) % self.num
            image, anns = render_scene(self.seed, j, self.size, self.preset)
            cat = largest_area_category(anns)
            if cat is not None:
                return {"crops": self.transform(image), "index": j, "skipped": [], "label": _SYNTHETIC_INDEX[cat]}
        raise SourceError(f"none of the {self.num} synthetic scenes has a visible object; raise data.synthetic_size")


def collate_labeled(samples: list[dict]) -> dict:
    """``collate_views`` plus ``labels``: LongTensor ``(B,)``."""
    batch = collate_views(samples)
    batch["labels"] = torch.tensor([int(s["label"]) for s in samples], dtype=torch.long)
    return batch
