"""The montage pyramid (docs/method.md, "The montage pyramid"): pure tensor code, on whatever device the crops are on.

For one view, level ``i`` has downsample ratio ``r_i`` and covers every unique image ``c_i`` times.
It holds ``M_i = B * c_i / r_i**2`` montages of size ``S x S``, each an ``r_i x r_i`` grid of cells
of size ``S / r_i``. The ``r_i**2 * M_i = c_i * B`` cells are filled, in raster order, with the
crops named by ``labels = randperm(c_i * B) % B``: every image appears exactly ``c_i`` times, at
positions that differ between views because each view draws its own permutation.

Paper mode (B = 128, S = 224): ratios (1, 2, 4, 8), repeats (1, 1, 1, 2) give 128 + 32 + 8 + 4 = 172
montages per view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

INTERPOLATIONS = ("nearest", "bilinear_antialias")


@dataclass(frozen=True)
class LevelSpec:
    """One pyramid level: ``ratio`` cells per side, and how many times each image appears (``repeats``)."""

    ratio: int
    repeats: int

    def num_montages(self, batch_size: int) -> int:
        """``B * repeats / ratio**2``; refuses batch sizes that do not tile exactly."""
        cells = batch_size * self.repeats
        if cells % (self.ratio**2):
            raise ValueError(
                f"batch size {batch_size} does not fit a level with ratio {self.ratio} and repeats {self.repeats}: "
                f"{batch_size}x{self.repeats} cells must fill whole {self.ratio}x{self.ratio} montages "
                f"(a batch that is a multiple of {self.ratio**2 // _gcd(self.ratio**2, self.repeats)} fits)"
            )
        return cells // self.ratio**2


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def level_specs(ratios: list[int], repeats: list[int]) -> list[LevelSpec]:
    """Validated ``LevelSpec`` list: one level per ``(ratio, repeats)`` pair."""
    if len(ratios) != len(repeats):
        raise ValueError(f"ratios {ratios} and repeats {repeats} must have the same length")
    if not ratios:
        raise ValueError("no levels: ratios is empty")
    for r, c in zip(ratios, repeats):
        if r < 1 or c < 1:
            raise ValueError(f"montage ratios and repeats must be >= 1, got ratio {r}, repeats {c}")
    return [LevelSpec(r, c) for r, c in zip(ratios, repeats)]


def draw_labels(batch_size: int, spec: LevelSpec, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """Source-image index of every cell: ``randperm(B * repeats) % B`` shaped ``(M, ratio**2)``."""
    num = spec.num_montages(batch_size)
    perm = torch.randperm(batch_size * spec.repeats, generator=generator, device="cpu")
    return (perm % batch_size).view(num, spec.ratio**2).to(device)


def downscale(crops: Tensor, ratio: int, interpolation: str = "nearest") -> Tensor:
    """``(N, C, S, S) -> (N, C, S/ratio, S/ratio)``: nearest (as released) or antialiased bilinear."""
    if ratio == 1:
        return crops
    size = crops.shape[-1]
    if size % ratio:
        raise ValueError(f"crop size {size} is not divisible by montage ratio {ratio}")
    out = size // ratio
    if interpolation == "nearest":
        return F.interpolate(crops, size=(out, out), mode="nearest")
    if interpolation == "bilinear_antialias":
        return F.interpolate(crops, size=(out, out), mode="bilinear", antialias=True, align_corners=False)
    raise ValueError(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")


def tile(cells: Tensor, labels: Tensor) -> Tensor:
    """Assemble montages: ``cells (B, C, s, s)``, ``labels (M, r*r)`` -> ``(M, C, r*s, r*s)``.

    Cell ``k = row * r + col`` of montage ``m`` is ``cells[labels[m, k]]``.
    """
    num, per = labels.shape
    r = int(round(per**0.5))
    _, channels, s, _ = cells.shape
    grid = cells[labels.reshape(-1)].view(num, r, r, channels, s, s)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(num, channels, r * s, r * s)


def build_view_pyramid(crops: Tensor, specs: list[LevelSpec], interpolation: str = "nearest",
                       generator: torch.Generator | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """One view's pyramid.

    Args:
        crops: ``(B, L, C, S, S)``: crop ``l`` of each image feeds level ``l`` (``L == len(specs)``).
        specs: the levels.
    Returns:
        ``montages[i]`` of shape ``(M_i, C, S, S)`` and ``labels[i]`` of shape ``(M_i, r_i**2)`` holding the
        batch-local source index of each cell in raster order.
    """
    if crops.dim() != 5 or crops.shape[1] != len(specs):
        raise ValueError(f"expected crops of shape (B, {len(specs)}, C, S, S) for {len(specs)} levels, "
                        f"got {tuple(crops.shape)}")
    batch = crops.shape[0]
    montages, labels = [], []
    for level, spec in enumerate(specs):
        level_labels = draw_labels(batch, spec, generator, crops.device)
        cells = downscale(crops[:, level], spec.ratio, interpolation)
        montages.append(tile(cells, level_labels))
        labels.append(level_labels)
    return montages, labels


def build_pyramids(crops: Tensor, specs: list[LevelSpec], interpolation: str = "nearest",
                   generator: torch.Generator | None = None) -> list[tuple[list[Tensor], list[Tensor]]]:
    """Both views: ``crops (B, 2L, C, S, S)`` -> ``[(montages, labels) of view 1, ... of view 2]``.

    Crops ``0..L-1`` make view 1, crops ``L..2L-1`` view 2; each view draws its own permutations.
    """
    levels = len(specs)
    if crops.dim() != 5 or crops.shape[1] != 2 * levels:
        raise ValueError(f"expected crops of shape (B, {2 * levels}, C, S, S) (two views of {levels} levels), "
                        f"got {tuple(crops.shape)}")
    return [build_view_pyramid(crops[:, v * levels:(v + 1) * levels], specs, interpolation, generator)
            for v in range(2)]
