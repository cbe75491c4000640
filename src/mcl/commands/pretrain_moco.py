"""`mcl pretrain-moco`: an alias of `mcl pretrain` for MoCo v2 recipes, kept for release 0.2 (removed in 0.3).

`mcl pretrain --config moco_cpu_smoke` does the same (the recipe says ``method: moco_v2``).
"""

from __future__ import annotations

import argparse

from mcl.commands.pretrain import add_run_arguments

NAME = "pretrain-moco"
HELP = ("Alias of `mcl pretrain method=moco_v2` (MoCo v2 baseline), kept for release 0.2; "
        "use `mcl pretrain --config moco_cpu_smoke`.")
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "moco_cpu_smoke, moco_v2_r50_in1k")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.commands import pretrain

    return pretrain.run(args, extra, method="moco_v2")
