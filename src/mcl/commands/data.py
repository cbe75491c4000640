"""`mcl data`: make the synthetic dataset (`synth`), inspect an image source (`info`), write tar shards
(`shards`) or index existing ones (`index`)."""

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
    synth.add_argument("--preset", default="standard", help="scene kind: standard (2-8 objects, 4-60%% of the "
                                                             "side, 5 textures) or simple (1-3 objects, 25-60%%, "
                                                             "flat or gradient)")
    synth.add_argument("--split", default="images",
                       help="image subfolder name; a name other than 'images' also names the json (default images)")
    info = sub.add_parser("info", help="count the images of a source; --check decodes them all",
                          description="List a source (folder, COCO json or .txt list) and report its size; "
                                      "with --check, decode every image and name the unreadable ones.")
    info.add_argument("source", help="an image folder (recursive), a COCO .json or a .txt list")
    info.add_argument("--image-root", help="root for relative names in a json/txt (default: its folder)")
    info.add_argument("--check", action="store_true", help="decode every image and report unreadable files")
    shards = sub.add_parser("shards", help="pack images into tar shards (WebDataset layout) + a shards.json index",
                            description="Write the images of a source as OUT/shard-000000.tar, ... (SHARD_SIZE "
                                        "images each, shuffled with --seed) and OUT/shards.json; every file is "
                                        "written under a temporary name and renamed when complete.")
    shards.add_argument("--src", required=True, help="an image folder (recursive), a COCO .json or a .txt list")
    shards.add_argument("--out", required=True, help="output folder (must not hold shards yet)")
    shards.add_argument("--shard-size", type=int, required=True, help="images per shard (~1000 for ImageNet)")
    shards.add_argument("--max-side", type=int, help="decode and re-encode as JPEG with the longest side capped "
                                                      "(default: store the files as they are)")
    shards.add_argument("--image-root", help="root for relative names in a json/txt (default: its folder)")
    shards.add_argument("--seed", type=int, default=0, help="order of the images across shards (default 0)")
    shards.add_argument("--keep-order", action="store_true", help="keep the source's order instead of shuffling")
    shards.add_argument("--labels", action="store_true",
                        help="for supervised montage pretraining (mcl pretrain --config supervised_cpu_smoke): "
                             "--src is a folder with one subfolder per class or a COCO json; "
                             "each sample gets a .cls member (its class index) and OUT/classes.json the names")
    index = sub.add_parser("index", help="count the samples of existing tar shards and write shards.json beside them",
                           description="Write FOLDER/shards.json (sample count and size of every shard) for "
                                       "shards in one folder, so that training processes need not read their "
                                       "tar headers to count them.")
    index.add_argument("shards", help="a brace pattern (quoted), a folder of .tar shards or a .txt list of shards")
    parser.set_defaults(_data_parser=parser)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.data_command == "synth":
        return _synth(args)
    if args.data_command == "info":
        return _info(args)
    if args.data_command == "shards":
        return _shards(args)
    if args.data_command == "index":
        return _index(args)
    args._data_parser.print_help()
    return 2


def _synth(args: argparse.Namespace) -> int:
    import json

    from mcl.data.synthetic import write_coco_scenes

    json_path = write_coco_scenes(args.out, num=args.num, seed=args.seed, size=args.size, split_name=args.split,
                                  preset=args.preset)
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


def _shards(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mcl.data.shard_writer import refuse_existing, write_shards
    from mcl.data.sources import list_images

    refuse_existing(Path(args.out))                       # before listing a large source
    labels = class_names = None
    if args.labels:
        from mcl.data.labeled import list_labeled

        listing = list_labeled(args.src, args.image_root)
        paths, labels, class_names = listing.paths, listing.labels, listing.class_names
    else:
        paths = list_images(args.src, args.image_root)
    result = write_shards(paths, args.out, args.shard_size, max_side=args.max_side,
                          seed=None if args.keep_order else args.seed, labels=labels, class_names=class_names)
    print(f"wrote {result.total} images in {len(result.shards)} shards to {args.out} (index {result.index})")
    if class_names is not None:
        print(f"with labels: {len(class_names)} classes, names in {Path(args.out) / 'classes.json'}")
    for path in result.skipped:
        print(f"skipped unreadable image {path}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable files of {len(paths)} in {args.src}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mcl.data.shard_index import INDEX_NAME, list_shards, write_index
    from mcl.errors import UserError

    listed = list_shards(args.shards)
    folders = {s.path.parent.resolve() for s in listed.shards}
    if len(folders) != 1:
        raise UserError(f"{args.shards}: the shards lie in {len(folders)} folders; index each folder on its own")
    index = write_index(Path(next(iter(folders))) / INDEX_NAME, list(listed.shards))
    print(f"{index}: {len(listed.shards)} shards, {listed.total} samples")
    return 0
