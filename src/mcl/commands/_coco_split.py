"""The four flags of a COCO-format train / held-out pair, shared by the commands that take one."""

from __future__ import annotations

import argparse


def add_split_arguments(parser: argparse.ArgumentParser, train: str = "train", val: str = "val") -> None:
    """``--train-json``, ``--train-images``, ``--val-json``, ``--val-images``; ``train``/``val`` name the splits."""
    for flag, name in (("train", train), ("val", val)):
        parser.add_argument(f"--{flag}-json", help=f"COCO-format annotations of the {name} images (boxes; masks "
                                                   f"where present)")
        parser.add_argument(f"--{flag}-images", help=f"folder the {flag} json's file_name entries are relative to")
