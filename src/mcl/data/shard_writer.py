"""Write images into tar shards (WebDataset layout) plus their ``shards.json`` index.

Shards are ``OUT/shard-000000.tar, ...`` with ``shard_size`` samples each (the last may hold fewer);
sample ``n`` (counting from 0 over all shards) is the member ``{n:09d}.{ext}``. With labels (supervised
pretraining), it is followed by ``{n:09d}.cls`` holding the class index as decimal text (WebDataset's
convention), and ``OUT/classes.json`` lists the class names in index order. Each shard is written
to a hidden temporary file and renamed when complete, the index last, so a crash never leaves a
half-written shard under a final name. A folder that already holds shards or an index is refused.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mcl.data.shard_index import CLASSES_NAME, INDEX_NAME, Shard, write_index
from mcl.data.sources import SourceError, UnreadableImage, decode_rgb
from mcl.engine.atomic import AtomicFile, write_text_atomic
from mcl.errors import UserError

JPEG_QUALITY = 90


@dataclass
class WriteResult:
    shards: list[Shard]
    index: Path
    skipped: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)


def refuse_existing(out: Path) -> None:
    """Raise if ``out`` already holds shards or an index (nothing is ever overwritten)."""
    if not out.is_dir():
        return
    found = sorted(p.name for p in out.iterdir() if p.name in (INDEX_NAME, CLASSES_NAME) or
                   (p.name.startswith("shard-") and p.name.endswith(".tar")))
    if found:
        raise UserError(f"{out} already holds shards ({found[0]}{', ...' if len(found) > 1 else ''}): "
                        "choose a new --out or delete them first (nothing was overwritten)")


def sample_bytes(path: Path, max_side: int | None) -> tuple[bytes, str]:
    """(data, extension): the file as stored, or with ``max_side`` decoded, capped and re-encoded as JPEG."""
    if max_side is None:
        try:
            return path.read_bytes(), path.suffix.lower().lstrip(".")
        except OSError as exc:
            raise UnreadableImage(f"{path}: cannot read ({exc.strerror or exc})") from None
    buf = io.BytesIO()
    decode_rgb(path, max_side).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), "jpg"


def write_shards(paths: list[Path], out, shard_size: int, max_side: int | None = None,
                 seed: int | None = 0, labels: list[int] | None = None,
                 class_names: list[str] | None = None) -> WriteResult:
    """Write ``paths`` (shuffled with ``seed`` unless it is None) as shards of ``shard_size`` into ``out``.

    ``labels`` (one class index per path) and ``class_names``: also write each sample's ``.cls`` and
    ``classes.json``.
    """
    if (labels is None) != (class_names is None) or (labels is not None and len(labels) != len(paths)):
        raise ValueError("labels (one per path) and class_names go together")
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size} must be >= 1 (images per shard; ~1000 suits ImageNet)")
    if max_side is not None and max_side < 1:
        raise UserError(f"--max-side {max_side} must be >= 1 (pixels of the longest side)")
    out = Path(out)
    refuse_existing(out)
    out.mkdir(parents=True, exist_ok=True)
    order = list(range(len(paths))) if seed is None else list(np.random.default_rng(seed).permutation(len(paths)))
    writer = _ShardWriter(out, shard_size)
    skipped: list[str] = []
    try:
        for i in order:
            try:
                data, ext = sample_bytes(Path(paths[i]), max_side)
            except UnreadableImage:
                skipped.append(str(paths[i]))
                continue
            writer.add(data, ext, None if labels is None else int(labels[i]))
        writer.close()
    finally:
        writer.discard()
    if not writer.shards:
        raise SourceError(f"none of the {len(paths)} images could be read; nothing was written to {out}")
    if class_names is not None:
        names = json.dumps(list(class_names), indent=1) + "\n"
        write_text_atomic(out / CLASSES_NAME, names)
    return WriteResult(writer.shards, write_index(out / INDEX_NAME, writer.shards), skipped)


class _ShardWriter:
    """Appends samples to the current temporary shard; renames it once it holds ``size`` samples."""

    def __init__(self, out: Path, size: int):
        self.out, self.size = out, size
        self.shards: list[Shard] = []
        self.count = 0
        self._tar: tarfile.TarFile | None = None
        self._file: AtomicFile | None = None
        self._in_shard = 0

    def add(self, data: bytes, ext: str, label: int | None = None) -> None:
        if self._tar is None:
            self._file = AtomicFile(self.out / f"shard-{len(self.shards):06d}.tar")
            self._tar = tarfile.open(fileobj=self._file.file, mode="w", format=tarfile.PAX_FORMAT)
        self._member(f"{self.count:09d}.{ext}", data)
        if label is not None:
            self._member(f"{self.count:09d}.cls", str(label).encode())
        self.count += 1
        self._in_shard += 1
        if self._in_shard == self.size:
            self.close()

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        """Finish the current shard (if any) under its final name."""
        if self._tar is None:
            return
        self._tar.close()
        final = self._file.commit()
        self.shards.append(Shard(final, self._in_shard))
        self._tar, self._file, self._in_shard = None, None, 0

    def discard(self) -> None:
        """Remove an unfinished temporary shard (after an error)."""
        if self._tar is not None:
            self._tar.close()
            self._file.discard()
            self._tar, self._file = None, None
