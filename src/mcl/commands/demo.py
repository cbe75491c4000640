"""`mcl demo`: MCL vs MoCo v2 vs random init, transferred to Mask R-CNN, on the embedded synthetic scenes."""

from __future__ import annotations

import argparse
from pathlib import Path

from mcl.errors import UserError

NAME = "demo"
HELP = ("The paper's comparison at toy scale: pretrain MCL and MoCo v2 (equal epochs), probe the frozen features "
        "of each and of random init, fine-tune Mask R-CNN from each, probe random init's fine-tuned detector as the "
        "positive control, print and save the tables and a bar chart.")
ACCEPTS_OVERRIDES = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo); stages already "
                                                           "complete in it are reused")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="300 pretraining steps, 3,000 fine-tuning iterations, "
                      "no frozen-detection probe (40-55 min on 2 cores)")
    size.add_argument("--tiny", action="store_true", help="seconds, for tests: the figures mean nothing")
    parser.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds and report mean ± std "
                                                             "(default 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--methods", default="mcl,moco,random",
                        help="initialisations to compare, comma-separated (default mcl,moco,random); add moco_time "
                             "for MoCo v2 pretrained for MCL's wall-clock (equal time, besides equal epochs), and "
                             "supervised for supervised montage pretraining on the scenes' labels")
    parser.add_argument("--jobs", type=int, default=None,
                        help="stages run side by side, sharing the CPU cores (default: 2 when there are 2 or more "
                             "cores, else 1)")
    parser.epilog = "What each stage runs, and the figures measured on 2 CPU cores: docs/results.md."


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.demo import PLANS, default_jobs, parse_methods, render_table, run_demo, seeds_from

    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "full"]
    seeds = seeds_from(args.seeds, args.first_seed)
    methods = parse_methods(args.methods)
    out = Path(args.out)
    jobs = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give at least 1")
    print(f"mcl demo ({plan.name}): {', '.join(methods)}; seeds {seeds}; pretraining {plan.pretrain_steps} steps "
          f"x 32 images each, fine-tuning {plan.finetune_iterations} iterations; {jobs} stage(s) at a time; "
          f"folder {out}", flush=True)
    summary = run_demo(out, plan, seeds, methods, jobs=jobs)
    print("\n" + render_table(summary), flush=True)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'} and {out / 'results.png'} (this call "
          f"{summary['elapsed_s'] / 60:.1f} min; pretraining, probe and fine-tuning stages "
          f"{summary['stage_seconds_total'] / 60:.1f} min in all, reused ones included)", flush=True)
    return 0
