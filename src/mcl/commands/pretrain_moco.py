"""`mcl pretrain-moco`: the MoCo v2 baseline, with the same data, trainer, checkpoints and export as MCL.

Also holds the run flow every pretraining command shares (``add_run_arguments``, ``resolve``, ``fit``);
``mcl pretrain-supervised`` imports them from here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

NAME = "pretrain-moco"
HELP = "Pretrain a ResNet with MoCo v2 (baseline; default data: the embedded synthetic scenes)."
ACCEPTS_OVERRIDES = True


def add_run_arguments(parser: argparse.ArgumentParser, recipes: str) -> None:
    """The flags of ``mcl pretrain``: --config, --data, --image-root, --out, --resume, --dry-run."""
    parser.add_argument("--config", help=f"recipe YAML (a path, or a packaged name: {recipes}); "
                                         "default: the method's defaults")
    parser.add_argument("--data", help="images: a folder (recursive), a COCO json, or a .txt list of paths")
    parser.add_argument("--image-root", help="root for a COCO json's file_names (default: the json's folder)")
    parser.add_argument("--out", help="run folder for checkpoints, logs and the resolved config")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    parser.epilog = "Any config key can be overridden: section.key=value or --section.key value."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "moco_cpu_smoke, moco_v2_r50_in1k")


def resolve(config_cls, validate, args: argparse.Namespace, extra: list[str]):
    """Defaults <- --config YAML <- overrides <- --data/--image-root/--out, then ``validate``."""
    from mcl.config import load_config, merge, parse_overrides

    cli: dict = {}
    if args.data:
        cli.setdefault("data", {})["source"] = args.data
    if args.image_root:
        cli.setdefault("data", {})["image_root"] = args.image_root
    if args.out:
        cli.setdefault("trainer", {})["out"] = args.out
    cfg = load_config(config_cls, args.config, merge(parse_overrides(extra), cli))
    validate(cfg)
    return cfg


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

    cfg = resolve(MoCoConfig, validate, args, extra)
    module = MoCoPretrainModule(to_dict(cfg))
    if args.dry_run:
        print(describe_moco_plan(cfg))
        return 0
    return fit(cfg, module, moco_datamodule(cfg), args.resume, "MoCo v2")
