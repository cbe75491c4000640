"""MoCo v2 views: two independently augmented crops of one image, the same recipe for both.

Per crop, in uint8 until the final normalise (MoCo v2's augmentation, arXiv 2003.04297):
RandomResizedCrop(S, scale=(0.2, 1)) -> ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 -> grayscale p=0.2 ->
GaussianBlur(sigma ~ U[0.1, 2.0]) p=0.5 -> hflip p=0.5; then x = (x / 255 - mean) / std (ImageNet).

Named choice: the blur is :class:`mcl.data.views.RandomGaussianBlur` (kernel ~ 0.1 S, odd), where
MoCo v2 used PIL's ``GaussianBlur(radius=sigma)``; both are Gaussians of the same sigma, differing
only in where the kernel is truncated (at 5.5 sigma or more for S = 224; tighter on small crops).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from mcl.data.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomGaussianBlur,
    _as_uint8_rgb,
    blur_kernel_size,
    single_thread,
)


def moco_v2_recipe(crop_size: int, scale: tuple[float, float] = (0.2, 1.0)) -> v2.Compose:
    """uint8 (3, H, W) -> uint8 (3, S, S): one MoCo v2 crop before normalisation."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(crop_size, scale=scale, antialias=True),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            RandomGaussianBlur(blur_kernel_size(crop_size), sigma=(0.1, 2.0), p=0.5),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    )


class TwoCropViews:
    """PIL image (or uint8 (3, H, W) tensor) -> float32 (2, 3, S, S), ImageNet-normalised."""

    def __init__(self, crop_size: int = 224, scale: tuple[float, float] = (0.2, 1.0)):
        if crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        self.crop_size, self.scale = crop_size, tuple(scale)
        self.recipe = moco_v2_recipe(crop_size, self.scale)
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def __call__(self, image) -> torch.Tensor:
        with single_thread():
            pixels = _as_uint8_rgb(image)
            stacked = torch.stack([self.recipe(pixels), self.recipe(pixels)]).to(torch.float32)
            return (stacked - self._mean) * self._inv_std

    def __repr__(self) -> str:
        return f"TwoCropViews(crop_size={self.crop_size}, scale={self.scale})"
