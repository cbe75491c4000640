"""Stream samples from tar shards (WebDataset layout) split across processes and loader workers.

Reading: each tar is read front to back with :mod:`tarfile` in streaming mode (no seeks, one open per
shard); an image is decoded by :func:`mcl.data.sources.decode_rgb` (the rules of ``load_rgb``) and
transformed. Items are :class:`~mcl.data.sources.ImageDataset`'s: ``{"crops", "index", "skipped"}``
where ``index`` numbers the samples of all shards in list order and ``skipped`` names the members
(``shard.tar:member``) or broken tars passed over since the previous item. Labeled shards (``num_classes``
given; written by ``mcl data shards --labels``) add ``"label"``, the sample's ``.cls``; a sample without a
valid one (missing, not an integer, outside ``0..num_classes-1``) is skipped like an unreadable image.

Split and the equal-length rule (``R`` processes, ``W`` loader workers each, ``B`` per-process batch,
``N`` samples in all by the index):

- every epoch the shard list is permuted with ``(seed, epoch)``; all processes agree;
- reader ``g = rank * W + worker`` of ``R * W`` reads the permuted shards ``g, g + R*W, ...``
  (disjoint; fewer shards than readers is refused);
- every process yields exactly ``floor(N / (R * B))`` full batches an epoch (the remainder is
  dropped, as drop_last does for files). Those batches are dealt to the workers (the first
  ``batches % W`` get one more), so the count depends on the config only, never on shard sizes: no
  process runs out first and DDP never hangs on a missing batch;
- a reader stops at its quota (the rest of its shards wait for another epoch's permutation) and
  reads its shards again if they hold fewer samples than its quota (corrupt members are skipped and
  do not count).

Samples pass through a per-reader shuffle buffer of ``shuffle_buffer`` undecoded members, seeded
with ``(seed, epoch, reader)``. The epoch sits in shared memory, so ``set_epoch`` in the main
process reaches persistent loader workers; :class:`ShardLoader` sets it at every ``iter()``.
"""

from __future__ import annotations

import copy
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mcl.data.shard_index import IMAGE_EXTS, ShardList, is_shard_source, list_shards, split_key
from mcl.data.sources import SourceError, UnreadableImage, decode_rgb
from mcl.errors import UserError

# Lightning warns about any IterableDataset with __len__; ours sizes every worker exactly (see above).
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")

Record = tuple  # (global index or None, name, image bytes or None for a broken shard, class index or None)


def wants_shards(source, fmt: str) -> bool:
    """Whether ``data.source`` / ``data.format`` select tar shards (``auto``: see ``is_shard_source``)."""
    if source is None or fmt == "files":
        return False
    return fmt == "shards" or is_shard_source(source)


def read_shard(path: Path) -> Iterator[tuple[int, str, bytes, int | None]]:
    """``(ordinal, image member name, image bytes, class index or None)`` for each sample of one shard,
    streamed in stored order.

    A sample is the run of consecutive members sharing a key (``000123.jpg`` + ``000123.cls``, in either
    order); ordinals count the samples that hold an image, as ``shard_index.image_members`` does.
    """
    ordinal, key, name, image, label = 0, None, None, None, None
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                parts = split_key(member.name) if member.isfile() else None
                if parts is None:
                    continue
                if parts[0] != key:
                    if image is not None:
                        yield ordinal, name, image, label
                        ordinal += 1
                    key, name, image, label = parts[0], None, None, None
                ext = parts[1].lower()
                if ext in IMAGE_EXTS and image is None:
                    name, image = member.name, tar.extractfile(member).read()
                elif ext == "cls":
                    label = _class_index(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        if image is not None:     # a truncated tar still gives the complete sample read before the break
            yield ordinal, name, image, label
        raise
    if image is not None:
        yield ordinal, name, image, label


def _class_index(data: bytes) -> int | None:
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def shuffled(items, size: int, rng: np.random.Generator) -> Iterator:
    """``items`` in an order mixed by a buffer of ``size`` (1: unchanged); every item comes out once."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = item
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


class ShardDataset(IterableDataset):
    """Decoded + transformed samples of a :class:`ShardList` (rules in the module doc).

    ``len()`` is the global sample count (what ``steps_per_epoch`` divides by the global batch);
    :meth:`split` binds a copy to one process, whose ``len()`` is what that process yields an epoch.
    """

    def __init__(self, shards: ShardList, transform, max_side: int | None = None, seed: int = 0,
                 shuffle_buffer: int = 1000, num_classes: int | None = None):
        if shuffle_buffer < 1:
            raise UserError(f"data.shard_shuffle_buffer = {shuffle_buffer} must be >= 1 (1: no shuffling)")
        self.shards, self.transform, self.max_side = shards, transform, max_side
        self.num_classes = num_classes
        self.seed, self.shuffle_buffer = int(seed), int(shuffle_buffer)
        self.offsets = shards.offsets()
        self.rank, self.world, self.batch_size, self.bound = 0, 1, 1, False
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    # ----- sizes and the split -----------------------------------------------------------------
    def __len__(self) -> int:
        return self.rank_batches() * self.batch_size if self.bound else self.shards.total

    def rank_batches(self) -> int:
        """Full batches each process yields an epoch."""
        return self.shards.total // (self.world * self.batch_size)

    def worker_quota(self, worker: int, workers: int) -> int:
        """Samples loader worker ``worker`` of ``workers`` yields an epoch (whole batches)."""
        n = self.rank_batches()
        return (n // workers + (worker < n % workers)) * self.batch_size

    def split(self, rank: int, world: int, batch_size: int, num_workers: int) -> "ShardDataset":
        """A copy bound to process ``rank`` of ``world`` (sharing the epoch); refuses too few shards."""
        readers = world * max(num_workers, 1)
        if len(self.shards.shards) < readers:
            raise UserError(
                f"{self.shards.source}: {len(self.shards.shards)} shards for {world} processes x "
                f"{max(num_workers, 1)} loader workers = {readers} readers; every reader needs a shard of its own: "
                f"write more, smaller shards (mcl data shards --shard-size) or lower data.num_workers")
        share = copy.copy(self)
        share.rank, share.world, share.batch_size, share.bound = int(rank), int(world), int(batch_size), True
        return share

    # ----- epochs ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def reader_shards(self, epoch: int, reader: int, readers: int) -> list[int]:
        """Indices (into the shard list) read by ``reader`` of ``readers`` in ``epoch``."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards.shards))
        return [int(i) for i in order[reader::readers]]

    # ----- reading -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        readers = self.world * workers
        if len(self.shards.shards) < readers:
            raise UserError(f"{self.shards.source}: {len(self.shards.shards)} shards for {readers} readers; "
                            "write more shards or lower data.num_workers")
        epoch, reader = self.epoch, self.rank * workers + worker
        mine = self.reader_shards(epoch, reader, readers)
        quota = self.worker_quota(worker, workers) if self.bound else self._unbound_quota(worker, workers)
        return self._serve(mine, quota, np.random.default_rng([self.seed, epoch, reader]))

    def _unbound_quota(self, worker: int, workers: int) -> int:
        """Without :meth:`split`: each sample once, workers splitting the total like the bound rule with B = 1."""
        n = self.shards.total
        return n // workers + (worker < n % workers)

    def _serve(self, mine: list[int], quota: int, rng: np.random.Generator) -> Iterator[dict]:
        served, skipped = 0, []
        while served < quota:
            good = 0
            for index, name, data, label in shuffled(self._records(mine), self.shuffle_buffer, rng):
                if data is None:
                    skipped.append(name)
                    continue
                if self.num_classes is not None and not (label is not None and 0 <= label < self.num_classes):
                    skipped.append(f"{name} (no class index 0..{self.num_classes - 1} in its .cls)")
                    continue
                try:
                    image = decode_rgb(data, self.max_side, name=name)
                except UnreadableImage:
                    skipped.append(name)
                    continue
                good += 1
                item = {"crops": self.transform(image), "index": index, "skipped": skipped}
                if self.num_classes is not None:
                    item["label"] = label
                yield item
                skipped, served = [], served + 1
                if served == quota:
                    return
            if good == 0:
                names = ", ".join(str(self.shards.shards[i].path) for i in mine[:3])
                raise SourceError(f"no readable image in shards {names}{' ...' if len(mine) > 3 else ''}: every "
                                  "sample failed to decode; rewrite them with `mcl data shards`")

    def _records(self, mine: list[int]) -> Iterator[Record]:
        """Every sample of the shards ``mine`` in order; a broken shard yields one ``(None, name, None)``."""
        for i in mine:
            path, offset, ordinal = self.shards.shards[i].path, self.offsets[i], -1
            try:
                for ordinal, member, data, label in read_shard(path):
                    yield offset + ordinal, f"{path}:{member}", data, label
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                yield None, f"{path} (unreadable tar after {ordinal + 1} samples: {exc})", None, None


class ShardLoader(DataLoader):
    """A ``DataLoader`` over one process's :meth:`ShardDataset.split` that sets the dataset's epoch from
    ``epoch_of()`` at every ``iter()``, before any worker reads (persistent workers included)."""

    def __init__(self, dataset: ShardDataset, epoch_of: Callable[[], int], **kwargs):
        self._epoch_of = epoch_of
        super().__init__(dataset, **kwargs)

    def __iter__(self):
        self.dataset.set_epoch(self._epoch_of())
        return super().__iter__()


def open_shards(source, transform, max_side: int | None = None, seed: int = 0,
                shuffle_buffer: int = 1000) -> ShardDataset:
    """A :class:`ShardDataset` over the shards ``source`` names (pattern, .tar, folder, index json, txt)."""
    return ShardDataset(list_shards(source), transform, max_side=max_side, seed=seed, shuffle_buffer=shuffle_buffer)
