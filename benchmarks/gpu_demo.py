"""The demo's comparison at a scale the CPU cannot reach, in one run of under 10 minutes on one H100/H200.

MCL, MoCo v2 and random init on the embedded synthetic scenes at paper-mode geometry: ResNet-50, 224 px crops,
cell 7, FPN 256, B = 128 per step, bf16; scenes of 256 px (2048 unlabeled, 256 labelled for the probes and
fine-tuning, 128 held out). Each init is probed (``mcl probe``: linear segmentation, RoI kNN / linear, frozen
detection) and fine-tuned (Mask R-CNN R50-FPN, FPN and heads 256 wide). The stages are ``mcl.demo``'s, with
this plan; the results land in ``--out`` and are copied to ``benchmarks/results/gpu-demo-<card>.{json,md,png}``.

Estimated device time on an H100 (from benchmarks/results: efficient MCL 760 img/s, MoCo ~2,500 img/s at
paper mode): MCL 400 steps x 128 = 51k images ~ 70 s plus loading; MoCo 400 steps ~ 25 s; each probe ~ 40 s;
each fine-tune 1,500 iterations at batch 8 ~ 90 s. The numbers it prints are the measurement, not these.

Usage (the device runner):  OUT=$OUT python3 benchmarks/gpu_demo.py --out /tmp/gpu-demo
CPU test of the wiring:     python3 benchmarks/gpu_demo.py --tiny --out /tmp/x   (seconds; figures mean nothing)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mcl.demo import PLANS, DemoPlan, render_table, run_demo  # noqa: E402

GPU = ("trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed")
PAPER_GEOMETRY = ("model.arch=resnet50", "data.crop_size=224", "model.cell_size=7", "model.fpn_channels=256",
                  "data.batch_size=128", "data.num_workers=8")
GPU_PLAN = DemoPlan(
    "gpu", pretrain_steps=400, finetune_iterations=1500, unlabeled=2048, train=256, val=128, scene_size=256,
    pretrain_overrides=(*GPU, *PAPER_GEOMETRY, "model.neck_hidden=2048", "model.predictor_hidden=2048",
                        "model.embed_dim=256", "optim.name=sgd", "optim.base_lr=0.24", "optim.weight_decay=1.0e-4",
                        "probe.every_steps=100"),
    moco_overrides=(*GPU, "model.arch=resnet50", "data.crop_size=224", "data.batch_size=128", "data.num_workers=8",
                    "model.head_hidden=2048", "model.queue_size=1024", "probe.every_steps=100"),
    finetune_overrides=("model.arch=resnet50", "model.fpn_channels=256", "model.anchor_sizes=[16,32,64,128,256]",
                        "model.rescale_init=unit_variance", "data.batch_size=8", "schedule.reference_batch=8",
                        "schedule.base_lr=0.04", "input.train_min_sizes=[224,256,288]", "input.test_min_size=256",
                        "input.max_size=512", "model.rpn_post_nms_top_n_train=300",
                        "model.box_batch_size_per_image=128", "data.num_workers=8", *GPU),
    probe_det_iterations=500,
    probe_args=("--image-size", "256", "--max-pixels", "100000", "--device", "cuda", "--fpn-channels", "256",
                "model.anchor_sizes=[16,32,64,128,256]", "data.batch_size=8", "schedule.reference_batch=8",
                "input.train_min_sizes=[256]", "input.test_min_size=256", "input.max_size=512", *GPU),
)


def card_name() -> str:
    import torch

    return torch.cuda.get_device_name(0).replace(" ", "-") if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu-demo")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny plan on the CPU: tests this script")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    plan = PLANS["tiny"] if args.tiny else GPU_PLAN
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("gpu_demo: no CUDA device; run it on the GPU machine, or --tiny to test it here", file=sys.stderr)
            return 2
    methods = ("mcl", "random") if args.tiny else ("mcl", "moco", "random")
    out = Path(args.out)
    summary = run_demo(out, plan, [0], methods, jobs=1)
    print("\n" + render_table(summary), flush=True)
    card = card_name()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    copies = []
    for suffix in ("json", "md", "png"):
        target = results / f"gpu-demo-{card}{'-tiny' if args.tiny else ''}.{suffix}"
        shutil.copyfile(out / f"results.{suffix}", target)
        copies.append(target)
    if os.environ.get("OUT"):
        for path in copies:
            shutil.copyfile(path, Path(os.environ["OUT"]) / path.name)
    print("copied: " + ", ".join(str(p) for p in copies), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
