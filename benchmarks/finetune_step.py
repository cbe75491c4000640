"""Seconds per Mask R-CNN fine-tuning step at several FPN widths, measured in one run on the same scenes.

Run from the repository root: ``python3 benchmarks/finetune_step.py [--widths 256 128 64] [--threads 2]``.
The demo's detector (ResNet-18 FPN, 5 scene-sized anchors, 300/100 RPN proposals, 32 RoIs per image,
batch 2 at 128 px, masks on); forward + backward, median of ``--repeats`` after one warm-up step.
The FPN width sets every head conv too (``model.fpn_channels``), which is what a CPU step mostly pays for.
"""

import argparse
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, "src")
from mcl.data.synthetic import write_coco_scenes  # noqa: E402
from mcl.transfer.coco_data import CocoDetection, collate  # noqa: E402
from mcl.transfer.detection import build_detector  # noqa: E402


def step_seconds(width: int, images, targets, repeats: int) -> float:
    torch.manual_seed(0)
    model = build_detector("resnet18", 8, True, train_min_sizes=(128,), test_min_size=128, max_size=256,
                           anchor_sizes=[8, 16, 32, 64, 128], fpn_channels=width, rpn_pre_nms_top_n_train=300,
                           rpn_post_nms_top_n_train=100, box_batch_size_per_image=32)
    model.train()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        sum(model(images, targets).values()).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        json_path = write_coco_scenes(tmp, 2, seed=0, size=128, split_name="train")
        images, targets = collate([item for item in CocoDetection(json_path, tmp, train=True, flip_prob=0.0)])
        seconds = {w: step_seconds(w, images, targets, args.repeats) for w in args.widths}
    base = seconds[args.widths[0]]
    print(f"fine-tuning step, {args.threads} threads, median of {args.repeats}:")
    for width, s in seconds.items():
        print(f"  fpn_channels={width:4d}: {s:.3f} s  ({s / base:.2f} x width {args.widths[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
