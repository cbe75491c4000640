"""`mcl pretrain-supervised`: MCL's montage pyramid with per-cell class labels (MCL-SPEC section 9)."""

from __future__ import annotations

import argparse

from mcl.commands.pretrain import add_run_arguments, resolve_config
from mcl.commands.pretrain_moco import fit

NAME = "pretrain-supervised"
HELP = ("Supervised montage pretraining: every montage cell classifies its source image "
        "(data: class subfolders or a COCO json; default: the labelled synthetic scenes).")
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "supervised_cpu_smoke")
    parser.description = (HELP + " A COCO json labels each image with its largest-area category; "
                          "a folder needs one subfolder per class.")


def describe(cfg) -> str:
    """``--dry-run`` text: classes, batch, lr, levels."""
    from mcl.montage import level_specs
    from mcl.optim import scaled_lr

    t = cfg.trainer
    world = (t.devices if isinstance(t.devices, int) else 1) * t.num_nodes
    global_batch = cfg.data.batch_size * world * t.accumulate_grad_batches
    specs = level_specs(cfg.montage.ratios, cfg.montage.repeats)
    lines = [f"supervised montage: {cfg.model.arch}, {cfg.model.num_classes} classes from "
             f"{cfg.data.source or 'the synthetic scenes'}",
             f"global batch {global_batch}; lr = {cfg.optim.base_lr} x {global_batch}/256 = "
             f"{scaled_lr(cfg.optim.base_lr, global_batch):.4g} ({cfg.optim.name})"]
    for i, (s, w) in enumerate(zip(specs, cfg.loss.level_weights)):
        lines.append(f"level {i}: ratio {s.ratio}, {s.num_montages(cfg.data.batch_size)} montages/view/device, "
                     f"weight {w}")
    return "\n".join(lines)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.config import to_dict
    from mcl.supervised import SupervisedConfig, SupervisedPretrainModule, resolve_classes, supervised_datamodule, validate

    cfg = resolve_config(SupervisedConfig, validate, args, extra)
    listing = resolve_classes(cfg)                       # sets model.num_classes from the data
    module = SupervisedPretrainModule(to_dict(cfg))      # validates the geometry before any work
    if args.dry_run:
        print(describe(cfg))
        return 0
    return fit(cfg, module, supervised_datamodule(cfg, listing), args.resume, "Supervised montage")
