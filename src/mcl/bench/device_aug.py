"""What ``data.augment_on=device`` costs: loader CPU per image, and the device's time per batch.

- ``canvas``: per core (one thread), ``ImageDataset`` with ``CanvasImage``: open + decode the JPEG
  (reduced-scale DCT when larger than the canvas) + fit into the C x C canvas: all a loader worker
  does per image on this path;
- ``sample``: per core, the collate's parameter draw for a batch of B (``DeviceMultiCropViews.sample``),
  given per image;
- ``augment``: ``DeviceMultiCropViews.apply`` on a batch of B canvases already on the device (on a
  CPU: one thread, so the figure is CPU time per batch; on CUDA: wall time between synchronisations).
Loader CPU per image on this path = 1 / canvas rate + sample time per image; the CPU cores a GPU
needs for X images/s are X x that (``cores_for``), against X / (per-core rate) for the per-image path.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from mcl.bench.data_rate import one_thread, per_core_rate
from mcl.bench.timing import synchronize


def device_path_rates(paths: list, decoded: list, crop_size: int, count: int, batch: int, device: torch.device,
                      crops_per_view: int = 4, canvas: int | None = None, repeats: int = 3,
                      budget_s: float | None = None) -> dict:
    """The three figures of the module docstring for one crop size (``paths`` JPEGs, ``decoded`` PIL images)."""
    from mcl.data.device_views import CanvasImage, DeviceMultiCropViews, canvas_side, to_device
    from mcl.data.sources import ImageDataset

    side = canvas_side(crop_size, canvas)
    fit = CanvasImage(side)
    dataset = ImageDataset(paths, fit, max_side=side)
    n = len(paths)
    out: dict = {"crop_size": crop_size, "canvas_side": side, "batch": batch, "device": str(device),
                 "host_to_device_bytes_per_image": 3 * side * side + 2 * 8,
                 "per_image_path_bytes_per_image": 2 * crops_per_view * 3 * crop_size * crop_size * 4}
    out["canvas"] = per_core_rate(lambda i: dataset[i % n], count, budget_s)
    views = DeviceMultiCropViews(crop_size=crop_size, crops_per_view=crops_per_view)
    items = [fit(decoded[i % n]) for i in range(batch)]
    canvases, sizes = torch.stack([c for c, _ in items]), torch.stack([s for _, s in items])
    with one_thread():
        views.sample(sizes)
        t0 = time.thread_time()
        rounds = 5
        for _ in range(rounds):
            params = views.sample(sizes)
        out["sample_ms_per_image"] = 1000 * (time.thread_time() - t0) / (rounds * batch)
    out["augment"] = augment_time(views, canvases.to(device), to_device(params, device), device, repeats)
    canvas_s = 1 / out["canvas"]["images_per_cpu_s"] if out["canvas"].get("images_per_cpu_s") else None
    out["loader_cpu_ms_per_image"] = (1000 * canvas_s + out["sample_ms_per_image"]) if canvas_s else None
    return out


def augment_time(views, canvases: torch.Tensor, params: dict, device: torch.device, repeats: int) -> dict:
    """Seconds per ``views.apply`` of one batch (one warm-up call; one thread on a CPU)."""
    times = []
    with one_thread() if device.type == "cpu" else contextlib.nullcontext():
        views.apply(canvases, params)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            views.apply(canvases, params)
            synchronize(device)
            times.append(time.perf_counter() - t0)
    b = canvases.shape[0]
    med = statistics.median(times)
    out = {"repeats": len(times), "times_s": times, "median_s_per_batch": med, "images_per_s": b / med,
           "threads": 1 if device.type == "cpu" else None}
    if device.type == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
        out["device_name"] = torch.cuda.get_device_name(device)
    return out


def cores_for(images_per_s: float, cpu_ms_per_image: float | None) -> float | None:
    """CPU cores kept busy by ``images_per_s`` images at ``cpu_ms_per_image`` each."""
    return images_per_s * cpu_ms_per_image / 1000 if cpu_ms_per_image else None
