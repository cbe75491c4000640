"""`mcl finetune`: a detector (``model.detector``: Mask R-CNN in torchvision's v2 layout by default, Faster R-CNN,
RetinaNet or Keypoint R-CNN) on a COCO-format set, scored with pycocotools; with
``--task semseg`` (or the recipe's ``task: semseg``) a Semantic FPN over the same backbone, scored by mIoU
(``mcl.transfer.semseg``)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

NAME = "finetune"
HELP = ("Fine-tune Mask R-CNN on a COCO-format set and print COCO AP, or with --task semseg a Semantic FPN "
        "and its mIoU (default data: synthetic scenes).")
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcl.commands._coco_split import add_split_arguments

    parser.add_argument("--config", help="recipe YAML (a path, or a packaged name: finetune_cpu_smoke, "
                                         "finetune_coco_1x); default: the paper's 1x transfer setting")
    parser.add_argument("--task", choices=("detection", "semseg"),
                        help="detection (Mask R-CNN, COCO AP; the default) or semseg (Semantic FPN head over the "
                             "same ResNet + FPN, trained on the instance masks as class maps, mIoU); recipe key task")
    parser.add_argument("--init", help="initial weights: an mcl checkpoint, an exported or torchvision state dict, "
                                       "'torchvision' (local ImageNet file) or 'random'")
    add_split_arguments(parser)
    parser.add_argument("--out", help="run folder for checkpoints, logs, evaluation and detector.pt")
    parser.add_argument("--schedule", type=float, help="schedule length in units of 1x (2 = 2x)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.epilog = "Any config key can be overridden: section.key=value or --section.key value."


def resolve(args: argparse.Namespace, extra: list[str]):
    """The config: recipe defaults <- YAML <- overrides <- the named flags."""
    from mcl.config import load_config, merge, parse_overrides
    from mcl.transfer.finetune_config import FinetuneConfig

    flags = {("model", "init"): args.init, ("data", "train_json"): args.train_json,
             ("data", "train_images"): args.train_images, ("data", "val_json"): args.val_json,
             ("data", "val_images"): args.val_images, ("trainer", "out"): args.out,
             ("schedule", "factor"): args.schedule}
    cli: dict = {"task": args.task} if getattr(args, "task", None) else {}
    for (section, key), value in flags.items():
        if value is not None:
            cli.setdefault(section, {})[key] = value
    return load_config(FinetuneConfig, args.config, merge(parse_overrides(extra), cli))


def synthetic_data(cfg, run_dir: Path) -> dict[str, str]:
    """Train and val synthetic scenes (seeds ``s`` and ``s + 1``) under ``RUN_DIR/data``, written once.

    Rank 0 writes; other processes (started by a cluster launcher at the same time) wait for the json.
    """
    from mcl.data.synthetic import write_coco_scenes
    from mcl.engine.fit import is_rank_zero

    d = cfg.data
    root = run_dir / "data"
    paths = {}
    for split, num, seed in (("train", d.synthetic_train_num, d.synthetic_seed),
                             ("val", d.synthetic_val_num, d.synthetic_seed + 1)):
        json_path = root / f"{split}.json"
        if is_rank_zero() and not json_path.is_file():
            print(f"writing {num} synthetic {split} scenes ({d.synthetic_size}px, seed {seed}) to {root}", flush=True)
            write_coco_scenes(root, num, seed, d.synthetic_size, split_name=split, preset=d.synthetic_preset)
        for _ in range(600):
            if json_path.is_file():
                break
            time.sleep(1)
        paths[f"{split}_json"], paths[f"{split}_images"] = str(json_path), str(root)
    return paths


def resume_checkpoint(run_dir: Path) -> Path:
    """``last.ckpt``, else the newest step checkpoint of the run (writes are atomic, so both are whole)."""
    from mcl.errors import UserError

    candidates = sorted(run_dir.glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime))
    if not candidates:
        raise UserError(f"--resume: no checkpoint (*.ckpt) in {run_dir} (run without --resume to start fresh)")
    return candidates[-1]


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import lightning as L

    from mcl.config import to_dict
    from mcl.engine.fit import is_rank_zero
    from mcl.errors import UserError
    from mcl.transfer.coco_data import CocoDetection, make_loader
    from mcl.transfer.detection import DetectionFinetuneModule, load_initial_weights
    from mcl.transfer.evaluate import format_table

    say = print if is_rank_zero() else (lambda *a, **k: None)  # one copy of each line under DDP
    cfg = resolve(args, extra)
    run_dir = Path(cfg.trainer.out)
    ckpt_path = None
    if args.resume:
        ckpt_path = resume_checkpoint(run_dir)
        say(f"resuming from {ckpt_path}", flush=True)
    elif run_dir.is_dir() and any(run_dir.glob("*.ckpt")):
        raise UserError(f"{run_dir} already holds checkpoints: add --resume to continue that run, "
                        f"or choose a new --out (nothing was overwritten)")
    L.seed_everything(cfg.trainer.seed, verbose=False)
    if cfg.data.synthetic:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **synthetic_data(cfg, run_dir)))
    if cfg.task == "semseg":
        return run_semseg(cfg, run_dir, ckpt_path, say)
    d, kind = cfg.data, cfg.model.detector
    if kind != "maskrcnn" and cfg.model.masks is True:
        raise UserError(f"model.masks = true but model.detector = {kind} has no mask head: "
                        f"use model.detector=maskrcnn or model.masks=auto")
    masks = False if kind != "maskrcnn" else None if cfg.model.masks == "auto" else cfg.model.masks
    keypoints = kind == "keypointrcnn"
    train_set = CocoDetection(d.train_json, d.train_images, train=True, with_masks=masks, flip_prob=d.flip_prob,
                              skip_missing_images=d.skip_missing_images, with_keypoints=keypoints)
    val_set = CocoDetection(d.val_json, d.val_images, train=False, label_map=train_set.label_map,
                            with_masks=train_set.with_masks, skip_missing_images=d.skip_missing_images,
                            with_keypoints=keypoints)
    val_gt = val_set.evaluation_gt()
    for line in train_set.report.lines() + val_set.report.lines():
        say(line, flush=True)
    labels = train_set.label_map
    title = {"maskrcnn": "Mask R-CNN" if train_set.with_masks else "Faster R-CNN", "fasterrcnn": "Faster R-CNN",
             "retinanet": "RetinaNet", "keypointrcnn": f"Keypoint R-CNN ({len(train_set.keypoint_names)} keypoints)"}
    say(f"{title[kind]} {cfg.model.arch}: {len(labels.category_ids)} "
          f"categories, {len(train_set)} train / {len(val_set)} val images", flush=True)

    module = DetectionFinetuneModule(to_dict(cfg), list(labels.category_ids), list(labels.names), train_set.with_masks,
                                     num_keypoints=len(train_set.keypoint_names))
    if ckpt_path is None:
        report = load_initial_weights(module.detector, cfg.model.init, cfg.model.init_parts, cfg.model.rescale_init,
                                      kind=kind)
        say(report, flush=True)
    module.set_evaluation(val_gt, run_dir / "eval", gt_json=str(d.val_json), val_images=str(d.val_images))
    trainer = fit_and_evaluate(cfg, module, run_dir, ckpt_path,
                               make_loader(train_set, d.batch_size, d.num_workers, shuffle=True),
                               make_loader(val_set, d.batch_size, d.num_workers, shuffle=False), say)
    if trainer.is_global_zero:
        detector = module.save(run_dir / "detector.pt")
        print(f"\nfinal COCO AP on {d.val_json} (step {trainer.global_step}):\n{format_table(module.last_results)}\n"
              f"detector: {detector}  (score it again: mcl eval {detector} --val-json J --val-images DIR)\n"
              f"results: {run_dir / 'eval' / 'results.json'}", flush=True)
    return 0


def run_semseg(cfg, run_dir: Path, ckpt_path: Path | None, say) -> int:
    """The ``--task semseg`` run: data, init report, schedule, training, mIoU table, ``semseg.pt``."""
    from mcl.config import to_dict
    from mcl.transfer.coco_data import CocoDetection
    from mcl.transfer.semseg import (
        SemsegDataset,
        SemsegFinetuneModule,
        format_semseg_table,
        load_semseg_init,
        make_semseg_loader,
    )

    d, m = cfg.data, cfg.model
    with_masks = m.masks is True   # true: annotations need a segmentation; auto/false: box-only ones are filled
    train_coco = CocoDetection(d.train_json, d.train_images, train=True, with_masks=with_masks, flip_prob=0.0,
                               skip_missing_images=d.skip_missing_images)
    val_coco = CocoDetection(d.val_json, d.val_images, train=False, label_map=train_coco.label_map,
                             with_masks=with_masks, skip_missing_images=d.skip_missing_images)
    size = cfg.input.test_min_size
    boxes_only = m.masks is False
    train_set = SemsegDataset(train_coco, size, train=True, flip_prob=d.flip_prob, boxes_only=boxes_only)
    val_set = SemsegDataset(val_coco, size, train=False, boxes_only=boxes_only)
    for line in train_set.report_lines() + val_set.report_lines():
        say(line, flush=True)
    labels = train_coco.label_map
    say(f"Semantic FPN {m.arch} (FPN {m.fpn_channels}, head {m.semseg_head_channels} {m.semseg_head_norm.upper()}): "
        f"{labels.num_classes} classes (background + {len(labels.category_ids)} categories), {len(train_set)} train / "
        f"{len(val_set)} val images, resized to {size}x{size} (input.test_min_size); overlapping instances: the "
        f"smaller on top; scored at the original size", flush=True)

    module = SemsegFinetuneModule(to_dict(cfg), list(labels.category_ids), list(labels.names))
    if ckpt_path is None:
        say(load_semseg_init(module.model, m.init, m.init_parts, m.rescale_init), flush=True)
    module.set_evaluation(run_dir / "eval", gt_json=str(d.val_json), val_images=str(d.val_images))
    trainer = fit_and_evaluate(cfg, module, run_dir, ckpt_path,
                               make_semseg_loader(train_set, d.batch_size, d.num_workers, shuffle=True),
                               make_semseg_loader(val_set, d.batch_size, d.num_workers, shuffle=False), say)
    if trainer.is_global_zero:
        model = module.save(run_dir / "semseg.pt")
        print(f"\nfinal semantic segmentation on {d.val_json} (step {trainer.global_step}, percent):\n"
              f"{format_semseg_table(module.last_results)}\n"
              f"model: {model}\nresults: {run_dir / 'eval' / 'results.json'}", flush=True)
    return 0


def fit_and_evaluate(cfg, module, run_dir: Path, ckpt_path: Path | None, train_loader, val_loader, say):
    """What every task's run does once its data and module are built: the schedule, the Trainer, the resolved
    config beside the run, training (resumed from ``ckpt_path``), a last evaluation at the final step."""
    from mcl.config import save_yaml
    from mcl.engine.fit import is_rank_zero
    from mcl.transfer.detection import expected_world_size, make_trainer

    plan = module.plan(expected_world_size(cfg.trainer), cfg.trainer.accumulate_grad_batches)
    say(plan.describe(), flush=True)
    every = cfg.trainer.eval_every_steps or plan.iterations
    trainer = make_trainer(cfg.trainer, run_dir, max_steps=plan.iterations,
                           val_every_batches=every * cfg.trainer.accumulate_grad_batches)
    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if module.last_eval_step != trainer.global_step:
        trainer.validate(module, val_loader, verbose=False)
    return trainer
