"""`mcl pretrain`: MCL pretraining with Lightning (one device, many devices, many nodes)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

NAME = "pretrain"
HELP = "Pretrain ResNet + FPN + box-head convs with MCL (default data: the embedded synthetic scenes)."
ACCEPTS_OVERRIDES = True


def add_run_arguments(parser: argparse.ArgumentParser, recipes: str) -> None:
    """The flags every pretraining command takes: --config, --data, --image-root, --out, --resume, --dry-run."""
    parser.add_argument("--config", help=f"recipe YAML (a path, or a packaged name: {recipes}); "
                                         "default: the method's paper defaults")
    parser.add_argument("--data", help="images: a folder (recursive), a COCO json, or a .txt list of paths")
    parser.add_argument("--image-root", help="root for a COCO json's file_names (default: the json's folder)")
    parser.add_argument("--out", help="run folder for checkpoints, logs and the resolved config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --out (start there if it has none yet)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    parser.add_argument("--probe-json", help="online dense probe on this COCO json (boxes; masks optional), images "
                                             "split even/odd into probe-train/held-out; needs probe.every_steps > 0")
    parser.add_argument("--probe-images", help="folder the probe json's file_name entries are relative to")
    parser.epilog = "Any config key can be overridden: section.key=value or --section.key value."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "cpu_smoke, r50_1gpu, paper_r50_in1k_100ep")


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0 and \
        int(os.environ.get("LOCAL_RANK", "0")) == 0


def resolve_config(config_cls, validate, args: argparse.Namespace, extra: list[str]):
    """Defaults <- --config YAML <- overrides <- --data/--image-root/--out, then ``validate``; then torch,
    numpy and python are seeded with ``trainer.seed`` (so the model built next has reproducible weights)."""
    import lightning as L

    from mcl.config import load_config, merge, parse_overrides

    cli: dict = {}
    if args.data:
        cli.setdefault("data", {})["source"] = args.data
    if args.image_root:
        cli.setdefault("data", {})["image_root"] = args.image_root
    if args.out:
        cli.setdefault("trainer", {})["out"] = args.out
    if getattr(args, "probe_json", None):
        cli.setdefault("probe", {})["json"] = args.probe_json
    if getattr(args, "probe_images", None):
        cli.setdefault("probe", {})["images"] = args.probe_images
    cfg = load_config(config_cls, args.config, merge(parse_overrides(extra), cli))
    validate(cfg)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    return cfg


def resolve(args: argparse.Namespace, extra: list[str]):
    """The MCL pretraining config of a command line."""
    from mcl.pretrain_config import PretrainConfig, validate

    return resolve_config(PretrainConfig, validate, args, extra)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.train import MCLDataModule, MCLPretrainModule, config_dict

    cfg = resolve(args, extra)
    module = MCLPretrainModule(config_dict(cfg))           # validates the geometry before any work
    if args.dry_run:
        from mcl.plan import describe_plan
        print(describe_plan(cfg))
        return 0
    return fit(cfg, module, MCLDataModule(cfg), args.resume,
               lambda summary, trainer, checkpoint: summary.text(trainer, checkpoint))


def fit(cfg, module, datamodule, resume: bool, describe) -> int:
    """Refuse to overwrite a run, save the resolved config, train, write ``last.ckpt``, print the summary.

    Shared by every pretraining method; ``describe(summary, trainer, checkpoint) -> str`` is the end text.
    Stopped by a signal (``mcl.preemption``): the checkpoint is already written; prints it and the
    ``--resume`` command and returns 0. Too many non-finite steps raise ``NonFiniteError`` (exit 2).
    """
    from mcl.config import save_yaml
    from mcl.errors import UserError
    from mcl.nonfinite import NonFiniteMonitor
    from mcl.preemption import GracefulStop
    from mcl.probes.online import online_probe
    from mcl.summary import RunSummary
    from mcl.train import build_trainer, find_resume_checkpoint

    run_dir = Path(cfg.trainer.out)
    ckpt_path = None
    if resume:
        ckpt_path = find_resume_checkpoint(run_dir)
        print(f"resuming from {ckpt_path}" if ckpt_path else f"--resume: no checkpoint in {run_dir} yet, "
              f"starting a new run there", flush=True)
    elif run_dir.is_dir() and any(run_dir.glob("*.ckpt")):
        raise UserError(f"{run_dir} already holds checkpoints: add --resume to continue that run, "
                        f"or choose a new --out (nothing was overwritten)")
    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
    summary = RunSummary(run_dir)
    trainer = build_trainer(cfg, run_dir, extra_callbacks=[summary, *online_probe(cfg, run_dir)])
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    stop = next(c for c in trainer.callbacks if isinstance(c, GracefulStop))
    nonfinite = next(c for c in trainer.callbacks if isinstance(c, NonFiniteMonitor))
    if stop.stopped_at is not None:
        if trainer.is_global_zero:
            print(f"mcl: {stop.message()}", flush=True)
        return 0
    trainer.save_checkpoint(run_dir / "last.ckpt", weights_only=False)   # full state: --resume continues from it
    if trainer.is_global_zero:
        print(describe(summary, trainer, run_dir / "last.ckpt"), flush=True)
        print(f"non-finite steps skipped: {nonfinite.skipped} (train/nonfinite_skipped in the logs)", flush=True)
    sys.stdout.flush()
    return 0
