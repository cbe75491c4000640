"""`mcl pretrain-supervised`: an alias of `mcl pretrain` for supervised montage recipes, kept for release 0.2
(removed in 0.3). `mcl pretrain --config supervised_cpu_smoke` does the same (``method: supervised_montage``)."""

from __future__ import annotations

import argparse

from mcl.commands.pretrain import add_run_arguments

NAME = "pretrain-supervised"
HELP = ("Alias of `mcl pretrain method=supervised_montage` (every montage cell classifies its source image; "
        "data: class subfolders or a COCO json), kept for release 0.2; use `mcl pretrain --config "
        "supervised_cpu_smoke`.")
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "supervised_cpu_smoke")
    parser.description = (HELP + " A COCO json labels each image with its largest-area category; "
                          "a folder needs one subfolder per class.")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.commands import pretrain

    return pretrain.run(args, extra, method="supervised_montage")
