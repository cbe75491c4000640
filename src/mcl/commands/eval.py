"""`mcl eval`: score a fine-tuned detector (COCO AP, pycocotools) or segmenter (mIoU) on a COCO-format set."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "eval"
HELP = ("Score a detector saved by `mcl finetune` on a COCO-format set (AP, AP50, AP75, APs/m/l; box, mask, "
        "keypoints), or a --task semseg model (mIoU, pixel accuracy).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("detector", metavar="MODEL_CKPT", help="RUN_DIR/detector.pt, RUN_DIR/semseg.pt or a finetune "
                                                               ".ckpt")
    parser.add_argument("--val-json", help="COCO-format annotations "
                                           "(default: the val json the detector was trained with)")
    parser.add_argument("--val-images", help="folder the json's file_name entries are relative to")
    parser.add_argument("--out", help="folder for results.json and predictions (default: beside the checkpoint)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per device (default 2)")
    parser.add_argument("--num-workers", type=int, default=2, help="data loading processes (default 2)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default auto)")
    parser.add_argument("--devices", default="1", help="devices per node (default 1)")
    parser.add_argument("--skip-missing-images", action="store_true", help="leave out images missing on disk")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.errors import UserError
    from mcl.transfer.coco_data import CocoDetection, LabelMap, make_loader
    from mcl.transfer.detection import make_trainer
    from mcl.transfer.finetune_base import FinetuneBase
    from mcl.transfer.finetune_config import TrainerConfig
    from mcl.transfer.semseg import SemsegDataset, make_semseg_loader

    module = FinetuneBase.from_file(args.detector)
    trained_on = module.cfg.data
    val_json = args.val_json or trained_on.val_json
    val_images = args.val_images or (trained_on.val_images if not args.val_json else None)
    if not val_json or not val_images:
        raise UserError("give --val-json and --val-images (the checkpoint records no val set to default to)")
    hp = module.hparams
    labels = LabelMap(tuple(hp.category_ids), tuple(hp.category_names))
    semseg = module.TASK == "semseg"
    masks = (module.cfg.model.masks is True) if semseg else None
    val_set = CocoDetection(val_json, val_images, train=False, label_map=labels, with_masks=masks,
                            skip_missing_images=args.skip_missing_images)
    if not semseg and hp.with_masks and not val_set.with_masks:
        print(f"{val_json} has no segmentation: scoring boxes only", flush=True)
        module.iou_types = ("bbox",)
    for line in val_set.report.lines():
        print(line, flush=True)
    out = Path(args.out) if args.out else Path(args.detector).parent / f"eval_{Path(val_json).stem}"
    extra = dict(gt_json=str(val_json), val_images=str(val_images), detector=str(args.detector))
    if semseg:
        val_set = SemsegDataset(val_set, module.cfg.input.test_min_size, train=False,
                                boxes_only=module.cfg.model.masks is False)
        module.set_evaluation(out, **extra)
        loader = make_semseg_loader(val_set, args.batch_size, args.num_workers, shuffle=False)
    else:
        module.set_evaluation(val_set.evaluation_gt(), out, **extra)
        loader = make_loader(val_set, args.batch_size, args.num_workers, shuffle=False)
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    trainer = make_trainer(TrainerConfig(accelerator=args.accelerator, devices=devices, progress_bar=False),
                           out, fit=False)
    trainer.validate(module, loader, verbose=False)
    return 0
