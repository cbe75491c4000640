"""MCL views (docs/method.md, "Views"): 2 x k independently augmented crops of one image.

Per crop, in uint8 until the final normalise:
RandomResizedCrop(S, scale) -> hflip p=0.5 -> ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8 ->
grayscale p=0.2 -> GaussianBlur(sigma ~ U[0.1, 2.0], kernel ~ 0.1 S odd >= 3) p=blur_p ->
solarize(x >= 128 -> 255 - x) p=solarize_p; then all crops are stacked and normalised at once:
x = (x / 255 - mean) / std. Crops 0..k-1 follow view 1's recipe, k..2k-1 view 2's.
All randomness comes from torch's global RNG (seed torch to reproduce; Lightning seeds workers).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewParams:
    """Per-view probabilities of the asymmetric steps (BYOL recipe)."""

    blur_p: float
    solarize_p: float


def blur_kernel_size(crop_size: int) -> int:
    """Odd Gaussian kernel side ~ 10% of the crop (224 -> 23), at least 3."""
    k = max(3, round(0.1 * crop_size))
    return k if k % 2 == 1 else k + 1


class RandomGaussianBlur:
    """With probability p: separable Gaussian blur, sigma ~ U[sigma_lo, sigma_hi], reflect padding.

    uint8 (3, H, W) -> uint8 (3, H, W). Kernel g[t] ~ exp(-t^2 / (2 sigma^2)), t = -(k-1)/2..(k-1)/2,
    normalised to sum 1 (torchvision's kernel), applied as a row pass then a column pass, which
    equals the k x k 2-D blur at 2k instead of k^2 multiply-adds per pixel.
    """

    def __init__(self, kernel_size: int, sigma: tuple[float, float] = (0.1, 2.0), p: float = 1.0):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size, self.sigma, self.p = kernel_size, tuple(sigma), p
        self._t = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or torch.rand(1).item() >= self.p:
            return image
        sigma = torch.empty(1).uniform_(*self.sigma).item()
        g = torch.exp(-0.5 * (self._t / sigma) ** 2)
        g = g / g.sum()
        c, h, w = image.shape
        half = self.kernel_size // 2
        x = image.to(torch.float32).unsqueeze(0)
        x = torch.nn.functional.pad(x, (half, half, half, half), mode="reflect" if min(h, w) > half else "replicate")
        x = torch.nn.functional.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        x = torch.nn.functional.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return x.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma}, p={self.p})"


def crop_recipe(crop_size: int, scale: tuple[float, float], params: ViewParams) -> v2.Compose:
    """uint8 (3, H, W) -> uint8 (3, S, S): one crop of one view, before normalisation."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(crop_size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            RandomGaussianBlur(blur_kernel_size(crop_size), sigma=(0.1, 2.0), p=params.blur_p),
            v2.RandomSolarize(threshold=128, p=params.solarize_p),
        ]
    )


class MultiCropViews:
    """PIL image (or uint8 (3, H, W) tensor) -> float32 (2k, 3, S, S), ImageNet-normalised."""

    def __init__(
        self,
        crop_size: int = 224,
        scale: tuple[float, float] = (0.2, 1.0),
        crops_per_view: int = 4,
        view1: ViewParams = ViewParams(blur_p=1.0, solarize_p=0.0),
        view2: ViewParams = ViewParams(blur_p=0.1, solarize_p=0.2),
    ):
        if crop_size < 1 or crops_per_view < 1:
            raise ValueError(f"crop_size and crops_per_view must be >= 1, got {crop_size}, {crops_per_view}")
        self.crop_size = crop_size
        self.scale = tuple(scale)
        self.crops_per_view = crops_per_view
        self.view1, self.view2 = view1, view2
        self.recipes = (crop_recipe(crop_size, self.scale, view1), crop_recipe(crop_size, self.scale, view2))
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def __call__(self, image) -> torch.Tensor:
        with single_thread():
            pixels = _as_uint8_rgb(image)
            crops = [recipe(pixels) for recipe in self.recipes for _ in range(self.crops_per_view)]
            stacked = torch.stack(crops).to(torch.float32)
            return (stacked - self._mean) * self._inv_std

    def __repr__(self) -> str:
        return (
            f"MultiCropViews(crop_size={self.crop_size}, scale={self.scale}, crops_per_view={self.crops_per_view}, "
            f"view1={self.view1}, view2={self.view2})"
        )


@contextmanager
def single_thread():
    """Run small per-image tensor ops on one thread: intra-op threads cost 10-70x on such tiny work.

    Loader workers already run single-threaded; this matters when the views run in the training
    process (``num_workers=0``). Setting the thread count costs well under a microsecond.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_uint8_rgb(image) -> torch.Tensor:
    """PIL (any mode) or uint8 (3, H, W) tensor -> contiguous uint8 (3, H, W)."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return F.pil_to_tensor(image)
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
        return image
    raise TypeError(f"MultiCropViews expects a PIL image or a uint8 (3, H, W) tensor, got {type(image).__name__}")
