"""`mcl montage`: draw the crops and both views' montage pyramids of a batch as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "montage"
HELP = "Draw the 8 crops and the montage pyramid of both views (with each cell's source index) as a PNG."
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="cpu_smoke", help="recipe giving crop size, batch and levels "
                                                               "(default: cpu_smoke)")
    parser.add_argument("--data", help="images (folder, COCO json or .txt list); default: the synthetic scenes")
    parser.add_argument("--image-root", help="root for a COCO json's file_names")
    parser.add_argument("--out", default="montage.png", help="PNG to write (default: montage.png)")
    parser.add_argument("--images", type=int, default=4, help="images whose crops are shown (default: 4)")
    parser.add_argument("--per-level", type=int, default=2, help="montages shown per level (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the crops and the permutations")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import torch

    from mcl.commands.pretrain import resolve
    from mcl.data.device_views import CanvasCollate, crops_of
    from mcl.data.sources import collate_views
    from mcl.engine.atomic import write_atomic
    from mcl.errors import UserError
    from mcl.methods.mcl import MCLConfig, build_dataset, build_device_views
    from mcl.montage import level_specs
    from mcl.visualize import draw_pyramids

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} should end in .png")
    method, cfg = resolve(argparse.Namespace(config=args.config, data=args.data, image_root=args.image_root, out=None),
                          extra)
    if not isinstance(cfg, MCLConfig):
        raise UserError(f"--config names method {cfg.method}: mcl montage draws MCL's 8-crop pyramids "
                        f"(give an MCL recipe such as cpu_smoke)")
    specs = level_specs(cfg.montage.ratios, cfg.montage.repeats)
    for s in specs:
        s.num_montages(cfg.data.batch_size)
    torch.manual_seed(args.seed)
    dataset = build_dataset(cfg)
    if len(dataset) < cfg.data.batch_size:
        raise UserError(f"the source has {len(dataset)} images, fewer than data.batch_size {cfg.data.batch_size}")
    views = build_device_views(cfg)          # data.augment_on=device: the crops are made from canvases here
    batch = (CanvasCollate(views) if views else collate_views)([dataset[i] for i in range(cfg.data.batch_size)])
    picture = draw_pyramids(crops_of(batch, views), specs, cfg.montage.interpolation, args.images, args.per_level,
                            scale=max(1, 192 // cfg.data.crop_size), seed=args.seed)
    write_atomic(out, lambda f: picture.save(f, format="PNG"))
    print(f"wrote {out} ({picture.width}x{picture.height}): {args.images} images x {2 * len(specs)} crops, "
          f"then both views' pyramids (levels with ratios {cfg.montage.ratios}, batch {cfg.data.batch_size})")
    return 0
