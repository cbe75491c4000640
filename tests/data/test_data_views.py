"""MCL multi-crop views: shapes, determinism, per-view blur / solarize behaviour."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from mcl.data.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropViews,
    RandomGaussianBlur,
    ViewParams,
    blur_kernel_size,
)

pytestmark = pytest.mark.usefixtures("one_thread")




MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) normalised -> 0..255 floats."""
    return (x * STD + MEAN) * 255.0


def _noise_image(w=64, h=48, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_shape_dtype_and_normalisation_range():
    views = MultiCropViews(crop_size=32)
    out = views(_noise_image())
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    pixels = _unnormalise(out)
    assert pixels.min() > -0.5 and pixels.max() < 255.5


def test_crops_per_view_and_defaults():
    assert MultiCropViews(crop_size=16, crops_per_view=2)(_noise_image()).shape == (4, 3, 16, 16)
    v = MultiCropViews()
    assert v.crop_size == 224 and v.scale == (0.2, 1.0)
    assert v.view1 == ViewParams(1.0, 0.0) and v.view2 == ViewParams(0.1, 0.2)
    assert blur_kernel_size(224) == 23 and blur_kernel_size(16) == 3 and blur_kernel_size(64) == 7


def test_deterministic_under_torch_seed_and_crops_differ():
    views, image = MultiCropViews(crop_size=24), _noise_image()
    torch.manual_seed(3)
    a = views(image)
    torch.manual_seed(3)
    b = views(image)
    assert torch.equal(a, b)
    c = views(image)
    assert not torch.equal(a, c)
    assert all(not torch.equal(a[i], a[j]) for i in range(8) for j in range(i + 1, 8))


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (20, 3)])
def test_image_smaller_than_crop_is_upsampled(size):
    torch.manual_seed(0)
    out = MultiCropViews(crop_size=32)(_noise_image(*size))
    assert out.shape == (8, 3, 32, 32) and torch.isfinite(out).all()


def test_accepts_non_rgb_pil_and_uint8_tensor():
    views = MultiCropViews(crop_size=16)
    assert views(_noise_image().convert("L")).shape == (8, 3, 16, 16)
    assert views(torch.zeros(3, 20, 20, dtype=torch.uint8)).shape == (8, 3, 16, 16)
    with pytest.raises(TypeError):
        views(np.zeros((20, 20, 3), np.uint8))


def test_view2_solarizes_about_one_in_five():
    # White constant image: jitter keeps it >= 153 (brightness >= 0.6; contrast/sat/hue/gray/blur do
    # nothing on a constant grey), so a crop is dark (< 128) exactly when it was solarized.
    white = Image.new("RGB", (24, 24), (255, 255, 255))
    views = MultiCropViews(crop_size=8, crops_per_view=4)
    torch.manual_seed(1234)
    means = torch.stack([_unnormalise(views(white)).mean(dim=(1, 2, 3)) for _ in range(100)])  # (100, 8)
    view1_dark = (means[:, :4] < 128).float().mean().item()
    view2_dark = (means[:, 4:] < 128).float().mean().item()
    assert view1_dark == 0.0
    assert 0.12 < view2_dark < 0.28  # 400 Bernoulli(0.2) draws: sd 0.02


def _hf_ratio(x: torch.Tensor) -> torch.Tensor:
    """Per crop: mean |4-neighbour Laplacian| / std, a contrast-invariant high-frequency measure."""
    g = x.mean(dim=1)  # (N, S, S)
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    return lap.abs().mean(dim=(1, 2)) / g[:, 1:-1, 1:-1].std(dim=(1, 2))


def test_view1_is_always_blurred():
    # Two flat halves (40 / 150) plus a 1-pixel checkerboard of amplitude 10: blur with sigma >= ~0.4
    # removes most of the checkerboard but keeps the halves, so the ratio drops far below its unblurred value.
    s = 48
    y, x = np.mgrid[0:s, 0:s]
    a = np.where(x < s // 2, 50, 150) + np.where((x + y) % 2 == 0, 10, -10)
    image = Image.fromarray(np.repeat(a[..., None], 3, axis=2).astype(np.uint8), "RGB")
    sharp = ViewParams(blur_p=0.0, solarize_p=0.0)
    kw = dict(crop_size=s, scale=(1.0, 1.0), crops_per_view=32)  # whole image, no resampling
    torch.manual_seed(0)
    unblurred = _hf_ratio(MultiCropViews(view1=sharp, view2=sharp, **kw)(image)[:32])
    torch.manual_seed(0)
    blurred = _hf_ratio(MultiCropViews(view2=sharp, **kw)(image)[:32])
    floor = unblurred.min().item()
    assert floor > 1.0
    # sigma ~ U[0.1, 2]: ~85% of crops have sigma > 0.4; require well over half clearly smoothed
    assert (blurred < 0.5 * floor).float().mean().item() > 0.6
    assert blurred.median() < 0.2 * unblurred.median()


def test_separable_blur_matches_torchvision():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
    blur = RandomGaussianBlur(7, sigma=(1.3, 1.3), p=1.0)
    diff = (blur(x).int() - F.gaussian_blur(x, [7, 7], [1.3, 1.3]).int()).abs()
    assert diff.max() <= 1
    assert torch.equal(RandomGaussianBlur(7, p=0.0)(x), x)
    tiny = torch.randint(0, 256, (3, 2, 2), dtype=torch.uint8)  # smaller than the padding
    assert RandomGaussianBlur(7, p=1.0)(tiny).shape == (3, 2, 2)
