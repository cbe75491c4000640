"""GPU check of data.augment_on=device: the same parameters give the same crops on the CPU and on CUDA
(up to float rounding), bf16 autocast around the call changes nothing, and the batched augmentation's
time and memory at paper size (B = 128, 224 px crops, 448 px canvases, 8 crops per image).

Usage: python benchmarks/device_aug_check.py [cuda|cpu]   (prints; no files)
"""

import statistics
import sys
import time

import torch

from mcl.data.device_views import CanvasImage, DeviceMultiCropViews, to_device
from mcl.data.synthetic import render_scene
from mcl.data.views import IMAGENET_MEAN, IMAGENET_STD

device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1) * 255
std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1) * 255
fit = CanvasImage(448)
scenes = [fit(render_scene(0, i, 500)[0]) for i in range(16)]
canvas = torch.stack([c for c, _ in scenes])
size = torch.stack([s for _, s in scenes])
views = DeviceMultiCropViews(224)
params = views.sample(size, torch.Generator().manual_seed(0))
with torch.no_grad():
    on_cpu = views.apply(canvas, params) * std + mean
    on_dev = (views.apply(canvas.to(device), params).cpu()) * std + mean
    with torch.autocast(device.type, dtype=torch.bfloat16):
        in_autocast = (views.apply(canvas.to(device), params).cpu()) * std + mean
diff = (on_cpu - on_dev).abs()
print(f"CPU vs {device}: 16 images x 8 crops of 224: max |diff| {diff.max():.2f} grey levels, mean {diff.mean():.4f}, "
      f"pixels off by > 0.5: {100 * (diff > 0.5).float().mean():.3f}%, crops with any: "
      f"{int((diff.amax(dim=(2, 3, 4)) > 0.5).sum())} of 128")
print(f"bf16 autocast around apply: identical to without: {torch.equal(in_autocast, on_dev)}")

b = 128
big = torch.stack([scenes[i % 16][0] for i in range(b)])
big_size = torch.stack([scenes[i % 16][1] for i in range(b)])
big_params = views.sample(big_size, torch.Generator().manual_seed(1))
gpu_canvas = big.to(device)
p = to_device(big_params, device)
for _ in range(2):
    views.apply(gpu_canvas, p)
if device.type == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
times = []
for _ in range(10):
    t0 = time.perf_counter()
    views.apply(gpu_canvas, p)
    if device.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else float("nan")
print(f"apply, B = {b}, 224 px, canvas 448, on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}: "
      f"median {1000 * statistics.median(times):.1f} ms (min {1000 * min(times):.1f}, max {1000 * max(times):.1f}) "
      f"= {b / statistics.median(times):,.0f} img/s; peak memory above the inputs {peak:.2f} GiB")
pinned = big.pin_memory() if device.type == "cuda" else big
t0 = time.perf_counter()
for _ in range(5):
    pinned.to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
print(f"host -> device copy of the {b} uint8 canvases ({big.numel() / 2**20:.0f} MiB, pinned): "
      f"{1000 * (time.perf_counter() - t0) / 5:.1f} ms")
t0 = time.perf_counter()
for _ in range(5):
    views.sample(big_size)
print(f"parameter draw for B = {b} (collate, CPU, {torch.get_num_threads()} threads): "
      f"{1000 * (time.perf_counter() - t0) / 5:.2f} ms")
