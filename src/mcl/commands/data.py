"""`mcl data`: make the synthetic dataset (`synth`) or inspect an image source (`info`)."""

from __future__ import annotations

import argparse

NAME = "data"
HELP = "Make or inspect datasets (synth: write the embedded synthetic scenes as COCO json + images)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    synth = sub.add_parser("synth", help="write synthetic scenes as PNG images + a COCO json with boxes and masks",
                           description="Write scenes 0..N-1 of synthetic dataset SEED as OUT/images/*.png and "
                                       "OUT/annotations.json (COCO, exact visible-part masks).")
    synth.add_argument("--out", required=True, help="output folder (created; our files in it are overwritten)")
    synth.add_argument("--num", type=int, default=100, help="number of images (default 100)")
    synth.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    synth.add_argument("--split", default="images",
                       help="image subfolder name; a name other than 'images' also names the json (default images)")
    info = sub.add_parser("info", help="count the images of a source; --check decodes them all",
                          description="List a source (folder, COCO json or .txt list) and report its size; "
                                      "with --check, decode every image and name the unreadable ones.")
    info.add_argument("source", help="an image folder (recursive), a COCO .json or a .txt list")
    info.add_argument("--image-root", help="root for relative names in a json/txt (default: its folder)")
    info.add_argument("--check", action="store_true", help="decode every image and report unreadable files")
    parser.set_defaults(_data_parser=parser)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.data_command == "synth":
        return _synth(args)
    if args.data_command == "info":
        return _info(args)
    args._data_parser.print_help()
    return 2


def _synth(args: argparse.Namespace) -> int:
    import json

    from mcl.data.synthetic import write_coco_scenes

    json_path = write_coco_scenes(args.out, num=args.num, seed=args.seed, size=args.size, split_name=args.split)
    with open(json_path, encoding="utf-8") as f:
        coco = json.load(f)
    print(f"wrote {len(coco['images'])} images ({args.size}x{args.size}) to {json_path.parent / args.split}")
    print(f"wrote {len(coco['annotations'])} annotations in {len(coco['categories'])} categories to {json_path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from mcl.data.sources import SkipReport, UnreadableImage, list_images, load_rgb

    paths = list_images(args.source, args.image_root)
    print(f"{args.source}: {len(paths)} images (first {paths[0]}, last {paths[-1]})")
    if not args.check:
        return 0
    report = SkipReport(source=str(args.source), total=len(paths))
    for path in paths:
        try:
            load_rgb(path, max_side=64)
        except UnreadableImage:
            report.update([str(path)])
    print(report.summary())
    return 1 if report.count else 0
