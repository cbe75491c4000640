"""How fast the data pipeline feeds MCL: images/s per CPU core, and the time a training loop waits for it.

Per-core rates run in the main process with ``torch.set_num_threads(1)`` (what one loader worker
does): ``n`` unique images in a row, each to its 8 normalised crops, timed after one warm-up image.
- ``views``: ``MultiCropViews`` on images already decoded in memory (PIL RGB);
- ``jpeg``: ``ImageDataset`` end to end: open + decode a JPEG file from disk (``load_rgb``) + views;
- ``synthetic``: ``SyntheticScenes``: render an embedded scene + views (the default data source);
- ``decode``: ``load_rgb`` only, to split the JPEG figure.
- ``device_path`` (with a device and a batch size): the ``data.augment_on=device`` figures, see
  :mod:`mcl.bench.device_aug`.
JPEGs are written once to a temporary folder (or taken from ``--data``): at 224, ImageNet-like
500x375 photos of synthetic scenes at quality 90; at a recipe's smaller size, square images of its
``synthetic_size``. The page cache holds them after the first pass (no disk reads are timed).

Loader wait: the recipe's own DataLoader (``build_dataset``, its ``num_workers``, ``collate_views``;
with ``data.augment_on=device`` the canvases, whose crops are then made inside the timed step)
feeding whole training steps. Per step: ``t0; batch = next(loader); t1; step(batch); t2``; the wait
fraction is ``sum(t1 - t0) / sum(t2 - t0)`` over the steps after the first (the first waits for the
workers to start and fill their first batches; it is reported apart).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mcl.bench.timing import Step, mcl_step, synchronize
from mcl.engine.atomic import write_atomic


class one_thread:
    """``torch.set_num_threads(1)`` inside, the previous count restored after."""

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def per_core_rate(produce: Callable[[int], object], count: int, budget_s: float | None = None) -> dict:
    """Images/s of ``produce(i)`` for ``i = 0..count-1`` on one thread (after one warm-up call).

    Wall clock (``images_per_s``) and this thread's CPU time (``images_per_cpu_s``: the rate of a core
    of one's own, which a shared machine's wall clock understates). Stops early once ``budget_s`` is
    spent (at least 3 images are timed).
    """
    with one_thread():
        produce(count)                                   # warm-up: imports, first-call allocations
        times = []
        start, cpu_start = time.perf_counter(), time.thread_time()
        for i in range(count):
            t0 = time.perf_counter()
            produce(i)
            times.append(time.perf_counter() - t0)
            if budget_s is not None and len(times) >= 3 and time.perf_counter() - start > budget_s:
                break
        cpu = time.thread_time() - cpu_start
    total = sum(times)
    return {"images": len(times), "seconds": total, "images_per_s": len(times) / total if total > 0 else None,
            "median_ms_per_image": 1000 * statistics.median(times), "cpu_seconds": cpu,
            "images_per_cpu_s": len(times) / cpu if cpu > 0 else None}


def views_breakdown(views, images: list, count: int) -> dict:
    """CPU milliseconds per image (all ``2k`` crops) spent in each step of the crop recipe, one thread.

    Runs the recipe's transforms one at a time (``views.recipes[v].transforms``) on ``count`` images,
    then the stack + normalise; the steps' sum is close to the views' own per-image CPU time.
    """
    from mcl.data.views import _as_uint8_rgb

    spent: dict[str, float] = {}
    with one_thread():
        for i in range(count):
            pixels = _as_uint8_rgb(images[i % len(images)])
            crops = []
            for recipe in views.recipes:
                for _ in range(views.crops_per_view):
                    x = pixels
                    for t in recipe.transforms:
                        name = type(t).__name__
                        if name == "RandomApply":
                            name = "RandomApply(" + ",".join(type(u).__name__ for u in t.transforms) + ")"
                        c0 = time.thread_time()
                        x = t(x)
                        spent[name] = spent.get(name, 0.0) + time.thread_time() - c0
                    crops.append(x)
            c0 = time.thread_time()
            stacked = torch.stack(crops).to(torch.float32)
            (stacked - views._mean) * views._inv_std
            spent["stack+normalise"] = spent.get("stack+normalise", 0.0) + time.thread_time() - c0
    return {k: 1000 * v / count for k, v in spent.items()}


def write_jpegs(folder: Path, count: int, width: int, height: int, seed: int = 0, quality: int = 90) -> list[Path]:
    """``count`` JPEG photos of synthetic scenes, ``width x height``, in ``folder``."""
    from PIL import Image

    from mcl.data.synthetic import render_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, _ = render_scene(seed, i, max(width, height))
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        path = folder / f"scene_{i:04d}.jpg"
        write_atomic(path, lambda f, image=image: image.save(f, format="JPEG", quality=quality))
        paths.append(path)
    return paths


def pipeline_rates(crop_size: int, image_size: tuple[int, int], count: int, crops_per_view: int = 4,
                   synthetic_size: int | None = None, jpeg_paths: list[Path] | None = None,
                   budget_s: float | None = None, distinct: int = 16, device: torch.device | None = None,
                   device_batch: int = 0) -> dict:
    """Per-core images/s of views / decode / jpeg end to end / synthetic scenes at one crop size.

    ``distinct`` different source images are cycled through (decoding cost depends on content little).
    With ``device`` and ``device_batch``: also the ``data.augment_on=device`` figures (mcl.bench.device_aug).
    """
    from mcl.data.sources import ImageDataset, load_rgb
    from mcl.data.synthetic import SyntheticScenes
    from mcl.data.views import MultiCropViews

    views = MultiCropViews(crop_size=crop_size, crops_per_view=crops_per_view)
    out: dict = {"crop_size": crop_size, "crops_per_image": 2 * crops_per_view}
    with tempfile.TemporaryDirectory(prefix="mcl-bench-") as tmp:
        if jpeg_paths:
            paths = list(jpeg_paths)[:max(distinct, 1)]
            out["jpeg_source"] = str(Path(paths[0]).parent)
        else:
            width, height = image_size
            paths = write_jpegs(Path(tmp), distinct, width, height)
            out["jpeg_source"] = f"{len(paths)} synthetic-scene JPEGs {width}x{height}, quality 90"
        decoded = [load_rgb(p) for p in paths]
        out["image_size"] = list(decoded[0].size)
        dataset = ImageDataset(paths, views)
        n = len(paths)
        out["views"] = per_core_rate(lambda i: views(decoded[i % n]), count, budget_s)
        out["decode"] = per_core_rate(lambda i: load_rgb(paths[i % n]), count, budget_s)
        out["jpeg"] = per_core_rate(lambda i: dataset[i % n], count, budget_s)
        try:
            out["views_cpu_ms_by_step"] = views_breakdown(views, decoded, max(min(count, 8), 1))
        except Exception as exc:     # relies on MultiCropViews internals; a change there must not sink the rest
            out["views_cpu_ms_by_step"] = {"error": f"{type(exc).__name__}: {exc}"}
        if synthetic_size:
            scenes = SyntheticScenes(num=max(count + 1, 2), seed=0, size=synthetic_size, transform=views)
            out["synthetic"] = per_core_rate(lambda i: scenes[i], count, budget_s)
            out["synthetic"]["scene_size"] = synthetic_size
        if device is not None and device_batch:
            from mcl.bench.device_aug import device_path_rates

            try:
                out["device_path"] = device_path_rates(paths, decoded, crop_size, count, device_batch, device,
                                                       crops_per_view, budget_s=budget_s)
            except Exception as exc:     # e.g. out of memory: keep the per-image figures
                out["device_path"] = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"}
    return out


def loader_wait(cfg, device: torch.device, steps: int = 6, compute_mode: str | None = None,
                num_workers: int | None = None, precision: str = "fp32", channels_last: bool = False,
                log: Callable[[str], None] = print) -> dict:
    """Fraction of a DataLoader + training-step loop spent blocked in ``next(loader)`` (see module docstring)."""
    from torch.utils.data import DataLoader

    from mcl.data.device_views import CanvasCollate, crops_of, to_device
    from mcl.data.sources import collate_views
    from mcl.methods.mcl import build_dataset, build_device_views

    cfg = copy.deepcopy(cfg)
    if compute_mode is not None:
        cfg.model.compute_mode = compute_mode
    workers = cfg.data.num_workers if num_workers is None else num_workers
    b = cfg.data.batch_size
    dataset = build_dataset(cfg)
    views = build_device_views(cfg)
    if len(dataset) < b * steps:
        cfg.data.synthetic_num = b * steps
        dataset = build_dataset(cfg)
    holder = {"crops": None}
    step: Step = mcl_step(cfg, cfg.model.compute_mode, lambda: holder["crops"], device, precision, channels_last)
    loader = DataLoader(dataset, batch_size=b, shuffle=True, drop_last=True, num_workers=workers,
                        collate_fn=CanvasCollate(views) if views else collate_views, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))
    waits, computes = [], []
    iterator = iter(loader)
    try:
        for k in range(steps):
            t0 = time.perf_counter()
            batch = next(iterator)
            t1 = time.perf_counter()
            batch = to_device({k: v for k, v in batch.items() if k in ("crops", "canvas", "params")}, device)
            holder["crops"] = crops_of(batch, views)     # data.augment_on=device: the crops are made here
            step.run()
            synchronize(device)
            t2 = time.perf_counter()
            waits.append(t1 - t0)
            computes.append(t2 - t1)
            log(f"  loader step {k}: waited {t1 - t0:.3f} s, step {t2 - t1:.3f} s")
    finally:
        del iterator
    steady_wait, steady_total = sum(waits[1:]), sum(waits[1:]) + sum(computes[1:])
    return {
        "recipe_batch_size": b, "num_workers": workers, "compute_mode": cfg.model.compute_mode,
        "augment_on": cfg.data.augment_on,
        "crop_size": cfg.data.crop_size, "source": cfg.data.source or f"synthetic scenes {cfg.data.synthetic_size}px",
        "steps": steps, "first_batch_wait_s": waits[0] if waits else None,
        "wait_s": waits, "step_s": computes,
        "wait_fraction": steady_wait / steady_total if steady_total > 0 else None,
        "images_per_s": b * (len(waits) - 1) / steady_total if steady_total > 0 else None,
    }

