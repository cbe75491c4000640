"""What would make the demo's CPU fine-tuning cheaper: seconds per image under each lever, and how stages share cores.

Run from the repository root: ``python3 benchmarks/finetune_levers.py [--repeats 6] [--steps 16] [--loader]``
(``--skip-levers``, ``--skip-sharing``: leave sections 1, 2 out).

1. **Levers inside one step** (one thread): the demo's Mask R-CNN R18-FPN 64 (5 scene-sized anchors, 300 / 100 RPN
   proposals, 32 RoIs per image, scales 112-144 on 128 px scenes, masks on), forward + backward, against the same
   model in ``channels_last`` memory, with 16 RoIs per image, with 50 RPN proposals, and at batch 4. The variants
   take turns within each repeat (median over repeats after the first), so the machine's noise hits them alike.
   ``--profile``: also where the demo step's time goes, ``torch.profiler``'s operators by self CPU time.
2. **How stages share the cores**: the default step in 1 process with 1 thread, 1 process with 2 threads, 2 and 3
   one-thread processes at once (seconds per image of each process, and the machine's images per second).
3. ``--loader``: **the whole fine-tune command** (``mcl finetune`` with the quick demo's arguments, Lightning, one
   thread) with its data loader in one worker process (``finetune_cpu_smoke``'s ``data.num_workers=1``) against in
   the main process (``data.num_workers=0``): seconds per iteration from the logged steps' wall times (the first
   logged step, start-up and the final evaluation left out), the two taking turns.

The demo's 3 fine-tunes are ``3 x iterations x 2 images x s_per_image`` of one-core work, whatever the schedule.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, "src")
from mcl.data.synthetic import write_coco_scenes  # noqa: E402
from mcl.transfer.coco_data import CocoDetection, collate  # noqa: E402
from mcl.transfer.detection import build_detector  # noqa: E402

DEMO = dict(rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, box_batch_size_per_image=32)
VARIANTS = {    # name: (detector kwargs over DEMO, channels_last, images per step)
    "demo (batch 2)": ({}, False, 2),
    "channels_last": ({}, True, 2),
    "16 RoIs / image": ({"box_batch_size_per_image": 16}, False, 2),
    "50 RPN proposals": ({"rpn_post_nms_top_n_train": 50}, False, 2),
    "batch 4": ({}, False, 4),
}


def scenes(num: int) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        json_path = write_coco_scenes(tmp, num, seed=0, size=128, split_name="train")
        return list(CocoDetection(json_path, tmp, train=True, flip_prob=0.0))


def detector(overrides: dict, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_detector("resnet18", 8, True, train_min_sizes=(112, 128, 144), test_min_size=128, max_size=256,
                           anchor_sizes=[8, 16, 32, 64, 128], fpn_channels=64, **{**DEMO, **overrides})
    return (model.to(memory_format=torch.channels_last) if channels_last else model).train()


def seconds_per_image(model, items, batch: int, images: int) -> float:
    """Forward + backward over ``images`` images in steps of ``batch``; seconds per image."""
    start = time.perf_counter()
    for i in range(images // batch):
        first = (i * batch) % (len(items) - batch + 1)
        imgs, targets = collate(items[first:first + batch])
        sum(model(imgs, targets).values()).backward()
        model.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / images


def levers(repeats: int, images: int) -> None:
    torch.set_num_threads(1)
    items = scenes(16)
    models = {name: (detector(kw, cl), batch) for name, (kw, cl, batch) in VARIANTS.items()}
    times = {name: [] for name in models}
    for _ in range(repeats + 1):
        for name, (model, batch) in models.items():
            times[name].append(seconds_per_image(model, items, batch, images))
    base = statistics.median(times["demo (batch 2)"][1:])
    print(f"1. levers, 1 thread, seconds per image (median of {repeats} repeats of {images} images, turns taken):")
    for name, values in times.items():
        s = statistics.median(values[1:])
        print(f"  {name:18s} {s:.3f} s  ({s / base:.2f} x the demo's)")


def profile(images: int) -> None:
    """The demo step's operators by share of self CPU time (1 thread, ``images`` images after a warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(1)
    items = scenes(8)
    model = detector({}, False)
    seconds_per_image(model, items, 2, 4)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds_per_image(model, items, 2, images)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    print(f"profile of the demo step, 1 thread, {images} images: share of self CPU time")
    for e in ops[:6]:
        print(f"  {e.key:40s} {100 * e.self_cpu_time_total / total:5.1f}%")


def worker(threads: int, images: int) -> None:
    torch.set_num_threads(threads)
    items = scenes(8)
    model = detector({}, False)
    seconds_per_image(model, items, 2, 4)                       # warm-up
    print(f"{seconds_per_image(model, items, 2, images):.4f}", flush=True)


def sharing(images: int) -> None:
    def run(processes: int, threads: int) -> list[float]:
        cmd = [sys.executable, __file__, "--worker", str(threads), "--steps", str(images // 2)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    print(f"2. sharing the cores, the demo's step, seconds per image in each process ({images} images each):")
    for processes, threads in ((1, 1), (1, 2), (2, 1), (3, 1)):
        values = run(processes, threads)
        rate = sum(1 / v for v in values)
        print(f"  {processes} process(es) x {threads} thread(s): {', '.join(f'{v:.3f}' for v in values)} s; "
              f"{rate:.2f} images/s in all")


def logged_step_seconds(run: Path) -> float:
    """Seconds per iteration between the second and the last logged training step of a fine-tune ``run``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "logs"))
    events.Reload()
    loss = events.Scalars("train/loss")
    return (loss[-1].wall_time - loss[1].wall_time) / (loss[-1].step - loss[1].step)


def loader(repeats: int, iterations: int) -> None:
    from mcl.demo import PLANS

    print(f"3. the quick demo's fine-tune command, 1 thread, {iterations} iterations, seconds per iteration "
          f"(median of {repeats} runs each, turns taken):")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="src")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = write_coco_scenes(root / "scenes", 64, seed=0, size=128, split_name="train")
        val = write_coco_scenes(root / "scenes", 8, seed=1, size=128, split_name="val")
        times = {1: [], 0: []}
        for r in range(repeats):
            for workers in times:
                out = root / f"run{r}_{workers}"
                cmd = [sys.executable, "-m", "mcl.cli", "finetune", "--config", "finetune_cpu_smoke", "--init",
                       "random", "--out", str(out), "--train-json", str(train), "--train-images", str(root / "scenes"),
                       "--val-json", str(val), "--val-images", str(root / "scenes"),
                       f"schedule.iterations_1x={iterations}", "schedule.reference_batch=2", "trainer.seed=0",
                       "trainer.progress_bar=false", "trainer.log_every_steps=10",
                       *PLANS["quick"].finetune_overrides, f"data.num_workers={workers}"]
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times[workers].append(logged_step_seconds(out))
                shutil.rmtree(out)
        base = statistics.median(times[1])
        for workers, values in times.items():
            where = "one worker process" if workers else "the main process"
            s = statistics.median(values)
            print(f"  loader in {where:18s} {s:.3f} s ({', '.join(f'{v:.3f}' for v in values)}; "
                  f"{s / base:.2f} x one worker's)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=16, help="steps of 2 images per measurement")
    parser.add_argument("--skip-levers", action="store_true")
    parser.add_argument("--skip-sharing", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also profile the demo step by operator")
    parser.add_argument("--loader", action="store_true", help="also time the whole fine-tune command's loader")
    parser.add_argument("--loader-iterations", type=int, default=160)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, 2 * args.steps)
        return 0
    if not args.skip_levers:
        levers(args.repeats, 2 * args.steps)
    if args.profile:
        profile(2 * args.steps)
    if not args.skip_sharing:
        sharing(2 * args.steps)
    if args.loader:
        loader(args.repeats, args.loader_iterations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
