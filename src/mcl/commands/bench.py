"""`mcl bench`: FLOPs, step time, memory and data-pipeline rates of MCL's faithful and efficient modes."""

from __future__ import annotations

import argparse
import shlex
import sys

NAME = "bench"
HELP = "Measure MCL's cost: FLOPs per step (faithful vs efficient), step time, memory, data-pipeline rate."
ACCEPTS_OVERRIDES = True     # key=value overrides apply to the timing recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and images (2 CPU cores: under 5 minutes)")
    parser.add_argument("--tiny", action="store_true",
                        help="shrink everything to ResNet-18 on 32 px (seconds; for tests, figures mean nothing)")
    parser.add_argument("--out", help="JSON file to write (a .md table is written beside it; default "
                                      "benchmarks/results/bench-<GPU name or hostname>.json)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when visible)")
    parser.add_argument("--modes", default="faithful,efficient",
                        help="compute modes, comma-separated (default faithful,efficient)")
    parser.add_argument("--recipe", help="timing recipe (YAML path or packaged name; default cpu_smoke on a CPU, "
                                         "paper_r50_in1k_100ep on a GPU)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="default: bf16 on CUDA, fp32 on a CPU")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory format for the timed models (default: on for CUDA)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per variant before timing")
    parser.add_argument("--repeats", type=int, help="timed interleaved rounds (at most)")
    parser.add_argument("--budget", type=float, help="seconds for the timing section (stops adding rounds)")
    parser.add_argument("--num-workers", type=int, help="loader workers for the data-wait loop (default: the recipe's)")
    parser.add_argument("--loader-steps", type=int, help="steps of the data-wait loop")
    parser.add_argument("--data", help="images (folder, COCO json or .txt) for the end-to-end JPEG rate "
                                       "(default: generated 500x375 JPEGs)")
    parser.add_argument("--skip-flops", action="store_true", help="no FLOP counting")
    parser.add_argument("--skip-timing", action="store_true", help="no step timing")
    parser.add_argument("--skip-data", action="store_true", help="no data-pipeline rates and no loader-wait loop")
    parser.add_argument("--skip-loader", action="store_true", help="no loader-wait loop")
    parser.add_argument("--no-references", action="store_true", help="time MCL only (no supervised / MoCo steps)")
    parser.add_argument("--no-floor", action="store_true",
                        help="do not time the body floor (the ResNet body passes alone, efficient's lower bound)")
    parser.add_argument("--compile", action="store_true",
                        help="also time each mode with torch.compile'd ResNet bodies ('<mode>+compile')")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="also time each mode with the backbone stages recomputed in backward ('<mode>+ckpt')")
    parser.add_argument("--no-lightly", action="store_true",
                        help="do not time lightly's MoCo v2 (the peer; timed when lightly is installed)")
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    parser.epilog = ("Timing-recipe keys can be overridden: section.key=value (e.g. data.batch_size=64). "
                     "See docs/benchmarks.md for what each figure means.")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mcl.bench import report
    from mcl.bench.suite import BenchOptions, run_suite
    from mcl.errors import UserError

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    opts = BenchOptions(
        quick=args.quick, tiny=args.tiny, device=args.device, modes=modes,
        flops=not args.skip_flops, timing=not args.skip_timing, data=not args.skip_data,
        loader=not (args.skip_data or args.skip_loader), references=not args.no_references, floor=not args.no_floor,
        recipe=args.recipe, overrides=list(extra), precision=args.precision, channels_last=args.channels_last,
        warmup=args.warmup, repeats=args.repeats, budget_s=args.budget, num_workers=args.num_workers,
        loader_steps=args.loader_steps, data_path=args.data, compile=args.compile,
        activation_checkpointing=args.activation_checkpointing, lightly=not args.no_lightly,
        command="mcl " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"]
        else "mcl bench",
    )
    if any(x is not None and x < 0 for x in (args.warmup, args.repeats, args.budget, args.num_workers)):
        raise UserError("--warmup, --repeats, --budget and --num-workers must be >= 0")
    log = (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))
    results = run_suite(opts, log)
    out = args.out or report.default_out_path(results["machine"]["device_name"], results["machine"]["hostname"],
                                              results["machine"]["device"] == "cuda")
    json_path, md_path = report.write(results, out)
    print(report.render(results), flush=True)
    print(f"wrote {json_path} and {md_path}", flush=True)
    return 0
