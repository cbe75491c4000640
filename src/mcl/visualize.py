"""Pictures of what the network is fed: the crops of a few images and both views' montage pyramids."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from mcl.data.views import IMAGENET_MEAN, IMAGENET_STD
from mcl.montage import LevelSpec, build_pyramids

PAD = 6
TEXT = (20, 20, 20)
GRID = (255, 255, 0)


def to_pil(image: Tensor) -> Image.Image:
    """Undo the ImageNet normalisation of a ``(3, H, W)`` tensor and return an RGB image."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = ((image.float().cpu() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


def label_cells(tile: Image.Image, labels: list[int], ratio: int) -> Image.Image:
    """Draw the cell grid and each cell's source-image index on a montage."""
    tile = tile.copy()
    draw = ImageDraw.Draw(tile)
    cell = tile.width / ratio
    for k, label in enumerate(labels):
        row, col = divmod(k, ratio)
        x0, y0 = col * cell, row * cell
        draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], outline=GRID)
        draw.rectangle([x0 + 1, y0 + 1, x0 + 7 * len(str(label)) + 2, y0 + 11], fill=(0, 0, 0))
        draw.text((x0 + 2, y0), str(label), fill=(255, 255, 255))
    return tile


def draw_pyramids(crops: Tensor, specs: list[LevelSpec], interpolation: str = "nearest", show_images: int = 4,
                  montages_per_level: int = 2, scale: int = 2, seed: int = 0) -> Image.Image:
    """One PNG-ready picture.

    Top: the ``2L`` crops of the first ``show_images`` images (crops ``0..L-1`` = view 1, one per level).
    Below, per view: for each level, its first ``montages_per_level`` montages with their cell grid
    and the source index of every cell.
    """
    levels = len(specs)
    size = crops.shape[-1] * scale
    views = build_pyramids(crops, specs, interpolation, torch.Generator().manual_seed(seed))
    rows: list[tuple[str, list[Image.Image]]] = []
    for b in range(min(show_images, crops.shape[0])):
        tiles = [to_pil(crops[b, j]).resize((size, size), Image.NEAREST) for j in range(2 * levels)]
        rows.append((f"image {b}: crops 0-{levels - 1} (view 1) | {levels}-{2 * levels - 1} (view 2)", tiles))
    for v, (montages, labels) in enumerate(views):
        for i, spec in enumerate(specs):
            tiles = []
            for m in range(min(montages_per_level, montages[i].shape[0])):
                tile = to_pil(montages[i][m]).resize((size, size), Image.NEAREST)
                tiles.append(label_cells(tile, labels[i][m].tolist(), spec.ratio))
            rows.append((f"view {v + 1}, level {i}: ratio {spec.ratio}, {montages[i].shape[0]} montages "
                         f"(first {len(tiles)} shown), cell = source image index", tiles))
    width = PAD + max(len(t) for _, t in rows) * (size + PAD)
    height = sum(14 + size + PAD for _ in rows) + PAD
    canvas = Image.new("RGB", (max(width, 420), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = PAD
    for title, tiles in rows:
        draw.text((PAD, y), title, fill=TEXT)
        y += 14
        for j, tile in enumerate(tiles):
            canvas.paste(tile, (PAD + j * (size + PAD), y))
        y += size + PAD
    return canvas
