"""Exact resume: the data order, the augmentation randomness and the RNG state are functions of the step.

- :class:`EpochSampler`: epoch ``e``'s order is ``randperm(n)`` from a generator seeded with
  ``(seed, e)``; process ``r`` of ``w`` takes positions ``r, r + w, ...`` of its first
  ``batches_per_epoch x batch x w`` entries. It starts at a global batch position (batches already
  trained), so a run resumed mid-epoch reads the rest of the same permutation.
- :class:`SeededItems`: item ``i`` of epoch ``e`` is built with torch's RNG seeded from
  ``(seed, e, i)`` (in a forked RNG, so the training process' RNG is untouched): the crops do not
  depend on the loader worker, the number of workers, or where a run was interrupted.
  :class:`SeededCollate` does the same for the batching, seeded by the batch's keys.
- :class:`ResumeState`: counts the batches trained and stores it with the torch / numpy / python
  RNG states in every checkpoint; on resume the RNG states are put back right before the first
  training batch (the training step draws the montage permutations from torch's global RNG).
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset, Sampler


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of ``epoch`` (``index = -1``: the epoch's permutation)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` for this process, from global batch ``start`` on (see module doc).

    Each ``iter()`` is one pass: the rest of the epoch holding the current position, then the
    position moves to the next epoch's start. ``len()`` is a full epoch's share.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.num_items, self.batch_size, self.seed = int(num_items), int(batch_size), int(seed)
        self.rank, self.world = int(rank), int(world)
        self.batches_per_epoch = self.num_items // (self.batch_size * self.world)
        if self.batches_per_epoch < 1:
            raise ValueError(f"{num_items} items are fewer than one global batch ({batch_size} x {world})")
        self.position = int(start)

    def epoch_order(self, epoch: int) -> list[int]:
        """This process' indices of ``epoch``, in order (drop-last across all processes)."""
        generator = torch.Generator().manual_seed(item_seed(self.seed, epoch, -1))
        perm = torch.randperm(self.num_items, generator=generator)
        used = perm[: self.batches_per_epoch * self.batch_size * self.world]
        return used[self.rank::self.world].tolist()

    def __iter__(self):
        epoch, offset = divmod(self.position, self.batches_per_epoch)
        self.position = (epoch + 1) * self.batches_per_epoch
        for index in self.epoch_order(epoch)[offset * self.batch_size:]:
            yield epoch, index

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size


class SeededItems(Dataset):
    """``(key, dataset[i])`` built under ``torch.manual_seed(item_seed(seed, epoch, i))``; keys are ``(epoch, i)``."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, epoch, index))
            return key, self.dataset[index]


class SeededCollate:
    """Calls ``collate`` on the items of :class:`SeededItems` under a seed drawn from the batch's keys,
    so randomness drawn while batching (e.g. ``data.augment_on=device`` parameters) is reproducible too."""

    def __init__(self, collate, seed: int):
        self.collate, self.seed = collate, int(seed)

    def __call__(self, samples: list):
        keys = [key for key, _ in samples]
        digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, keys[0][0], int.from_bytes(digest, "little")))
            return self.collate([item for _, item in samples])


def capture_rng() -> dict:
    """torch (CPU and current CUDA device), numpy and python RNG states, loadable with ``weights_only``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                        has_gauss, gauss], "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    """Put back the states of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class ResumeState(Callback):
    """Batches trained (the data position) and the RNG states, saved with every checkpoint."""

    def __init__(self):
        self.batches_seen = 0
        self._pending_rng: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches_seen += 1

    def state_dict(self) -> dict:
        return {"batches_seen": self.batches_seen, "rng": capture_rng()}

    def load_state_dict(self, state: dict) -> None:
        self.batches_seen = int(state["batches_seen"])
        self._pending_rng = state.get("rng")


def resume_position(trainer) -> int:
    """Batches already trained by this run (0 for a new run), from the trainer's :class:`ResumeState`."""
    for callback in getattr(trainer, "callbacks", []) if trainer is not None else []:
        if isinstance(callback, ResumeState):
            return callback.batches_seen
    return 0
