"""`mcl pretrain-moco`: the MoCo v2 baseline, with the same data, trainer, checkpoints and export as MCL.

The run flow (flags, config resolution, fit) is ``mcl.commands.pretrain``'s; this module adds MoCo's
model, data and end-of-run text, and ``fit`` with that text (``mcl pretrain-supervised`` uses it too).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mcl.commands.pretrain import add_run_arguments, resolve_config

NAME = "pretrain-moco"
HELP = "Pretrain a ResNet with MoCo v2 (baseline; default data: the embedded synthetic scenes)."
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "moco_cpu_smoke, moco_v2_r50_in1k")


def summary_text(summary, trainer, checkpoint: Path, method: str) -> str:
    """End-of-run text naming the method and every logged ``train/*`` figure (``RunSummary.text`` prints MCL's)."""
    elapsed = time.time() - summary.start
    skip = {"train/lr", "train/global_step"}
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items())
               if k.startswith("train/") and k not in skip}
    lines = ["-" * 60,
             f"{method} pretraining finished: {trainer.global_step} optimizer steps "
             f"({trainer.global_step - summary.start_step} this session) in {elapsed:.1f} s",
             f"unique images seen this session: {summary.images} ({summary.images / max(elapsed, 1e-9):.1f} img/s)"]
    lines += [f"  {k[len('train/'):]:<14} {v:.4f}" for k, v in metrics.items()]
    lines += [f"checkpoint: {checkpoint}", f"logs: {summary.run_dir / 'logs'} (CSV + TensorBoard)", "-" * 60]
    return "\n".join(lines)


def fit(cfg, module, datamodule, resume: bool, method: str) -> int:
    """``mcl.commands.pretrain.fit`` with an end-of-run text that names ``method``."""
    from mcl.commands.pretrain import fit as fit_run

    return fit_run(cfg, module, datamodule, resume,
                   lambda summary, trainer, ckpt: summary_text(summary, trainer, ckpt, method))


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.config import to_dict
    from mcl.moco_config import MoCoConfig, validate
    from mcl.train_moco import MoCoPretrainModule, describe_moco_plan, moco_datamodule

    cfg = resolve_config(MoCoConfig, validate, args, extra)
    module = MoCoPretrainModule(to_dict(cfg))
    if args.dry_run:
        print(describe_moco_plan(cfg))
        return 0
    return fit(cfg, module, moco_datamodule(cfg), args.resume, "MoCo v2")
