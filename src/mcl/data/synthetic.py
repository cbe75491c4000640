"""Embedded synthetic dataset: procedural multi-object scenes with exact COCO boxes and masks.

Scene ``index`` of dataset ``seed`` depends only on ``numpy.random.default_rng([seed, index])``.
A scene is a textured background (gradient + low-frequency colour noise + optional stripes)
with 2-8 textured shapes (disc, ellipse, rectangle, triangle, ring, star, cross) whose size
(diameter of the circumscribed circle) is log-uniform in [4%, 60%] of the side. Objects are
stacked in order (later ones occlude earlier ones) on an int label map; an object with fewer
than ``MIN_VISIBLE_PIXELS`` visible pixels is removed and the label map is rebuilt without it,
then the image is painted from exactly those masks, so every painted object is annotated and
each annotation's mask is exactly the pixels showing that object. Pixel noise is added last.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from mcl.data.sources import SourceError
from mcl.engine.atomic import write_atomic, write_text_atomic

# every object has 4 keypoints: the extreme points of its visible mask (for Keypoint R-CNN); a horizontal flip
# swaps left and right
KEYPOINT_NAMES = ("top", "right", "bottom", "left")
CATEGORIES: list[dict] = [
    {"id": i + 1, "name": name, "supercategory": "shape", "keypoints": list(KEYPOINT_NAMES),
     "skeleton": [[1, 2], [2, 3], [3, 4], [4, 1]]}
    for i, name in enumerate(("disc", "ellipse", "rectangle", "triangle", "ring", "star", "cross"))
]
MIN_VISIBLE_PIXELS = 16
MIN_SIZE = 16
SIZE_RANGE = (0.04, 0.60)
OBJECTS_RANGE = (2, 8)
_TEXTURES = ("flat", "stripes", "checker", "gradient", "speckle")


@dataclass(frozen=True)
class ScenePreset:
    """What a scene holds: how many objects, how large (circumcircle diameter / side, log-uniform), which textures."""

    objects: tuple[int, int]
    sizes: tuple[float, float]
    textures: tuple[str, ...]


# ``standard``: the embedded default (2-8 objects of 4-60% of the side, 5 textures).
# ``simple``: 1-3 objects of 25-60% of the side, flat or gradient fill: fewer, larger, plainer shapes, so that at
# CPU scale a detector and the probes can learn the shapes at all (docs/results.md says how it was chosen).
PRESETS = {"standard": ScenePreset(OBJECTS_RANGE, SIZE_RANGE, _TEXTURES),
           "simple": ScenePreset((1, 3), (0.25, 0.60), ("flat", "gradient"))}


def scene_preset(name: str) -> ScenePreset:
    if name not in PRESETS:
        raise SourceError(f"synthetic scene preset {name!r}: choose {' or '.join(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------------------------
# shapes: boolean masks in the object's rotated frame (u, v), all inside the radius-R circle


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray, r: float, p: dict) -> np.ndarray:
    """(h, w) bool: pixels of shape ``name`` with circumradius ``r`` at local coords (u, v)."""
    if name == "disc":
        return u * u + v * v <= r * r
    if name == "ellipse":
        return (u / r) ** 2 + (v / (r * p["aspect"])) ** 2 <= 1.0
    if name == "rectangle":
        a = r / math.sqrt(1.0 + p["aspect"] ** 2)
        return (np.abs(u) <= a) & (np.abs(v) <= a * p["aspect"])
    if name == "triangle":  # equilateral, inradius r/2, three half-planes
        inside = np.ones(u.shape, bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            inside &= u * math.cos(a) + v * math.sin(a) <= r / 2
        return inside
    if name == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (r * p["inner"]) ** 2)
    if name == "star":  # radius piecewise linear in angle between inner*r and r, p["points"] tips
        t = (np.arctan2(v, u) * (p["points"] / (2 * math.pi))) % 1.0
        reach = r * (p["inner"] + (1.0 - p["inner"]) * (1.0 - np.abs(2.0 * t - 1.0)))
        return u * u + v * v <= reach * reach
    if name == "cross":
        w = r * p["arm"]
        length = math.sqrt(r * r - w * w)
        au, av = np.abs(u), np.abs(v)
        return ((au <= length) & (av <= w)) | ((au <= w) & (av <= length))
    raise KeyError(name)


def _draw_object(rng: np.random.Generator, size: int, preset: ScenePreset = PRESETS["standard"]) -> dict:
    """All random parameters of one object (drawn up front so painting needs no choices)."""
    cat = int(rng.integers(len(CATEGORIES)))
    lo, hi = preset.sizes
    diameter = size * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return {
        "cat": cat,
        "r": max(1.5, diameter / 2),
        "cx": rng.uniform(0, size),
        "cy": rng.uniform(0, size),
        "angle": rng.uniform(0, 2 * math.pi),
        "shape": {
            "aspect": rng.uniform(0.35, 1.0),
            "inner": rng.uniform(0.45, 0.7) if CATEGORIES[cat]["name"] == "ring" else rng.uniform(0.38, 0.55),
            "points": int(rng.integers(5, 7)),
            "arm": rng.uniform(0.18, 0.35),
        },
        "texture": preset.textures[int(rng.integers(len(preset.textures)))],
        "colors": rng.uniform(0, 255, size=(2, 3)).astype(np.float32),
        "period": rng.uniform(3.0, 14.0),
        "tex_angle": rng.uniform(0, math.pi),
    }


def _rasterise(obj: dict, size: int):
    """Window (y0, y1, x0, x1), local (u, v) coords and bool mask of ``obj``; None if off-canvas/empty."""
    r = obj["r"]
    x0, x1 = max(0, math.floor(obj["cx"] - r)), min(size, math.ceil(obj["cx"] + r) + 1)
    y0, y1 = max(0, math.floor(obj["cy"] - r)), min(size, math.ceil(obj["cy"] + r) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - obj["cx"])[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - obj["cy"])[:, None]
    c, s = math.cos(obj["angle"]), math.sin(obj["angle"])
    u, v = c * dx + s * dy, -s * dx + c * dy
    mask = _shape_mask(CATEGORIES[obj["cat"]]["name"], u, v, r, obj["shape"])
    if not mask.any():
        return None
    return (y0, y1, x0, x1), u, v, mask


def _paint(window: np.ndarray, mask: np.ndarray, obj: dict, u: np.ndarray, v: np.ndarray,
           rng: np.random.Generator) -> None:
    """Write ``obj``'s texture into ``window`` (3, h, w) float32 where ``mask`` (h, w) is True."""
    c1, c2 = obj["colors"]
    kind = obj["texture"]
    if kind == "flat":
        window[:, mask] = c1[:, None]
        return
    if kind == "speckle":  # base colour with strong per-pixel variation
        n = int(mask.sum())
        window[:, mask] = c1[:, None] + np.float32(28.0) * rng.standard_normal((3, n), dtype=np.float32)
        return
    ca, sa = math.cos(obj["tex_angle"]), math.sin(obj["tex_angle"])
    t = (u * ca + v * sa)[mask]
    if kind == "gradient":
        w = np.clip(t / np.float32(2 * obj["r"]) + np.float32(0.5), 0, 1)
        window[:, mask] = c1[:, None] + w[None, :] * (c2 - c1)[:, None]
        return
    if kind == "stripes":
        sel = (np.floor(t / np.float32(obj["period"])) % 2).astype(bool)
    else:  # checker
        s = (-u * sa + v * ca)[mask]
        sel = ((np.floor(t / np.float32(obj["period"])) + np.floor(s / np.float32(obj["period"]))) % 2).astype(bool)
    window[:, mask] = np.where(sel[None, :], c2[:, None], c1[:, None])


# --------------------------------------------------------------------------------------------
# background


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(3, size, size) float32: colour gradient + blurry colour noise (+ stripes half the time).

    Built channel by channel into one buffer (few large temporaries: this is the hot path).
    """
    ramp = np.arange(size, dtype=np.float32) / np.float32(size)
    a = rng.uniform(0, 2 * math.pi)
    t = np.float32(math.cos(a)) * ramp[None, :] + np.float32(math.sin(a)) * ramp[:, None]
    t -= t.min()
    t *= np.float32(1.0 / max(float(t.max()), 1e-6))
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    grid = int(rng.integers(3, 9))
    blobs = np.clip(128 + rng.normal(0, 40, size=(grid, grid, 3)), 0, 255).astype(np.uint8)
    blobs = np.asarray(Image.fromarray(blobs).resize((size, size), Image.Resampling.BICUBIC))
    wave = None
    if rng.random() < 0.5:
        b = rng.uniform(0, math.pi)
        k = np.float32(2 * math.pi * size / rng.uniform(5, 40))
        amp = np.float32(rng.uniform(10, 35))
        wave = np.sin(np.float32(math.cos(b)) * k * ramp[None, :] + np.float32(math.sin(b)) * k * ramp[:, None])
        wave_rgb = amp * rng.uniform(-1, 1, size=3).astype(np.float32)
    bg = np.empty((3, size, size), np.float32)
    for c in range(3):
        np.multiply(t, c1[c] - c0[c], out=bg[c])
        bg[c] += blobs[:, :, c]
        bg[c] += c0[c] - np.float32(128)
        if wave is not None:
            bg[c] += wave_rgb[c] * wave
    return bg


# --------------------------------------------------------------------------------------------
# scenes


def render_scene(seed: int, index: int, size: int = 256, preset: str = "standard") -> tuple[Image.Image, list[dict]]:
    """Scene ``index`` of synthetic dataset ``seed`` (``preset``: see ``PRESETS``): (RGB image, COCO annotations).

    Each annotation: category_id, bbox [x, y, w, h] (tight around the visible mask, floats),
    area (visible pixel count), segmentation (COCO RLE, counts as str), iscrowd 0, and COCO keypoints
    ``[x, y, 2] x 4``: the visible mask's extreme points (``extreme_points``), ``num_keypoints`` 4.
    """
    image, anns, _, _ = _render(seed, index, size, preset=preset)
    return image, anns


def _render(seed: int, index: int, size: int, noise: bool = True, preset: str = "standard"):
    """(image, annotations, label map (size, size) int16, kept [(object params, raster)]).

    ``noise=False`` skips only the final pixel noise (same RNG stream up to that point), for tests.
    """
    if size < MIN_SIZE:
        raise SourceError(f"synthetic scene size {size} is too small; use at least {MIN_SIZE} pixels")
    kind = scene_preset(preset)
    rng = np.random.default_rng([int(seed), int(index)])
    canvas = _background(rng, size)
    objs = [_draw_object(rng, size, kind) for _ in range(int(rng.integers(kind.objects[0], kind.objects[1] + 1)))]
    placed = [(obj, raster) for obj in objs if (raster := _rasterise(obj, size)) is not None]

    label = _label_map(placed, size)
    counts = np.bincount(label.ravel(), minlength=len(placed) + 1)
    kept = [p for k, p in enumerate(placed) if counts[k + 1] >= MIN_VISIBLE_PIXELS]
    if len(kept) < len(placed):  # removing objects only uncovers others: survivors stay >= the minimum
        label = _label_map(kept, size)

    for obj, ((y0, y1, x0, x1), u, v, mask) in kept:
        _paint(canvas[:, y0:y1, x0:x1], mask, obj, u, v, rng)
    if noise:
        sigma = np.float32(rng.uniform(1.5, 6.0))
        grain = rng.standard_normal(canvas.shape, dtype=np.float32)
        grain *= sigma
        canvas += grain
    np.rint(canvas, out=canvas)
    np.clip(canvas, 0, 255, out=canvas)
    image = Image.fromarray(np.ascontiguousarray(canvas.astype(np.uint8).transpose(1, 2, 0)), mode="RGB")
    return image, _annotations(kept, label, size), label, kept


def _label_map(placed: list, size: int) -> np.ndarray:
    """(size, size) int16: 0 background, k+1 where object k (of ``placed``) is on top."""
    label = np.zeros((size, size), np.int16)
    for k, (_, ((y0, y1, x0, x1), _, _, mask)) in enumerate(placed):
        label[y0:y1, x0:x1][mask] = k + 1
    return label


def _annotations(kept: list, label: np.ndarray, size: int) -> list[dict]:
    """COCO annotations of the visible masks ``label == k + 1`` (searched inside each object's window)."""
    if not kept:
        return []
    masks = np.zeros((size, size, len(kept)), np.uint8, order="F")
    boxes, areas, keypoints = [], [], []
    for k, (_, ((y0, y1, x0, x1), _, _, _)) in enumerate(kept):
        vis = label[y0:y1, x0:x1] == k + 1
        masks[y0:y1, x0:x1, k] = vis
        keypoints.append([c for x, y in extreme_points(vis) for c in (float(x0 + x), float(y0 + y), 2)])
        rows, cols = np.flatnonzero(vis.any(axis=1)), np.flatnonzero(vis.any(axis=0))
        boxes.append([float(x0 + cols[0]), float(y0 + rows[0]),
                      float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)])
        areas.append(int(vis.sum()))
    rles = mask_utils.encode(masks)
    out = []
    for (obj, _), box, area, rle, points in zip(kept, boxes, areas, rles, keypoints):
        out.append(
            {
                "category_id": CATEGORIES[obj["cat"]]["id"],
                "bbox": box,
                "area": area,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "iscrowd": 0,
                "keypoints": points,
                "num_keypoints": len(KEYPOINT_NAMES),
            }
        )
    return out


def extreme_points(mask: np.ndarray) -> list[tuple[float, float]]:
    """The top, right, bottom and left extreme points of a non-empty bool ``mask (h, w)``, as pixel-centre
    ``(x, y)``: on the topmost row the middle of its pixels (``x = mean column + 0.5``, ``y = row + 0.5``), and the
    same for the rightmost column, the bottom row and the leftmost column."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    return [(float(np.flatnonzero(mask[top]).mean()) + 0.5, top + 0.5),
            (right + 0.5, float(np.flatnonzero(mask[:, right]).mean()) + 0.5),
            (float(np.flatnonzero(mask[bottom]).mean()) + 0.5, bottom + 0.5),
            (left + 0.5, float(np.flatnonzero(mask[:, left]).mean()) + 0.5)]


# --------------------------------------------------------------------------------------------
# writing and serving


def write_coco_scenes(out_dir, num: int, seed: int, size: int = 256, split_name: str = "images",
                      preset: str = "standard") -> Path:
    """Write scenes 0..num-1 as ``out_dir/<split_name>/{index:06d}.png`` plus a COCO json; return its path.

    The json is ``out_dir/annotations.json`` for the default ``split_name="images"``, else
    ``out_dir/<split_name>.json`` (so several splits can share ``out_dir``). Image ids are
    index + 1, file names are relative to the json's folder. Every file is written to a temp
    name then renamed; our own files are overwritten, nothing else is touched.
    """
    if int(num) < 1:
        raise SourceError(f"number of synthetic images must be >= 1, got {num}; pass --num 1 or more")
    if int(size) < MIN_SIZE:
        raise SourceError(f"synthetic scene size {size} is too small; pass --size {MIN_SIZE} or more")
    if not split_name or split_name in (".", "..") or any(c in split_name for c in "/\\"):
        raise SourceError(f"split name '{split_name}' must be a plain folder name like 'images' or 'train'")
    scene_preset(preset)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise SourceError(f"{out_dir} exists and is not a folder; choose another --out")
    image_dir = out_dir / split_name
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(int(num)):
        image, anns = render_scene(seed, index, size, preset)
        rel = f"{split_name}/{index:06d}.png"
        _atomic_png(image, out_dir / rel)
        images.append({"id": index + 1, "file_name": rel, "width": size, "height": size})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **ann})
    coco = {
        "info": {
            "description": "mcl synthetic scenes: procedural shapes with exact visible masks",
            "generator": "mcl.data.synthetic",
            "version": "1",
            "seed": int(seed),
            "num": int(num),
            "size": int(size),
            "preset": preset,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    json_path = out_dir / ("annotations.json" if split_name == "images" else f"{split_name}.json")
    write_text_atomic(json_path, json.dumps(coco))
    return json_path


def _atomic_png(image: Image.Image, path: Path) -> None:
    write_atomic(path, lambda f: image.save(f, format="PNG", compress_level=1))


class SyntheticScenes(torch.utils.data.Dataset):
    """Scenes rendered on the fly: item = {"crops": transform(image), "index": i, "skipped": []}."""

    def __init__(self, num: int, seed: int, size: int, transform, preset: str = "standard"):
        if int(num) < 1:
            raise SourceError(f"number of synthetic images must be >= 1, got {num}")
        if int(size) < MIN_SIZE:
            raise SourceError(f"synthetic scene size {size} is too small; use at least {MIN_SIZE} pixels")
        scene_preset(preset)
        self.num, self.seed, self.size, self.transform = int(num), int(seed), int(size), transform
        self.preset = preset

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i: int) -> dict:
        if not -self.num <= i < self.num:
            raise IndexError(f"scene {i} out of range for {self.num} scenes")
        i = int(i) % self.num
        image, _ = render_scene(self.seed, i, self.size, self.preset)
        return {"crops": self.transform(image), "index": i, "skipped": []}
