"""`mcl pretrain --dry-run`: the resolved plan, printed before any work."""

from __future__ import annotations

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
    return "\n".join(lines)
