"""`mcl pretrain --dry-run`: the resolved plan, printed before any work."""

from __future__ import annotations

import json
from pathlib import Path

from mcl.models.mcl import fpn_level_for
from mcl.montage import level_specs
from mcl.optim import scaled_lr
from mcl.pretrain_config import PretrainConfig


def describe_plan(cfg: PretrainConfig, world_size: int | None = None) -> str:
    """Batch sizes, levels, montages, lr after scaling and schedule lengths, as text."""
    t = cfg.trainer
    devices = world_size or (t.devices if isinstance(t.devices, int) else 1)
    world = devices * t.num_nodes
    b = cfg.data.batch_size
    global_batch = b * world * t.accumulate_grad_batches
    specs = level_specs(cfg.montage.ratios, cfg.montage.repeats)
    lines = [
        f"per-device batch B = {b} unique images; processes = {world} "
        f"({'devices=' + str(t.devices)} x nodes={t.num_nodes}); accumulation = {t.accumulate_grad_batches}",
        f"global batch = {global_batch}; lr = {cfg.optim.base_lr} x {global_batch}/256 = "
        f"{scaled_lr(cfg.optim.base_lr, global_batch):.4g} ({cfg.optim.name})",
        f"crops: {2 * len(specs)} per image ({len(specs)} per view) of {cfg.data.crop_size}px; "
        f"compute mode: {cfg.model.compute_mode}; arch: {cfg.model.arch}",
        ("augmentation: on the training device (loader workers decode and fit each image into a "
         f"{cfg.data.device_canvas or 2 * cfg.data.crop_size}px canvas)" if cfg.data.augment_on == "device"
         else f"augmentation: per image in the loader workers ({cfg.data.num_workers} per device)"),
        "level  ratio  cell px  FPN  montages/view/device  cells/view/device",
    ]
    total = 0
    for i, s in enumerate(specs):
        m = s.num_montages(b)
        total += m
        k = fpn_level_for(cfg.data.crop_size, cfg.model.cell_size, s.ratio)
        lines.append(f"{i:>5}  {s.ratio:>5}  {cfg.data.crop_size // s.ratio:>7}  P{k + 2:<2}  {m:>20}  {m * s.ratio ** 2:>17}")
    lines.append(f"images per view per device: {total} of {cfg.data.crop_size}x{cfg.data.crop_size}")
    if t.max_steps > 0:
        lines.append(f"schedule: {t.max_steps} optimizer steps")
    else:
        lines.append(f"schedule: {t.max_epochs} epochs")
    lines += cost_lines(cfg)
    return "\n".join(lines)


def cost_lines(cfg: PretrainConfig, results_dir: Path = Path("benchmarks/results")) -> list[str]:
    """FLOPs per device step (counted on the meta device), parameter memory, and a time estimate."""
    from mcl.bench.flops import mcl_step_flops

    flops = mcl_step_flops(cfg)
    lines = [f"FLOPs per device step (fwd+bwd online, fwd target): {flops.total / 1e12:.3f} TFLOP "
             f"({flops.per_image / 1e9:.1f} GFLOP per unique image, {cfg.model.compute_mode} mode)"]
    from mcl.train import build_model
    import torch

    with torch.device("meta"):
        model = build_model(cfg)
    online = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("target."))
    target = sum(p.numel() for n, p in model.named_parameters() if n.startswith("target."))
    state_bytes = 4 * (3 * online + target)          # fp32 weights, gradients, momentum; EMA target
    lines.append(f"parameters: {online / 1e6:.1f} M trained + {target / 1e6:.1f} M EMA target; weights, grads and "
                 f"optimizer state ~{state_bytes / 2**30:.2f} GiB per device (activations come on top: see mcl bench)")
    lines.append(estimate_epoch_time(cfg, results_dir))
    return lines


def estimate_epoch_time(cfg: PretrainConfig, results_dir: Path) -> str:
    """Time per epoch from a ``mcl bench`` step time measured for the same model, batch and crop size."""
    m, d = cfg.model, cfg.data
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            variants = data["timing"]["variants"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for name, v in variants.items():
            info = v.get("info", {})
            if (info.get("kind"), info.get("compute_mode"), info.get("arch"), info.get("crop_size"),
                    info.get("batch_size")) == ("mcl", m.compute_mode, m.arch, d.crop_size, d.batch_size):
                if "median_s" not in v:
                    continue
                device = data.get("machine", {}).get("device_name", "?")
                peak = v.get("peak_bytes_max")
                memory = f"; memory a step adds at its peak (measured) {peak / 2**30:.2f} GiB" if peak else ""
                if d.source is None:
                    return (f"time: {v['median_s']:.2f} s per device step on {device} ({path.name}); "
                            f"an epoch of {d.synthetic_num} synthetic images ~ "
                            f"{v['median_s'] * d.synthetic_num / d.batch_size / 60:.1f} min on one device{memory}")
                return (f"time: {v['median_s']:.2f} s per device step on {device} ({path.name}); "
                        f"x (images / global batch) per epoch{memory}")
    return (f"time: no benchmark figure for {m.arch} {m.compute_mode} at B={d.batch_size}, {d.crop_size}px "
            f"in {results_dir} (run `mcl bench` on this machine to get one, with the peak memory of a step)")
