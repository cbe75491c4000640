"""`mcl export`: a pretraining checkpoint -> torchvision detectors / ResNet or detectron2 weights, with a report."""

from __future__ import annotations

import argparse

from mcl.transfer.formats import FORMATS

NAME = "export"
HELP = ("Export a pretraining checkpoint to torchvision detectors (Mask / Faster / Keypoint R-CNN, RetinaNet), "
        "a torchvision ResNet or detectron2 weights, with a load report.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a .ckpt written by mcl pretrain (e.g. RUN/last.ckpt)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="torchvision-maskrcnn",
                        help="torchvision-maskrcnn: backbone + FPN + box-head convs for maskrcnn_resnet50_fpn_v2 "
                             "(default); torchvision-fasterrcnn: the same for fasterrcnn_resnet50_fpn_v2; "
                             "torchvision-keypointrcnn: the same for mcl's v2-layout Keypoint R-CNN; "
                             "torchvision-retinanet: backbone + FPN C3-C5 (BN folded) for retinanet_resnet50_fpn_v2; "
                             "semantic-fpn: backbone + FPN for mcl finetune --task semseg's Semantic FPN; "
                             "torchvision-resnet: backbone only; detectron2: a .pkl for Mask R-CNN "
                             "R50-FPN 4conv1fc (plus NAME_config.yaml with the settings it needs); mmdet: a .pth "
                             "for mmdetection's Mask R-CNN R50-FPN, SyncBN, Shared4Conv1FCBBoxHead (plus "
                             "NAME_config.py)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output file (.pth for torchvision and mmdet, .pkl for detectron2)")
    parser.add_argument("--encoder", choices=("online", "target"), default="online",
                        help="which encoder's weights: online (default) or the EMA target")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.transfer.export import export

    report = export(args.checkpoint, args.fmt, args.out, encoder=args.encoder, force=args.force)
    print(report.text())
    return 0
