"""Augmentation on the training device (``data.augment_on=device``): the loader decodes each image and
fits it into a fixed canvas once; the 2k crops and their flip / colour / blur / solarize steps run
batched as tensor ops on the device, with the distributions of the per-image path (mcl.data.views).

Loader, per image (:class:`CanvasImage`): the decoded image, shrunk if needed (aspect kept,
antialiased bilinear) so that its longest side is at most C (default 2 S), at the top-left of a
uint8 (3, C, C) canvas; its valid size (h, w) travels beside it. The column and the row just past
the valid region repeat its last column and row (bilinear samples at the border then read the edge
pixel, as a clamped resize does); the rest is 0 and never read.

Loader, per batch (:class:`CanvasCollate` -> :meth:`DeviceMultiCropViews.sample`): every random
parameter of the B x 2k crops, drawn on the CPU from torch's RNG like the per-image path's (so
seeding reproduces both the same way), a few numbers per crop:
- box, RandomResizedCrop's rule in the valid (h, w): up to 10 tries of area fraction a ~ U[scale]
  and aspect ratio r = exp(U[log 3/4, log 4/3]), box w = round(sqrt(A a r)), h = round(sqrt(A a / r)),
  kept if it fits, top/left uniform integers; after 10 misses the central crop of clamped aspect;
- flip p 0.5; ColorJitter p 0.8: brightness, contrast ~ U[0.6, 1.4], saturation ~ U[0.8, 1.2],
  hue ~ U[-0.1, 0.1], in a uniformly random order per crop (torchvision: torch.randperm(4));
  grayscale p 0.2; blur p (view 1: 1.0, view 2: 0.1), sigma ~ U[0.1, 2]; solarize p (0 / 0.2).

Device, per batch (:meth:`DeviceMultiCropViews.apply`): uint8 (B, 3, C, C) -> float32
(B, 2k, 3, S, S), ImageNet-normalised, with no loop over images and no device-to-host sync (the
parameters travel with the batch; the sizes of the index groups are known on the host):
``torchvision.ops.roi_align`` cuts and resizes every box (aligned=True: half-pixel centres; adaptive
sampling), round; flip by mask; jitter in 4 passes (pass t: for each op, the crops whose t-th op it
is are gathered, transformed with their own factors, scattered back); grayscale by mask; blur on
the gathered blurred crops (one grouped conv with per-crop kernels); solarize by mask; normalise.
The op formulas and their uint8 rounding: mcl.data.device_ops.

Differences from the per-image path:
- resolution: crops are cut from the canvas, so an image larger than C x C is shrunk first (at 224
  with C = 448 a 500 x 375 photo becomes 448 x 336); the box's whole-pixel rounding is on that grid;
- interpolation: roi_align averages n x n bilinear samples per output pixel, n = ceil(box / S) (a
  box filter over the output pixel's footprint); torchvision's antialiased resize weighs source
  pixels with a triangle two output pixels wide. Equal (plain bilinear) when the box is not larger
  than S; when shrinking, the device crop is a little sharper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as F

from mcl.data import device_ops as ops
from mcl.data.views import IMAGENET_MEAN, IMAGENET_STD, ViewParams, _as_uint8_rgb, blur_kernel_size

RATIO = (3 / 4, 4 / 3)
# Default view recipes (as MultiCropViews'); ViewParams is frozen, so sharing one instance is safe.
_VIEW1_DEFAULT = ViewParams(blur_p=1.0, solarize_p=0.0)
_VIEW2_DEFAULT = ViewParams(blur_p=0.1, solarize_p=0.2)


@dataclass(frozen=True)
class Jitter:
    """ColorJitter(brightness, contrast, saturation, hue) applied with probability p."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    p: float = 0.8

    def ranges(self) -> list[tuple[float, float]]:
        """Factor range of ops 0..3: [max(0, 1 - v), 1 + v] for the first three, [-hue, hue]."""
        return [(max(0.0, 1 - v), 1 + v) for v in (self.brightness, self.contrast, self.saturation)] + [
            (-self.hue, self.hue)]

    def active(self) -> list[bool]:
        """torchvision skips an op whose strength is 0."""
        return [v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue)]


def canvas_side(crop_size: int, canvas: int | None = None) -> int:
    """C: ``canvas`` if given, else 2 x crop size."""
    return int(canvas) if canvas else 2 * int(crop_size)


class CanvasImage:
    """PIL image (or uint8 (3, H, W)) -> (uint8 (3, C, C) canvas, LongTensor [h, w] of its valid region)."""

    def __init__(self, side: int):
        if side < 1:
            raise ValueError(f"canvas side must be >= 1, got {side}")
        self.side = int(side)

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.side
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                image = image.convert("RGB")
            if max(image.size) > c:
                image = image.resize(_fit(image.size, c), Image.Resampling.BILINEAR)
            pixels = F.pil_to_tensor(image)
        else:
            pixels = _as_uint8_rgb(image)
            if max(pixels.shape[1:]) > c:
                w, h = _fit((pixels.shape[2], pixels.shape[1]), c)
                pixels = F.resize(pixels, [h, w], antialias=True)
        h, w = pixels.shape[1:]
        canvas = torch.zeros(3, c, c, dtype=torch.uint8)
        canvas[:, :h, :w] = pixels
        if w < c:
            canvas[:, :h, w] = pixels[:, :, w - 1]
        if h < c:
            canvas[:, h, :min(w + 1, c)] = canvas[:, h - 1, :min(w + 1, c)]
        return canvas, torch.tensor([h, w], dtype=torch.long)

    def __repr__(self) -> str:
        return f"CanvasImage(side={self.side})"


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(w, h) scaled so that the longest side is ``side``; each at least 1."""
    w, h = size
    s = side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def sample_boxes(h: torch.Tensor, w: torch.Tensor, scale: tuple[float, float], ratio=RATIO, attempts: int = 10,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomResizedCrop's box rule for n images at once: (n,) heights and widths -> (n, 4) float64
    (x1, y1, x2, y2) in whole pixels (see the module docstring)."""
    h, w = h.to(torch.float64), w.to(torch.float64)
    n = h.numel()
    area = (h * w).unsqueeze(1)
    target = area * torch.empty(n, attempts, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    r = torch.exp(torch.empty(n, attempts, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                           generator=generator))
    bw, bh = torch.round(torch.sqrt(target * r)), torch.round(torch.sqrt(target / r))
    fits = (bw > 0) & (bw <= w.unsqueeze(1)) & (bh > 0) & (bh <= h.unsqueeze(1))
    first = fits.to(torch.int64).argmax(dim=1, keepdim=True)          # the first try that fits
    bw, bh = bw.gather(1, first).squeeze(1), bh.gather(1, first).squeeze(1)
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top, left = torch.floor(u[:, 0] * (h - bh + 1)), torch.floor(u[:, 1] * (w - bw + 1))
    aspect = w / h                                                       # fallback: central crop
    fw = torch.where(aspect > ratio[1], torch.round(h * ratio[1]), w)
    fh = torch.where(aspect < ratio[0], torch.round(w / ratio[0]), h)
    found = fits.any(dim=1)
    bw, bh = torch.where(found, bw, fw), torch.where(found, bh, fh)
    top = torch.where(found, top, torch.floor((h - fh) / 2))
    left = torch.where(found, left, torch.floor((w - fw) / 2))
    return torch.stack((left, top, left + bw, top + bh), dim=1)


class DeviceMultiCropViews:
    """uint8 canvases (B, 3, C, C) + valid sizes (B, 2) -> float32 (B, 2k, 3, S, S), ImageNet-normalised.

    Crops 0..k-1 of each image follow view 1's recipe, k..2k-1 view 2's (as MultiCropViews).
    ``sample`` (CPU) draws the parameters, ``apply`` (any device) makes the crops; calling the
    object does both. ``flip_p``, ``gray_p``, ``jitter`` and ``random_order`` exist for tests.
    """

    def __init__(self, crop_size: int = 224, scale: tuple[float, float] = (0.2, 1.0), crops_per_view: int = 4,
                 view1: ViewParams = _VIEW1_DEFAULT,
                 view2: ViewParams = _VIEW2_DEFAULT,
                 jitter: Jitter = Jitter(), flip_p: float = 0.5, gray_p: float = 0.2, random_order: bool = True,
                 sigma: tuple[float, float] = (0.1, 2.0)):
        if crop_size < 1 or crops_per_view < 1:
            raise ValueError(f"crop_size and crops_per_view must be >= 1, got {crop_size}, {crops_per_view}")
        self.crop_size, self.scale, self.crops_per_view = int(crop_size), tuple(scale), int(crops_per_view)
        self.view1, self.view2, self.jitter = view1, view2, jitter
        self.flip_p, self.gray_p, self.random_order, self.sigma = flip_p, gray_p, random_order, tuple(sigma)
        self.kernel_size = blur_kernel_size(self.crop_size)
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    # ----- parameters (CPU) -------------------------------------------------------------------------
    def sample(self, size: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """(B, 2) valid sizes [h, w] -> the parameters of the B x 2k crops (CPU tensors, crop n = b 2k + slot):
        boxes (N, 5) [b, x1, y1, x2, y2]; flip, gray, solarize (N,) bool; factors (N, 4) of ops brightness,
        contrast, saturation, hue; jitter_groups: 16 index tensors, pass t, op o -> the jittered crops
        whose t-th op is o; blur_index (M,), blur_sigma (M,)."""
        size = size.to("cpu", torch.float64)
        k2 = 2 * self.crops_per_view
        n = size.shape[0] * k2
        hw = size.repeat_interleave(k2, dim=0)
        in_view2 = (torch.arange(k2) >= self.crops_per_view).repeat(size.shape[0])

        def coin(p) -> torch.Tensor:
            return torch.rand(n, generator=generator) < p

        boxes = sample_boxes(hw[:, 0], hw[:, 1], self.scale, generator=generator)
        batch_index = torch.arange(size.shape[0], dtype=torch.float64).repeat_interleave(k2).unsqueeze(1)
        flip = coin(self.flip_p)
        jittered = coin(self.jitter.p)
        lo, hi = (torch.tensor(v, dtype=torch.float32) for v in zip(*self.jitter.ranges()))
        factors = lo + (hi - lo) * torch.rand(n, 4, generator=generator)
        if self.random_order:
            order = torch.rand(n, 4, generator=generator).argsort(dim=1)
        else:
            order = torch.arange(4).expand(n, 4)
        active = self.jitter.active()
        empty = torch.zeros(0, dtype=torch.long)
        groups = [torch.nonzero(jittered & (order[:, t] == op)).flatten() if active[op] else empty
                  for t in range(4) for op in range(4)]
        gray = coin(self.gray_p)
        blur = coin(torch.where(in_view2, self.view2.blur_p, self.view1.blur_p))
        sigma = torch.empty(n, dtype=torch.float32).uniform_(*self.sigma, generator=generator)
        solarize = coin(torch.where(in_view2, self.view2.solarize_p, self.view1.solarize_p))
        blur_index = torch.nonzero(blur).flatten()
        return {"boxes": torch.cat((batch_index, boxes), dim=1).to(torch.float32), "flip": flip,
                "factors": factors, "jitter_groups": groups, "gray": gray, "blur_index": blur_index,
                "blur_sigma": sigma[blur_index], "solarize": solarize}

    # ----- pixels (any device) ----------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, canvas: torch.Tensor, params: dict) -> torch.Tensor:
        """uint8 (B, 3, C, C) canvases + ``sample``'s parameters -> float32 (B, 2k, 3, S, S)."""
        if canvas.dtype != torch.uint8 or canvas.ndim != 4 or canvas.shape[1] != 3:
            raise TypeError(f"expected uint8 canvases (B, 3, C, C), got {canvas.dtype} {tuple(canvas.shape)}")
        device, s, k2 = canvas.device, self.crop_size, 2 * self.crops_per_view
        p = to_device(params, device)
        with torch.autocast(device.type, enabled=False):    # fp16 autocast would blur in half precision
            x = roi_align(canvas.to(torch.float32), p["boxes"], output_size=(s, s), spatial_scale=1.0,
                          sampling_ratio=0, aligned=True).round_().clamp_(0.0, 255.0)
            x = torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
            for t in range(4):
                for op in range(4):
                    idx = p["jitter_groups"][4 * t + op]
                    if idx.numel():
                        f = p["factors"].index_select(0, idx)[:, op]
                        x.index_copy_(0, idx, ops.COLOUR_OPS[op](x.index_select(0, idx), f))
            x = torch.where(p["gray"].view(-1, 1, 1, 1), ops.grayscale(x), x)
            idx = p["blur_index"]
            if idx.numel():
                x.index_copy_(0, idx, ops.gaussian_blur(x.index_select(0, idx), p["blur_sigma"], self.kernel_size))
            x = ops.solarize(x, p["solarize"])
            x = (x - self._mean.to(device)) * self._inv_std.to(device)
        return x.view(canvas.shape[0], k2, 3, s, s)

    def __call__(self, canvas: torch.Tensor, size: torch.Tensor, generator: torch.Generator | None = None):
        return self.apply(canvas, self.sample(size.cpu(), generator))

    def __repr__(self) -> str:
        return (f"DeviceMultiCropViews(crop_size={self.crop_size}, scale={self.scale}, "
                f"crops_per_view={self.crops_per_view}, view1={self.view1}, view2={self.view2}, jitter={self.jitter})")


def to_device(value, device: torch.device):
    """Tensors in (nested) dicts / lists -> ``device`` (non-blocking; a no-op where they already are)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


class CanvasCollate:
    """Batch ``CanvasImage`` items: canvas (B, 3, C, C) uint8, size (B, 2), params (``views.sample``),
    index (B,), skipped (flat list). Runs in the loader worker, so the parameters come from its RNG."""

    def __init__(self, views: DeviceMultiCropViews):
        self.views = views

    def __call__(self, samples: list[dict]) -> dict:
        size = torch.stack([s["crops"][1] for s in samples])
        return {"canvas": torch.stack([s["crops"][0] for s in samples]), "size": size,
                "params": self.views.sample(size),
                "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
                "skipped": [p for s in samples for p in s["skipped"]]}


def crops_of(batch: dict, views: DeviceMultiCropViews | None) -> torch.Tensor:
    """The batch's (B, 2k, 3, S, S) crops: made here from its canvases when it has no ``crops``."""
    if "crops" in batch:
        return batch["crops"]
    if views is None:
        raise ValueError("this batch holds canvases (data.augment_on=device) but no device views were given")
    return views.apply(batch["canvas"], batch["params"])
