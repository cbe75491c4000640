"""`mcl pretrain`: pretraining with Lightning (one device, many devices, many nodes), any method.

The recipe names its method (``method: moco_v2``), and ``method=NAME`` on the command line overrides it; a
recipe that names none is ``mcl``, or, with --resume, the method of the run's checkpoint. The methods are
``mcl.methods.METHODS``.
"""

from __future__ import annotations

import argparse

NAME = "pretrain"
HELP = ("Pretrain a backbone (+ FPN + box-head convs) with the recipe's method: MCL (default), MoCo v2 or "
        "supervised montage (default data: the embedded synthetic scenes).")
ACCEPTS_OVERRIDES = True
RECIPES = "cpu_smoke, r50_1gpu, paper_r50_in1k_100ep, moco_cpu_smoke, moco_v2_r50_in1k, supervised_cpu_smoke"


def add_run_arguments(parser: argparse.ArgumentParser, recipes: str = RECIPES) -> None:
    """The flags every pretraining command takes: --config, --data, --image-root, --out, --resume, --dry-run."""
    parser.add_argument("--config", help=f"recipe YAML (a path, or a packaged name: {recipes}); "
                                         "default: MCL's paper defaults")
    parser.add_argument("--data", help="images: a folder (recursive), a COCO json, or a .txt list of paths")
    parser.add_argument("--image-root", help="root for a COCO json's file_names (default: the json's folder)")
    parser.add_argument("--out", help="run folder for checkpoints, logs and the resolved config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --out (start there if it has none yet)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    parser.add_argument("--probe-json", help="online dense probe on this COCO json (boxes; masks optional), images "
                                             "split even/odd into probe-train/held-out; needs probe.every_steps > 0")
    parser.add_argument("--probe-images", help="folder the probe json's file_name entries are relative to")
    parser.epilog = ("The method is the recipe's `method:` key (mcl, moco_v2, supervised_montage), or method=NAME. "
                     "Any config key can be overridden: section.key=value or --section.key value.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def resolve(args: argparse.Namespace, extra: list[str], method: str | None = None):
    """The method class and its validated config of a command line: defaults <- --config YAML <- overrides <-
    --data/--image-root/--out/--probe-*; ``method`` (the aliases) must agree with the recipe's. Then torch,
    numpy and python are seeded with ``trainer.seed`` (so the model built next has reproducible weights)."""
    import lightning as L

    from mcl.config import ConfigError, build_config, merge, parse_overrides, read_values
    from mcl.methods import DEFAULT_METHOD, get_method

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
    values, source = read_values(args.config, merge(parse_overrides(extra), cli))
    named = values.get("method", method or resumed_method(args, values) or DEFAULT_METHOD)
    if method is not None and named != method:
        raise ConfigError(f"method = {named!r} in {source}, but `mcl pretrain-{method.split('_')[0]}` runs "
                          f"{method}: use `mcl pretrain --config ...` for that recipe")
    method_cls = get_method(named, source)
    cfg = build_config(method_cls.Config, values, source)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    return method_cls, cfg


def resumed_method(args: argparse.Namespace, values: dict) -> str | None:
    """With --resume and a recipe that names no method (a run's config.yaml written before recipes named one):
    the method of the newest valid checkpoint in ``trainer.out``, if there is one."""
    out = values.get("trainer", {}).get("out") if isinstance(values.get("trainer"), dict) else None
    if not getattr(args, "resume", False) or not out:
        return None
    from pathlib import Path

    from mcl.methods import resume_point

    found = resume_point(Path(out), warn=lambda *_: None)
    return found[1] if found else None


def run(args: argparse.Namespace, extra: list[str], method: str | None = None) -> int:
    from mcl.config import to_dict
    from mcl.engine.fit import fit

    method_cls, cfg = resolve(args, extra, method)
    prepared = method_cls.prepare(cfg)                  # e.g. supervised: model.num_classes from the data
    module = method_cls(to_dict(cfg))                   # builds the model before any work
    if args.dry_run:
        print(method_cls.describe(cfg))
        return 0
    return fit(cfg, module, method_cls.datamodule(cfg, prepared), args.resume)
