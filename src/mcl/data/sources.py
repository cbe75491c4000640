"""Image sources: list the images of a folder / COCO json / txt list, decode them robustly, serve them.

A *source* is one of
- a folder, searched recursively for files with an image extension (case-insensitive; hidden
  files and folders, e.g. macOS ``._x.jpg`` forks, are skipped), sorted by relative path;
- a COCO-format ``.json``: its ``images[*].file_name`` resolved against ``image_root``
  (default: the json's folder), in the json's order;
- a ``.txt`` list: one path per line, relative ones resolved against ``image_root`` (default: the
  txt's folder); blank lines and lines starting with ``#`` are ignored.

Files listed by a json or txt are not stat'ed here (cheap on millions of files); a missing or
broken one is skipped at load time by :class:`ImageDataset` and reported by :class:`SkipReport`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from mcl.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

log = logging.getLogger(__name__)


class SourceError(UserError):
    """A source (folder, json, txt) that cannot be listed or has no usable image."""


class UnreadableImage(Exception):
    """One image file that could not be decoded; the message names the path and the reason."""


# --------------------------------------------------------------------------------------------
# listing


def list_images(source, image_root=None) -> list[Path]:
    """Return the image paths of ``source`` (folder, COCO ``.json`` or ``.txt`` list).

    ``image_root`` overrides the folder that relative names of a json/txt are resolved against;
    it is ignored for a folder source. Raises :class:`SourceError` for a missing path, an
    unsupported kind, a malformed list, or a source with zero images.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder; give an image folder, a COCO .json or a .txt list")
    root = None
    if image_root is not None:
        root = Path(image_root).expanduser()
        if not root.is_dir():
            raise SourceError(f"image root {root} is not a folder; pass the folder the listed file names live in")
    if path.is_dir():
        paths = _list_folder(path)
    elif path.suffix.lower() == ".json":
        paths = _list_coco_json(path, root or path.parent)
    elif path.suffix.lower() == ".txt":
        paths = _list_txt(path, root or path.parent)
    else:
        raise SourceError(
            f"{path}: unsupported source kind '{path.suffix or path.name}'; give an image folder, "
            "a COCO .json or a .txt list (one image path per line)"
        )
    if not paths:
        raise SourceError(
            f"{path}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)}); point it at a source that has some"
        )
    return paths


def _list_folder(folder: Path) -> list[Path]:
    """Recursive walk following symlinked folders once each; sorted by relative posix path."""
    found: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # symlink cycle or a folder reached twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            full = Path(dirpath) / name
            found.append((full.relative_to(folder).as_posix(), full))
    found.sort(key=lambda item: item[0])
    return [p for _, p in found]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc}); check the path and its permissions") from None


def _list_coco_json(path: Path, root: Path) -> list[Path]:
    """``images[*].file_name`` of a COCO json, each kept inside ``root`` (no absolute, no ``..`` escape)."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); fix the file or regenerate it"
        ) from None
    if not isinstance(data, dict) or "images" not in data:
        raise SourceError(f"{path}: has no 'images' list; a COCO json needs images[*] with id and file_name")
    images = data["images"]
    if not isinstance(images, list):
        raise SourceError(f"{path}: 'images' is a {type(images).__name__}, not a list; a COCO json needs a list")
    root_abs = os.path.normpath(os.path.abspath(root))
    seen_ids: dict = {}
    out: list[Path] = []
    for i, entry in enumerate(images):
        if not isinstance(entry, dict):
            raise SourceError(f"{path}: images[{i}] is not an object; each image needs id and file_name")
        for field in ("id", "file_name"):
            if field not in entry:
                raise SourceError(f"{path}: images[{i}] has no {field}; add it (COCO needs id and file_name)")
        image_id, name = entry["id"], entry["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise SourceError(f"{path}: images[{i}].file_name is not a non-empty string; fix that entry")
        try:
            hash(image_id)
        except TypeError:
            raise SourceError(f"{path}: images[{i}].id is not a number or string; fix that entry") from None
        if image_id in seen_ids:
            raise SourceError(
                f"{path}: image id {image_id!r} appears twice (images[{seen_ids[image_id]}] and images[{i}]); "
                "ids must be unique"
            )
        seen_ids[image_id] = i
        out.append(_inside_root(path, i, name, root_abs))
    return out


def _inside_root(path: Path, i: int, name: str, root_abs: str) -> Path:
    """Resolve ``name`` under ``root_abs`` lexically; refuse absolute names and ``..`` escapes."""
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise SourceError(
            f"{path}: images[{i}].file_name '{name}' is absolute; make it relative to the image root ({root_abs})"
        )
    full = os.path.normpath(os.path.join(root_abs, name))
    if os.path.commonpath([root_abs, full]) != root_abs:
        raise SourceError(
            f"{path}: images[{i}].file_name '{name}' escapes the image root {root_abs} with '..'; "
            "fix the name or pass an image root that contains it"
        )
    return Path(full)


def _list_txt(path: Path, root: Path) -> list[Path]:
    """Non-blank, non-``#`` lines of a txt list, relative ones resolved against ``root``."""
    out = []
    for line in _read_text(path).splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        out.append(p if p.is_absolute() else root / p)
    return out


# --------------------------------------------------------------------------------------------
# decoding


def load_rgb(path, max_side: int | None = None) -> Image.Image:
    """Decode the image file ``path`` (rules in :func:`decode_rgb`)."""
    return decode_rgb(path, max_side)


def decode_rgb(data, max_side: int | None = None, name=None) -> Image.Image:
    """Decode ``data`` (a path, ``bytes`` or a binary file object) fully into an 8-bit ``"RGB"`` PIL image,
    upright per its EXIF orientation. ``name`` (default: ``data`` itself) names it in errors.

    Mode handling: L/1/P/CMYK/YCbCr -> RGB via PIL; anything with alpha (RGBA, LA, PA, P with
    transparency) is composited over **white**; 16-bit (I;16*) maps 0..65535 -> 0..255 as
    round(v * 255 / 65535); ``I`` does the same when its values lie in 0..65535, else (like ``F``,
    unless F lies in [0, 1], which maps to 0..255) its min..max is stretched to 0..255.

    ``max_side`` caps the longest side (aspect kept): JPEGs are decoded at a reduced DCT scale
    (``draft``) so the full-size bitmap is never built; other formats are reduced after decoding.

    Size guard: PIL's warnings while decoding (decompression bomb, corrupt EXIF, ...) are silenced;
    an image above PIL's hard limit (2 x ``Image.MAX_IMAGE_PIXELS``, ~179 Mpx by default) is refused
    as :class:`UnreadableImage`. Truncated files fail (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left
    False and the image is loaded fully). Any failure raises :class:`UnreadableImage` naming the path.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive int or None, got {max_side}")
    path = name if name is not None else data
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb / corrupt-EXIF / palette notes: per-image spam, never fatal
            with Image.open(data) as im:
                if max_side is not None:  # JPEG/MPO: reduced-scale DCT decode; other formats: no-op
                    im.draft(None, _draft_size(im.size, max_side))
                im.load()
                im = _upright(im)
                im = _to_rgb8(im)
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"{path}: refused, too many pixels ({exc})") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise UnreadableImage(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if max_side is not None and max(im.size) > max_side:
        im = im.resize(_fit(im.size, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return im


def _draft_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Requested (w, h) for JPEG draft so the longest decoded side stays >= ``max_side``."""
    w, h = size
    f = max(w, h) / max_side
    if f <= 1:
        return w, h
    return max(1, math.ceil(w / f)), max(1, math.ceil(h / f))


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(w, h) scaled so the longest side equals ``max_side``; each side at least 1."""
    w, h = size
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _upright(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a malformed EXIF block leaves the image as stored."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:
        return im
    return out if out is not None else im


def _to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (rules in :func:`load_rgb`)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint32)
        return _gray_u8(((a * 255 + 32767) // 65535).astype(np.uint8))
    if mode in ("I", "F"):
        return _gray_u8(_scale_wide(np.asarray(im), mode))
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def _scale_wide(a: np.ndarray, mode: str) -> np.ndarray:
    """32-bit int / float gray -> uint8 (see :func:`load_rgb` for the rule)."""
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if mode == "I" and lo >= 0 and hi <= 65535:
        lo, hi = 0.0, 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    span = hi - lo if hi > lo else 1.0
    out = np.where(finite, (a - lo) * (255.0 / span), 0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _gray_u8(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a), mode="L").convert("RGB")


# --------------------------------------------------------------------------------------------
# serving


class ImageDataset(torch.utils.data.Dataset):
    """Decoded + transformed images of a list of paths; unreadable files are skipped.

    ``item = {"crops": transform(rgb), "index": int, "skipped": list[str]}``: on an unreadable
    file it serves i+1, i+2, ... (mod len) instead and lists the failed paths in ``skipped``.
    Paths that failed once are remembered by this dataset object (so per loader-worker process)
    and skipped later without decoding again.
    """

    def __init__(self, paths: list[Path], transform, max_side: int | None = None, source_name: str = ""):
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.max_side = max_side
        self.source_name = source_name or "the image list"
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        n = len(self.paths)
        if n == 0:
            raise SourceError(f"no readable image in {self.source_name}: the list is empty")
        skipped: list[str] = []
        for step in range(n):
            j = (int(i) + step) % n
            if j in self._bad:
                skipped.append(str(self.paths[j]))
                continue
            try:
                image = load_rgb(self.paths[j], self.max_side)
            except UnreadableImage:
                self._bad.add(j)
                skipped.append(str(self.paths[j]))
                continue
            return {"crops": self.transform(image), "index": j, "skipped": skipped}
        raise SourceError(
            f"no readable image in {self.source_name} ({n} files, all failed to decode); "
            "check the files or the source path"
        )


def collate_views(samples: list[dict]) -> dict:
    """Batch items: crops -> (B, 8, 3, S, S), index -> LongTensor (B,), skipped -> one flat list."""
    return {
        "crops": torch.stack([s["crops"] for s in samples]),
        "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
        "skipped": [p for s in samples for p in s["skipped"]],
    }


class SkipReport:
    """Main-process tally of unreadable files: one logged WARNING (logger ``mcl.data.sources``,
    shown on stderr) per newly seen path."""

    def __init__(self, source: str = "", total: int | None = None):
        self.source = source or "the source"
        self.total = total
        self._seen: set[str] = set()

    def update(self, skipped: list[str]) -> None:
        for path in skipped:
            if path not in self._seen:
                self._seen.add(path)
                log.warning("skipping unreadable image %s (not decodable; remove or replace it)", path)

    @property
    def count(self) -> int:
        return len(self._seen)

    def summary(self) -> str:
        of = f" of {self.total}" if self.total is not None else ""
        noun = "file" if self.count == 1 else "files"
        return f"skipped {self.count} unreadable {noun}{of} in {self.source}"
