"""`mcl probe`: frozen-feature dense probes of any init (linear segmentation, RoI retrieval, frozen detection)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

NAME = "probe"
HELP = ("Probe frozen features of checkpoints (or 'random'): linear segmentation mIoU, RoI kNN / linear "
        "accuracy, frozen-backbone detection AP (default data: synthetic scenes).")
ACCEPTS_OVERRIDES = True   # extra key=value tokens go to the frozen-detection fine-tune (mcl finetune keys)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcl.commands._coco_split import add_split_arguments

    parser.add_argument("--init", action="append", required=True, metavar="INIT",
                        help="an mcl / MoCo / supervised checkpoint, an exported or ResNet state dict, or 'random'; "
                             "repeat to compare several in one table (LABEL=INIT names a row)")
    add_split_arguments(parser, "probe's training", "held-out")
    parser.add_argument("--out", default="runs/probe", help="folder for probe.json/.md/.png and the feature cache")
    parser.add_argument("--probes", default="seg,roi,det",
                        help="which probes: seg (linear segmentation), roi (RoI kNN + linear), det (frozen-backbone "
                             "detection); default all")
    parser.add_argument("--image-size", type=int, default=128, help="images are resized to SxS (multiple of 32; "
                                                                     "default 128, the synthetic scenes' size)")
    parser.add_argument("--arch", help="ResNet of a 'random' init (default resnet18); a file's own is read from it")
    parser.add_argument("--fpn-channels", type=int, help="FPN width of a 'random' init or of a backbone-only file "
                                                         "(default 128)")
    parser.add_argument("--max-pixels", type=int, default=30_000, help="pixels sampled per split for segmentation")
    parser.add_argument("--steps", type=int, default=50, help="L-BFGS iterations of each linear probe (default 50)")
    parser.add_argument("--k", type=int, default=20, help="kNN neighbours (default 20)")
    parser.add_argument("--det-iterations", type=int, default=300, help="frozen-detection iterations (default 300)")
    parser.add_argument("--det-config", default="finetune_cpu_smoke", help="frozen-detection recipe")
    parser.add_argument("--synthetic-train", type=int, default=64, help="synthetic train scenes (default 64)")
    parser.add_argument("--synthetic-val", type=int, default=32, help="synthetic held-out scenes (default 32)")
    parser.add_argument("--synthetic-size", type=int, default=128, help="synthetic scene side (default 128)")
    parser.add_argument("--synthetic-seed", type=int, default=0, help="train scenes' seed; held-out: seed + 1")
    parser.add_argument("--synthetic-preset", default="standard", help="synthetic scene kind: standard or simple")
    parser.add_argument("--seed", type=int, default=0, help="pixel sampling and detection seed")
    parser.add_argument("--device", default="cpu", help="where the frozen encoder runs (cpu, cuda, cuda:1; default "
                                                         "cpu); the linear probes fit on the CPU")
    parser.epilog = ("Extra section.key=value tokens go to the frozen-detection fine-tune (e.g. "
                     "model.anchor_sizes=[8,16,32,64,128]).")


def parse_inits(values: list[str]) -> dict[str, str]:
    """``LABEL=INIT`` or ``INIT`` (labelled by its run folder or file name) -> ``{label: init}``."""
    from mcl.errors import UserError

    inits: dict[str, str] = {}
    for value in values:
        label, sep, init = value.partition("=")
        if not sep:
            init = value
            path = Path(value)
            label = "random" if value == "random" else (path.parent.name if path.name == "last.ckpt" else path.stem)
        if label in inits:
            raise UserError(f"--init {value}: the label {label!r} is used twice; name rows with LABEL=INIT")
        inits[label] = init
    return inits


def _device(name: str):
    import torch

    from mcl.errors import UserError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: give cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here; use --device cpu")
    return device


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.errors import UserError
    from mcl.probes.data import check_size, load_probe_set, synthetic_probe_sets
    from mcl.probes.run import PROBES, SCHEMA, ProbeOptions, probe_init, render_table, write_outputs

    probes = tuple(p.strip() for p in args.probes.split(",") if p.strip())
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise UserError(f"--probes {args.probes!r}: choose from {', '.join(PROBES)}")
    for flag, value, low in (("--max-pixels", args.max_pixels, 1), ("--steps", args.steps, 1), ("--k", args.k, 1),
                             ("--det-iterations", args.det_iterations, 1)):
        if value < low:
            raise UserError(f"{flag} {value}: give at least {low}")
    check_size(args.image_size)
    inits = parse_inits(args.init)
    out = Path(args.out)
    given = [args.train_json, args.train_images, args.val_json, args.val_images]
    if any(given) and not all(given):
        raise UserError("give all of --train-json, --train-images, --val-json, --val-images, or none "
                        "(the synthetic scenes)")
    start = time.perf_counter()
    if all(given):
        train = load_probe_set(args.train_json, args.train_images, args.image_size, name="train")
        val = load_probe_set(args.val_json, args.val_images, args.image_size, train.label_map, name="val")
        files = {"train_json": args.train_json, "train_images": args.train_images, "val_json": args.val_json,
                 "val_images": args.val_images}
        name = f"{Path(args.train_json).name} / {Path(args.val_json).name}"
    else:
        train, val, paths = synthetic_probe_sets(out / "data", args.synthetic_train, args.synthetic_val,
                                                 args.synthetic_size, args.synthetic_seed, args.image_size,
                                                 args.synthetic_preset)
        files = {"train_json": paths["train_json"], "train_images": paths["images"], "val_json": paths["val_json"],
                 "val_images": paths["images"]}
        name = f"{args.synthetic_preset} synthetic scenes, seeds {args.synthetic_seed} / {args.synthetic_seed + 1}"
    print(f"probe data: {len(train)} train / {len(val)} held-out images, {train.num_classes - 1} categories"
          + (" (no masks: segmentation uses box-filled masks)" if train.box_masks else ""), flush=True)
    opts = ProbeOptions(probes=probes, max_pixels=args.max_pixels, steps=args.steps, k=args.k,
                        det_iterations=args.det_iterations, det_recipe=args.det_config, det_overrides=tuple(extra),
                        seed=args.seed)
    device = _device(args.device)
    results = {label: probe_init(init, label, train, val, opts, out, files, args.arch, args.fpn_channels,
                                 device=device) for label, init in inits.items()}
    summary = {"schema": SCHEMA, "probes": list(probes),
               "data": {"name": name, **files, "train_images": len(train), "val_images": len(val),
                        "image_size": args.image_size, "categories": train.num_classes - 1,
                        "box_masks": train.box_masks},
               "options": {"max_pixels": args.max_pixels, "steps": args.steps, "k": args.k,
                           "det_iterations": args.det_iterations, "det_config": args.det_config,
                           "det_overrides": list(extra), "seed": args.seed},
               "inits": results, "seconds": time.perf_counter() - start}
    write_outputs(summary, out)
    print("\n" + render_table(summary) + f"\n\nwritten: {out / 'probe.json'}, {out / 'probe.md'}, "
          f"{out / 'probe.png'}", flush=True)
    return 0
