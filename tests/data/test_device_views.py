"""Augmentation on the device (mcl.data.device_views): op-by-op exactness against torchvision's uint8
kernels, and a statistical comparison with the per-image path (MultiCropViews) on the same images.

The statistical checks compare, per component, what the two paths produce from the same image:
two-sample Kolmogorov-Smirnov statistics against the critical value at alpha = 0.001 and two-
proportion z-scores below 4. Seeds are fixed, so the outcome is deterministic; each check is also
run on a device pipeline with one setting wrong (the ``WRONG`` table) and must then fail.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mcl.data import device_ops as ops
from mcl.data.device_views import (
    CanvasCollate,
    CanvasImage,
    DeviceMultiCropViews,
    Jitter,
    canvas_side,
    crops_of,
    sample_boxes,
)
from mcl.data.views import IMAGENET_MEAN, IMAGENET_STD, MultiCropViews, RandomGaussianBlur, ViewParams

pytestmark = pytest.mark.usefixtures("one_thread")



MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
OFF = ViewParams(blur_p=0.0, solarize_p=0.0)
S = 32                       # crop side of the statistical tests
IMAGES = 500                 # images per path: 500 x 8 = 4000 crops


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, S, S) normalised -> (N, 3, S, S) in 0..255 (rounded: both paths hold uint8 values)."""
    return (x.reshape(-1, 3, *x.shape[-2:]) * STD + MEAN).round()


def ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample KS statistic sup |F_a - F_b| (empirical CDFs, ties handled)."""
    a, b = a.double().flatten().sort().values, b.double().flatten().sort().values
    v = torch.cat((a, b))
    fa = torch.searchsorted(a, v, right=True) / a.numel()
    fb = torch.searchsorted(b, v, right=True) / b.numel()
    return (fa - fb).abs().max().item()


def ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    """Asymptotic critical value: sqrt(-ln(alpha / 2) / 2) sqrt((n + m) / (n m)); 0.0436 at n = m = 4000."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def z_two(a: torch.Tensor, b: torch.Tensor) -> float:
    """|p_a - p_b| / pooled standard error, for boolean samples."""
    pa, pb = a.float().mean().item(), b.float().mean().item()
    p = (a.float().sum() + b.float().sum()).item() / (a.numel() + b.numel())
    se = math.sqrt(max(p * (1 - p), 1e-12) * (1 / a.numel() + 1 / b.numel()))
    return abs(pa - pb) / se


# ------------------------------------------------------------------------------------------------ images

def constant(colour, size=(48, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


def ramp(size=(48, 40)) -> Image.Image:
    """Grey, 20 at the left edge to 120 at the right (values < 128: never solarized)."""
    w, h = size
    row = np.linspace(20, 120, w).round().astype(np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (h, 1))[..., None], 3, axis=2), "RGB")


def checker(side=S) -> Image.Image:
    """Two flat halves (50 / 150) plus a 1-pixel checkerboard of amplitude 10 (as test_data_views)."""
    y, x = np.mgrid[0:side, 0:side]
    a = np.where(x < side // 2, 50, 150) + np.where((x + y) % 2 == 0, 10, -10)
    return Image.fromarray(np.repeat(a[..., None], 3, axis=2).astype(np.uint8), "RGB")


def smooth(size=(48, 40), seed=0) -> torch.Tensor:
    """uint8 (3, H, W): bilinear upsampling of a 6 x 5 random image (no aliasing surprises)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (3, 6, 5), dtype=torch.uint8, generator=g)
    return F.resize(small, [size[1], size[0]], antialias=True)


# ------------------------------------------------------------------------------------------------ the two paths

def per_image(image, seed=0, images=IMAGES, **kw) -> torch.Tensor:
    views = MultiCropViews(crop_size=kw.pop("crop_size", S), **kw)
    torch.manual_seed(seed)
    return unnormalise(torch.stack([views(image) for _ in range(images)]))


def on_device(image, seed=1, images=IMAGES, **kw) -> torch.Tensor:
    crop = kw.pop("crop_size", S)
    views = DeviceMultiCropViews(crop_size=crop, **kw)
    canvas, size = CanvasImage(canvas_side(crop))(image)
    out = views(canvas.expand(images, -1, -1, -1).contiguous(), size.expand(images, 2),
                generator=torch.Generator().manual_seed(seed))
    return unnormalise(out)


def view_slots(x: torch.Tensor, view: int, k: int = 4) -> torch.Tensor:
    """Crops of view 1 (0) or view 2 (1) out of (images * 2k, ...) crops."""
    return x.view(-1, 2 * k, *x.shape[1:])[:, view * k:(view + 1) * k].reshape(-1, *x.shape[1:])


# per-component statistics of crops (N, 3, S, S) in 0..255

def colour_stats(x):
    """Per crop: mean R, G, B, value max(RGB), saturation (max - min) / max."""
    m = x.mean(dim=(2, 3))
    mx, mn = m.amax(dim=1), m.amin(dim=1)
    return {"R": m[:, 0], "G": m[:, 1], "B": m[:, 2], "value": mx, "saturation": (mx - mn) / mx.clamp(min=1)}


def is_gray(x):
    return (x[:, 0] == x[:, 1]).all(dim=(1, 2)) & (x[:, 1] == x[:, 2]).all(dim=(1, 2))


def is_flipped(x):
    """On the ramp: the left half brighter than the right half."""
    s = x.shape[-1]
    return x[..., : s // 2].mean(dim=(1, 2, 3)) > x[..., s // 2:].mean(dim=(1, 2, 3))


def hf_ratio(x):
    """mean |4-neighbour Laplacian| / std of the grey crop: high for sharp, low for blurred crops."""
    g = x.mean(dim=1)
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    return lap.abs().mean(dim=(1, 2)) / g[:, 1:-1, 1:-1].std(dim=(1, 2)).clamp(min=1e-6)


# ------------------------------------------------------------------------------------------------ checks
# each: (reference crops, device crops) -> list of (name, value, limit); it passes when every value <= limit


def check_gray(ref, dev):
    """Constant colour: a crop is grey (R = G = B) only through RandomGrayscale (saturation >= 0.8)."""
    crit = ks_critical(len(ref), len(dev))
    a, b = colour_stats(ref), colour_stats(dev)
    out = [(f"KS {k}", ks(a[k], b[k]), crit) for k in a]
    out.append(("z gray rate", z_two(is_gray(ref), is_gray(dev)), 4.0))
    out.append(("gray rate vs 0.2", abs(is_gray(dev).float().mean().item() - 0.2), 0.035))
    return out


def check_solarize(ref, dev):
    """White image: jitter keeps it >= 153, so a crop is dark exactly when it was solarized."""
    dark_ref, dark_dev = ref.mean(dim=(1, 2, 3)) < 128, dev.mean(dim=(1, 2, 3)) < 128
    return [("view 1 solarized", view_slots(dark_dev, 0).float().mean().item(), 0.0),
            ("z view 2 solarize rate", z_two(view_slots(dark_ref, 1), view_slots(dark_dev, 1)), 4.0),
            ("view 2 rate vs 0.2", abs(view_slots(dark_dev, 1).float().mean().item() - 0.2), 0.035)]


def check_flip(ref, dev):
    a, b = is_flipped(view_slots(ref, 0)), is_flipped(view_slots(dev, 0))
    return [("z flip rate", z_two(a, b), 4.0), ("flip rate vs 0.5", abs(b.float().mean().item() - 0.5), 0.04)]


def check_blur(ref, dev):
    """Checkerboard, whole-image crops: the high-frequency ratio's distribution per view, and the
    fraction of clearly smoothed crops (ratio < half the median of view 2, which is 90% unblurred)."""
    out = []
    floor = hf_ratio(view_slots(ref, 1)).median().item()
    for view in (0, 1):
        a, b = hf_ratio(view_slots(ref, view)), hf_ratio(view_slots(dev, view))
        out.append((f"KS hf ratio view {view + 1}", ks(a, b), ks_critical(len(a), len(b))))
        out.append((f"z blurred view {view + 1}", z_two(a < 0.5 * floor, b < 0.5 * floor), 4.0))
    return out


LUMA = torch.tensor([0.2989, 0.587, 0.114])


def jitter_stats(x):
    """Two-colour 4 x 4 crops (top A, bottom B): mean RGB of each half, their lumas, the luma
    difference (scaled by brightness x contrast), chroma / luma difference (by saturation), hues."""
    out = {}
    halves = {"A": x[:, :, :2].mean(dim=(2, 3)), "B": x[:, :, 2:].mean(dim=(2, 3))}
    lum = {k: v @ LUMA for k, v in halves.items()}
    d = lum["A"] - lum["B"]
    for k, v in halves.items():
        out.update({f"{k} R": v[:, 0], f"{k} G": v[:, 1], f"{k} B": v[:, 2], f"{k} luma": lum[k]})
        out[f"{k} chroma / luma diff"] = (v - lum[k][:, None]).norm(dim=1) / d.abs().clamp(min=1)
        out[f"{k} hue"] = torch.atan2(math.sqrt(3) * (v[:, 1] - v[:, 2]), 2 * v[:, 0] - v[:, 1] - v[:, 2])
    out["luma diff"] = d
    return out


def check_jitter(ref, dev):
    crit = ks_critical(len(ref), len(dev))
    a, b = jitter_stats(ref), jitter_stats(dev)
    return [(f"KS {k}", ks(a[k], b[k]), crit) for k in a]


def two_colour(a=(250, 120, 40), b=(20, 40, 120), side=4) -> torch.Tensor:
    """uint8 (3, side, side): top half colour a (bright, near the clamp), bottom half b."""
    x = torch.empty(3, side, side, dtype=torch.uint8)
    x[:, : side // 2], x[:, side // 2:] = torch.tensor(a).view(3, 1, 1), torch.tensor(b).view(3, 1, 1)
    return x


JITTER_CROPS = 10_000


def jitter_reference() -> torch.Tensor:
    """The per-image path's own jitter step (crop_recipe's RandomApply(ColorJitter)) on the two-colour image."""
    from mcl.data.views import crop_recipe

    jitter = crop_recipe(4, (1.0, 1.0), OFF).transforms[2]
    image = two_colour()
    torch.manual_seed(0)
    return torch.stack([jitter(image) for _ in range(JITTER_CROPS)]).float()


def jitter_on_device(**kw) -> torch.Tensor:
    """The device pipeline with every step but the jitter off (whole-image 4 x 4 crops: no resampling)."""
    opts = dict(crop_size=4, scale=(1.0, 1.0), crops_per_view=1, view1=OFF, view2=OFF, flip_p=0.0, gray_p=0.0)
    views = DeviceMultiCropViews(**{**opts, **kw})
    canvas, size = CanvasImage(8)(two_colour())
    n = JITTER_CROPS // 2
    return unnormalise(views(canvas.expand(n, -1, -1, -1).contiguous(), size.expand(n, 2),
                             generator=torch.Generator().manual_seed(1)))


CASES = {   # name -> (image, options of both paths, check, images per path)
    "grayscale": (lambda: constant((250, 60, 20)), {}, check_gray, 250),
    "solarize": (lambda: constant((255, 255, 255)), {}, check_solarize, 250),
    "flip": (ramp, {}, check_flip, 250),
    "blur": (checker, dict(scale=(1.0, 1.0)), check_blur, 400),    # whole 32 x 32 image: no resampling
}
WRONG = {   # a device pipeline with one setting off, and the case that must catch it
    "brightness 0.3": ("jitter", dict(jitter=Jitter(brightness=0.3))),
    "contrast 0.3": ("jitter", dict(jitter=Jitter(contrast=0.3))),
    "saturation 0.1": ("jitter", dict(jitter=Jitter(saturation=0.1))),
    "hue 0.05": ("jitter", dict(jitter=Jitter(hue=0.05))),
    "jitter p 0.7": ("jitter", dict(jitter=Jitter(p=0.7))),
    "fixed jitter order": ("jitter", dict(random_order=False)),
    "grayscale p 0.15": ("grayscale", dict(gray_p=0.15)),
    "solarize p 0.12": ("solarize", dict(view2=ViewParams(blur_p=0.1, solarize_p=0.12))),
    "flip p 0.4": ("flip", dict(flip_p=0.4)),
    "sigma U[0.1, 1]": ("blur", dict(sigma=(0.1, 1.0))),
    "view 2 blur p 0.25": ("blur", dict(view2=ViewParams(blur_p=0.25, solarize_p=0.2))),
}


@pytest.fixture(scope="module")
def reference():
    """The per-image path's crops of every case, computed once (about 15 s on one core)."""
    out = {name: per_image(make(), images=n, **kw) for name, (make, kw, _, n) in CASES.items()}
    out["jitter"] = jitter_reference()
    return out


def run_case(name, reference, **wrong):
    if name == "jitter":
        return check_jitter(reference[name], jitter_on_device(**wrong))
    make, kw, check, n = CASES[name]
    return check(reference[name], on_device(make(), images=n, **kw, **wrong))


def failures(results):
    return [(name, round(value, 4), round(limit, 4)) for name, value, limit in results if value > limit]


@pytest.mark.parametrize("name", ["jitter", *CASES])
def test_device_path_matches_the_per_image_distributions(name, reference):
    assert not failures(run_case(name, reference))


@pytest.mark.parametrize("wrong", list(WRONG))
def test_each_check_catches_a_wrong_setting(wrong, reference):
    name, setting = WRONG[wrong]
    assert failures(run_case(name, reference, **setting)), f"{wrong} went unnoticed by the {name} checks"


# ------------------------------------------------------------------------------------------------ crop boxes

def torchvision_boxes(h: int, w: int, n: int, scale=(0.2, 1.0)) -> torch.Tensor:
    """n boxes (x1, y1, x2, y2) drawn by the per-image path's own RandomResizedCrop."""
    rrc = v2.RandomResizedCrop(S, scale=scale, antialias=True)
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    torch.manual_seed(0)
    boxes = []
    for _ in range(n):
        p = rrc.make_params([image])
        boxes.append((p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]))
    return torch.tensor(boxes, dtype=torch.float64)


def box_stats(boxes, h, w):
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return {"area fraction": bw * bh / (h * w), "log aspect": (bw / bh).log(),
            "centre x": (boxes[:, 0] + boxes[:, 2]) / (2 * w), "centre y": (boxes[:, 1] + boxes[:, 3]) / (2 * h)}


def box_failures(h, w, n=3000, scale=(0.2, 1.0)):
    ref = box_stats(torchvision_boxes(h, w, n), h, w)
    g = torch.Generator().manual_seed(1)
    dev = box_stats(sample_boxes(torch.full((n,), h), torch.full((n,), w), scale, generator=g), h, w)
    crit = ks_critical(n, n)
    return [(k, round(ks(ref[k], dev[k]), 4), round(crit, 4)) for k in ref if ks(ref[k], dev[k]) > crit]


@pytest.mark.parametrize("h,w", [(40, 48), (30, 90)])      # 30 x 90: some of the 10 tries miss
def test_box_distribution_matches_random_resized_crop(h, w):
    assert not box_failures(h, w)
    assert box_failures(h, w, scale=(0.3, 1.0)), "a wrong scale range went unnoticed"


def test_boxes_fit_and_fall_back_to_the_central_crop():
    g = torch.Generator().manual_seed(0)
    h, w = torch.tensor([40.0, 20.0, 200.0]).repeat(500), torch.tensor([48.0, 200.0, 20.0]).repeat(500)
    b = sample_boxes(h, w, (0.2, 1.0), generator=g)
    assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert torch.equal(b, b.round()) and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # 20 x 200 (h x w): no box of area >= 0.2 and aspect <= 4/3 fits, so torchvision's fallback every time
    wide, tall = b[1::3], b[2::3]
    ref_wide, ref_tall = torchvision_boxes(20, 200, 1)[0], torchvision_boxes(200, 20, 1)[0]
    assert torch.equal(wide, ref_wide.expand_as(wide)) and torch.equal(tall, ref_tall.expand_as(tall))


# ------------------------------------------------------------------------------------------------ exactness

def test_batched_ops_equal_torchvision_uint8_kernels():
    g = torch.Generator().manual_seed(0)
    x8 = torch.cat([torch.randint(0, 256, (8, 3, 12, 10), dtype=torch.uint8, generator=g),
                    torch.stack([smooth((10, 12), seed=i) for i in range(8)])])
    x, n = x8.float(), len(x8)
    f = 0.6 + 0.8 * torch.rand(n, generator=g)
    hue = 0.2 * torch.rand(n, generator=g) - 0.1
    sigma = 0.1 + 1.9 * torch.rand(n, generator=g)
    pairs = [(ops.brightness(x, f), [F.adjust_brightness(x8[i], float(f[i])) for i in range(n)]),
             (ops.contrast(x, f), [F.adjust_contrast(x8[i], float(f[i])) for i in range(n)]),
             (ops.saturation(x, f), [F.adjust_saturation(x8[i], float(f[i])) for i in range(n)]),
             (ops.hue(x, hue), [F.adjust_hue(x8[i], float(hue[i])) for i in range(n)]),
             (ops.grayscale(x), [F.rgb_to_grayscale(x8[i], 3) for i in range(n)]),
             (ops.gaussian_blur(x, sigma, 5),
              [RandomGaussianBlur(5, sigma=(float(sigma[i]),) * 2)(x8[i]) for i in range(n)]),
             (ops.solarize(x, torch.arange(n) % 2 == 0),
              [F.solarize(x8[i], 128) if i % 2 == 0 else x8[i] for i in range(n)])]
    for mine, ref in pairs:
        diff = (mine - torch.stack(ref).float()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3     # float32 rounding, at most 1 level


def forced_views(**kw):
    """Every random step on (p = 1) except grayscale; jitter factors and order stay random per crop."""
    on = ViewParams(blur_p=1.0, solarize_p=1.0)
    return DeviceMultiCropViews(crop_size=64, view1=on, view2=on, flip_p=1.0, gray_p=0.0, jitter=Jitter(p=1.0), **kw)


def test_each_crop_equals_torchvision_applied_with_its_parameters():
    """Crops 64 px from a 48 x 40 image (upscaling: plain bilinear); the reference replays each crop's
    sampled box, flip, jitter order and factors, sigma and solarize with torchvision's uint8 kernels.
    Its resize runs in float (torchvision's uint8 resize uses fixed-point weights, 1 level off at some
    pixels, which the jitter factors then amplify; test_resized_crop_matches_torchvision covers it).
    Interior only: roi_align's border samples reach half a pixel past the box (torchvision clamps)."""
    image = smooth()
    views = forced_views()
    canvas, size = CanvasImage(128)(image)
    p = views.sample(size[None], torch.Generator().manual_seed(3))
    out = unnormalise(views.apply(canvas[None], p))
    order = {i: [] for i in range(8)}
    for t in range(4):
        for op in range(4):
            for i in p["jitter_groups"][4 * t + op].tolist():
                order[i].append(op)
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    m = views.kernel_size // 2 + 2
    for i in range(8):
        x1, y1, x2, y2 = p["boxes"][i, 1:].long().tolist()
        y = F.resized_crop(image.float(), y1, x1, y2 - y1, x2 - x1, [64, 64], antialias=False)
        y = F.hflip(y.round().clamp(0, 255).to(torch.uint8))
        assert sorted(order[i]) == [0, 1, 2, 3]
        for op in order[i]:
            y = adjust[op](y, float(p["factors"][i, op]))
        sigma = float(p["blur_sigma"][i])
        y = F.solarize(RandomGaussianBlur(views.kernel_size, sigma=(sigma, sigma))(y), 128).float()
        diff = (out[i] - y)[:, m:-m, m:-m].abs()
        assert diff.max() <= 2 and diff.mean() < 0.05, (i, diff.max().item(), diff.mean().item())


@pytest.mark.parametrize("crop", [64, 16])
def test_resized_crop_matches_torchvision(crop):
    """No random step: the crop is torchvision's resized crop; equal inside when upscaling (64 from
    <= 48 px boxes), within a few levels on average when shrinking (roi_align's box filter vs the
    antialiased triangle)."""
    image = smooth()
    views = DeviceMultiCropViews(crop_size=crop, view1=OFF, view2=OFF, flip_p=0.0, gray_p=0.0, jitter=Jitter(p=0.0))
    canvas, size = CanvasImage(128)(image)
    p = views.sample(size[None], torch.Generator().manual_seed(0))
    out = unnormalise(views.apply(canvas[None], p))
    for i in range(8):
        x1, y1, x2, y2 = p["boxes"][i, 1:].long().tolist()
        ref = F.resized_crop(image, y1, x1, y2 - y1, x2 - x1, [crop, crop], antialias=True).float()
        diff = (out[i] - ref).abs()
        if crop == 64:
            assert diff[:, 1:-1, 1:-1].max() <= 1
        else:
            assert diff.mean() < 2.0 and diff.max() <= 12


def test_apply_ignores_autocast_and_is_reproducible():
    image = smooth()
    views = DeviceMultiCropViews(crop_size=32)
    canvas, size = CanvasImage(64)(image)
    canvas, size = canvas.expand(4, -1, -1, -1).contiguous(), size.expand(4, 2)
    a = views(canvas, size, torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b = views(canvas, size, torch.Generator().manual_seed(5))
    assert a.shape == (4, 8, 3, 32, 32) and a.dtype == b.dtype == torch.float32
    assert torch.equal(a, b)
    c = views(canvas, size, torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)
    assert all(not torch.equal(a[0, i], a[0, j]) for i in range(8) for j in range(i + 1, 8))


# ------------------------------------------------------------------------------------------------ loader side

def test_canvas_fits_large_images_and_repeats_the_edge():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 300, 3), dtype=np.uint8), "RGB")
    canvas, size = CanvasImage(64)(big)
    assert canvas.shape == (3, 64, 64) and canvas.dtype == torch.uint8 and size.tolist() == [21, 64]
    small = smooth((20, 10))                               # (3, 10, 20): kept as is
    canvas, size = CanvasImage(64)(small)
    assert size.tolist() == [10, 20] and torch.equal(canvas[:, :10, :20], small)
    assert torch.equal(canvas[:, :10, 20], small[:, :, -1]) and torch.equal(canvas[:, 10, :20], small[:, -1])
    assert canvas[:, 10, 20].tolist() == small[:, -1, -1].tolist() and canvas[:, 12:].sum() == 0
    _, size = CanvasImage(16)(Image.new("L", (40, 20)))
    assert size.tolist() == [8, 16]


def test_collate_then_apply_gives_the_batch_crops():
    views = DeviceMultiCropViews(crop_size=16, crops_per_view=2)
    fit = CanvasImage(32)
    samples = [{"crops": fit(smooth((30 + i, 20), seed=i)), "index": i, "skipped": [] if i else ["bad.jpg"]}
               for i in range(3)]
    torch.manual_seed(0)
    batch = CanvasCollate(views)(samples)
    assert batch["canvas"].shape == (3, 3, 32, 32) and batch["size"].tolist() == [[20, 30], [20, 31], [20, 32]]
    assert batch["index"].tolist() == [0, 1, 2] and batch["skipped"] == ["bad.jpg"]
    assert batch["params"]["boxes"].shape == (12, 5)
    crops = crops_of(batch, views)
    assert crops.shape == (3, 4, 3, 16, 16) and torch.isfinite(crops).all()
    assert crops_of({"crops": crops}, None) is crops
    with pytest.raises(ValueError):
        crops_of(batch, None)


def test_pretrain_with_augmentation_on_the_device(tmp_path, tiny_pretrain):
    from mcl.cli import main

    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *tiny_pretrain, "trainer.max_steps=2",
                 "data.augment_on=device"]) == 0
    assert (out / "last.ckpt").is_file()
    assert main(["pretrain", "--out", str(tmp_path / "bad"), *tiny_pretrain, "data.augment_on=device",
                 "data.device_canvas=16"]) == 2


def test_only_mcl_pretraining_accepts_augment_on_device():
    from mcl.config import validate
    from mcl.errors import UserError
    from mcl.methods.mcl import MCLConfig
    from mcl.methods.moco import MoCoConfig

    cfg = MCLConfig()
    cfg.data.augment_on = "device"
    validate(cfg)
    moco = MoCoConfig()
    moco.data.augment_on = "device"
    with pytest.raises(UserError, match="data.augment_on"):
        validate(moco)
