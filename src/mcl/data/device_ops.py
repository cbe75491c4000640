"""Batched colour and blur ops with per-sample factors, on float images holding uint8 values.

Every function takes ``x``: float (n, 3, H, W) with integer values in 0..255 (a uint8 image held in
float) and per-sample parameters of shape (n,), and returns the same layout. Each one reproduces
the uint8 kernel of ``torchvision.transforms.v2.functional`` (or ``mcl.data.views``) that the
per-image path runs, including its rounding: torchvision casts each op's float result back to
uint8, which truncates (``floor`` for these non-negative values); the blur rounds. So the device
path matches the per-image path op by op up to float32 rounding (at most 1 grey level, rarely).

- brightness: ``floor(clamp(f x, 0, 255))``
- contrast: ``floor(clamp(f x + (1 - f) m, 0, 255))``, m = mean over the crop of floor(luma(x))
- saturation: ``floor(clamp(f x + (1 - f) floor(luma(x)), 0, 255))``, per pixel
- hue: RGB -> HSV (x / 255), h <- (h + f) mod 1, HSV -> RGB, ``floor(rgb * (256 - 1e-3))``
- grayscale: ``floor(luma(x))`` on all 3 channels; luma = 0.2989 R + 0.587 G + 0.114 B (ITU-R 601-2)
- blur: separable Gaussian, g[t] ~ exp(-t^2 / (2 sigma^2)), t = -(K-1)/2..(K-1)/2, sum 1, reflect
  padding (replicate when the side is <= K // 2), then ``round`` and clamp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

LUMA = (0.2989, 0.587, 0.114)
# HSV -> RGB: which of (v, p, q, t) each of r, g, b takes for hue sector i = 0..5 (torchvision's table)
_SECTOR = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 1, 1, 1) for broadcasting over (n, 3, H, W)."""
    return f.to(torch.float32).view(-1, 1, 1, 1)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> (n, 1, H, W): 0.2989 R + 0.587 G + 0.114 B (not floored)."""
    r, g, b = x.unbind(dim=1)
    return (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = _per_sample(f)
    return (x * f + other * (1.0 - f)).clamp_(0.0, 255.0).floor_()


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(f)).clamp_(0.0, 255.0).floor_()


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = luma(x).floor_().mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, f)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, luma(x).floor_(), f)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    return luma(x).floor_().expand_as(x)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) RGB in [0, 1] -> (n, 3, H, W) HSV in [0, 1] (torchvision's formulas; grey: h = s = 0)."""
    r, g, _ = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    grey = maxc == minc
    span = maxc - minc
    ones = torch.ones_like(maxc)
    s = span / torch.where(grey, ones, maxc)
    rc, gc, bc = ((maxc.unsqueeze(1) - x) / torch.where(grey, ones, span).unsqueeze(1)).unbind(dim=1)
    max_r = maxc == r
    max_g = (maxc == g) & ~max_r
    h = torch.where(max_r, bc - gc, torch.where(max_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h * (1.0 / 6.0) + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) HSV in [0, 1] -> RGB in [0, 1]: sector i = floor(6h), f = 6h - i,
    p = v(1 - s), q = v(1 - s f), t = v(1 - s(1 - f)), each clamped to [0, 1]."""
    h, s, v = x.unbind(dim=1)
    h6 = h * 6.0
    i = torch.floor(h6)
    frac = h6 - i
    p = (v * (1.0 - s)).clamp_(0.0, 1.0)
    q = (v * (1.0 - s * frac)).clamp_(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - frac))).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=1)                                          # (n, 4, H, W)
    sector = i.to(torch.long).remainder_(6)                                         # (n, H, W)
    table = torch.tensor(_SECTOR, dtype=torch.long, device=x.device)               # (3, 6)
    pick = table[:, sector].movedim(0, 1)                                           # (n, 3, H, W)
    return vpqt.gather(1, pick)


def hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(x * (1.0 / 255.0))
    h = (hsv[:, 0] + f.to(torch.float32).view(-1, 1, 1)).remainder_(1.0)
    rgb = hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))
    return (rgb * (255.0 + 1.0 - 1e-3)).floor_()


COLOUR_OPS = (brightness, contrast, saturation, hue)   # ColorJitter's op ids 0..3


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(n,) sigmas -> (n, size) normalised 1-D Gaussian kernels."""
    t = torch.arange(size, dtype=torch.float32, device=sigma.device) - (size - 1) / 2
    g = torch.exp(-0.5 * (t.view(1, -1) / sigma.to(torch.float32).view(-1, 1)) ** 2)
    return g / g.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample separable blur: one depthwise conv over (1, 3n, H, W) with 3n row kernels, then
    3n column kernels (groups = 3n); reflect padding, round, clamp. Cost 2K multiply-adds a pixel."""
    n, c, h, w = x.shape
    if n == 0:
        return x
    half = size // 2
    g = gaussian_kernels(sigma, size).repeat_interleave(c, dim=0)                   # (3n, K)
    y = nnf.pad(x.reshape(1, n * c, h, w), (half, half, half, half),
                mode="reflect" if min(h, w) > half else "replicate")
    y = nnf.conv2d(y, g.view(n * c, 1, 1, size), groups=n * c)
    y = nnf.conv2d(y, g.view(n * c, 1, size, 1), groups=n * c)
    return y.view(n, c, h, w).round_().clamp_(0.0, 255.0)


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float = 128.0) -> torch.Tensor:
    """Where ``mask`` (n,) is set: values >= threshold -> 255 - value."""
    return torch.where(mask.view(-1, 1, 1, 1) & (x >= threshold), 255.0 - x, x)
