"""Where an MCL training step's time goes: device time by kernel kind and by model part, and how busy the device is.

Run from the repository root:

    python3 benchmarks/profile_step.py --device cuda --recipe paper_r50_in1k_100ep --precision bf16 --channels-last
    python3 benchmarks/profile_step.py --device cpu --tiny          # the same flow on a CPU, tiny sizes

For each variant (``--modes``, default faithful and efficient, plus supervised ResNet training at the same batch
and crop size as a reference) it runs ``--warmup`` untimed steps, then ``torch.profiler`` over ``--steps`` steps
of ``mcl.bench.timing``'s whole training step (forward, backward, clip, optimizer, EMA), and prints:

- wall time per step, and *device busy* = the union of all kernel intervals / wall time. A busy fraction well
  below 1 means the host (Python, kernel launches) and not the device sets the pace;
- device time per step by kernel kind (name patterns: convolution, matmul, batch norm, element-wise,
  reduction, copy / index / cat, multi-tensor optimizer, other);
- time per step by phase (forward, backward, clip, optimizer, EMA), from CUDA events at the phase boundaries
  in separate, unprofiled steps (see ``phase_times``);
- device time of the forward by model part (online ResNet body, FPN, neck, predictors, target encoder), from
  profiler ranges opened by forward hooks. Backward kernels cannot be attributed to a module.

On a CPU "device time" is the self CPU time of ``aten::`` operators (all threads) and busy is not reported.
``--json PATH`` writes everything printed.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mcl.bench import timing as T  # noqa: E402
from mcl.bench.suite import CPU_RECIPE, TINY_OVERRIDES, load_recipe  # noqa: E402

KINDS = [  # first match wins; patterns cover cuDNN / cuBLAS / CUTLASS kernel names and aten operator names
    ("multi-tensor (optimizer, clip, EMA)", r"multi_tensor|foreach"),
    ("batch norm", r"batch_norm|batchnorm|bn_fw|bn_bw|welford"),
    ("convolution", r"conv|cudnn|implicit_gemm|xmma_fprop|xmma_dgrad|xmma_wgrad|dgrad|wgrad|fprop|winograd"),
    ("matmul", r"gemm|matmul|aten::mm|aten::addmm|aten::bmm|cutlass|cublas|nvjet|sm90_xmma"),
    ("reduction", r"reduce|norm|sum|mean|softmax|log_softmax|nll|max_pool|avg_pool|cross_entropy"),
    ("copy / index / cat", r"copy|index|gather|scatter|cat|stack|fill|roi_align|upsample|interpolate|where"),
    ("element-wise", r"elementwise|vectorized|unrolled|relu|add|mul|div|sub|lerp|threshold|clamp|neg|exp|sqrt"),
]
PHASES = ("mcl/forward", "mcl/backward", "mcl/clip", "mcl/optimizer", "mcl/ema")


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


def annotate_parts(model: torch.nn.Module) -> list:
    """Forward hooks that open a ``record_function`` range per model part (innermost wins when nested).

    The FPN is run through its blocks (``top_down`` / ``output``), so its lateral and output convs are hooked.
    """
    def fpn_blocks(enc):
        return list(enc.backbone.fpn.inner_blocks) + list(enc.backbone.fpn.layer_blocks)

    parts = {}
    for who, enc in (("online", model.online), ("target", model.target)):
        parts[f"part/{who} body"] = [enc.backbone.body]
        parts[f"part/{who} FPN"] = fpn_blocks(enc)
        parts[f"part/{who} neck"] = [enc.neck]
    parts["part/predictors"] = list(model.predictors)
    handles = []
    for label, modules in parts.items():
        for module in modules:
            stack: list = []

            def pre(_m, _args, label=label, stack=stack):
                rf = record_function(label)
                rf.__enter__()
                stack.append(rf)

            def post(_m, _args, _out, stack=stack):
                stack.pop().__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def phased_mcl_run(model, optimizer, params, clip: float, crops, precision: str, device):
    """The same step as ``timing.mcl_step``'s, with a ``record_function`` range around each phase.

    ``run(mark)`` calls ``mark(name)`` as each phase starts and ``mark("end")`` after the last one.
    """
    counter = [0]

    def run(mark=lambda name: None) -> None:
        generator = torch.Generator().manual_seed(counter[0])
        counter[0] += 1
        mark("mcl/forward")
        with record_function("mcl/forward"), T.autocast(device, precision):
            out = model(crops, generator=generator, gather=False)
        mark("mcl/backward")
        with record_function("mcl/backward"):
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
        mark("mcl/clip")
        with record_function("mcl/clip"):
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
        mark("mcl/optimizer")
        with record_function("mcl/optimizer"):
            optimizer.step()
        mark("mcl/ema")
        with record_function("mcl/ema"):
            model.update_target(0.99)
        mark("end")

    return run


def phase_times(step: T.Step, device: torch.device, steps: int) -> dict[str, float]:
    """Median ms per phase over ``steps`` steps, between phase boundaries on the device's stream.

    CUDA: ``torch.cuda.Event`` records at each boundary (no synchronisation added, so a phase's time is the
    stream's time from its first to the next phase's first kernel, idle gaps included); CPU: wall clock.
    Backward kernels run from autograd's own thread, so only boundaries, not profiler ranges, can split them.
    """
    per_phase: dict[str, list[float]] = {}
    for _ in range(steps):
        marks: list[tuple[str, object]] = []
        if device.type == "cuda":
            def mark(name, marks=marks):
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                marks.append((name, event))
        else:
            def mark(name, marks=marks):
                marks.append((name, time.perf_counter()))
        step.run(mark)
        T.synchronize(device)
        for (name, a), (_, b) in zip(marks, marks[1:]):
            ms = a.elapsed_time(b) if device.type == "cuda" else (b - a) * 1e3
            per_phase.setdefault(name, []).append(ms)
    return {name: statistics.median(v) for name, v in per_phase.items()}


def build_mcl(cfg, mode: str, crops, device, precision: str, channels_last: bool) -> T.Step:
    """``timing.mcl_step``'s model and optimizer (``timing.mcl_training``), run with phase ranges and part hooks."""
    model, optimizer, params, clip = T.mcl_training(cfg, mode, device, channels_last)
    annotate_parts(model)
    return T.Step(mode, phased_mcl_run(model, optimizer, params, clip, crops, precision, device),
                  cfg.data.batch_size, {"phased": True})


def union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -float("inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def profile_variant(step: T.Step, device: torch.device, warmup: int, steps: int) -> dict:
    for _ in range(warmup):
        step.run()
    T.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step.run()
        T.synchronize(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    events = prof.events()
    ranges = [e for e in events if e.name.startswith(("mcl/", "part/"))]
    if device.type == "cuda":
        # kernels on the device; annotations there (gpu_user_annotation) carry our range names
        on_device = [e for e in events if e.device_type == DeviceType.CUDA]
        annotations = [e for e in on_device if e.name.startswith(("mcl/", "part/"))]
        kernels = [(e.name, e.time_range.start, e.time_range.end) for e in on_device
                   if not e.name.startswith(("mcl/", "part/", "ProfilerStep"))]
        spans = [(e.name, e.time_range.start, e.time_range.end) for e in annotations]
    else:
        kernels = [(e.name, e.time_range.start, e.time_range.start + e.self_cpu_time_total) for e in events
                   if e.name.startswith("aten::") and e.self_cpu_time_total > 0]
        spans = [(e.name, e.time_range.start, e.time_range.end) for e in ranges]
    by_kind: dict[str, float] = {}
    by_part: dict[str, float] = {}
    spans.sort(key=lambda s: s[1])
    starts = [s[1] for s in spans]
    for name, a, b in kernels:
        us = b - a
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + us
        # the innermost enclosing range of each family: the latest-starting span that contains the kernel
        phase = part = None
        for i in range(bisect.bisect_right(starts, a) - 1, -1, -1):
            label, sa, sb = spans[i]
            if sa <= a and b <= sb + 1:
                if label.startswith("part/") and part is None:
                    part = label
                if label.startswith("mcl/") and phase is None:
                    phase = label
            if phase is not None:
                break
        if phase == "mcl/forward":
            key = part or "part/rest of the forward (montages, loss)"
            by_part[key] = by_part.get(key, 0.0) + us
    busy_us = union_us([(a, b) for _, a, b in kernels]) if device.type == "cuda" else None
    per = 1e-3 / steps   # us -> ms per step
    by_phase = phase_times(step, device, steps) if step.info.get("phased") else {}
    return {"wall_ms_per_step": wall_us * per, "device_ms_per_step": sum(by_kind.values()) * per,
            "busy_fraction": busy_us / wall_us if busy_us is not None else None,
            "kernels_per_step": len(kernels) / steps,
            "by_kind_ms": {k: v * per for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "by_phase_ms": dict(sorted(by_phase.items(), key=lambda kv: -kv[1])),
            "forward_by_part_ms": {k: v * per for k, v in sorted(by_part.items(), key=lambda kv: -kv[1])}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--recipe", default=None, help="default: paper_r50_in1k_100ep on CUDA, cpu_smoke on a CPU")
    parser.add_argument("--tiny", action="store_true", help="the bench's tiny sizes (tests)")
    parser.add_argument("--modes", default="faithful,efficient")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip the supervised ResNet step")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    recipe = args.recipe or ("paper_r50_in1k_100ep" if device.type == "cuda" else CPU_RECIPE)
    cfg = load_recipe(recipe, TINY_OVERRIDES if args.tiny else [])
    crops = T.random_crops(cfg, device)
    if args.channels_last:
        torch.backends.cudnn.benchmark = device.type == "cuda"
    variants = [build_mcl(cfg, m, crops, device, precision, args.channels_last) for m in args.modes.split(",")]
    if not args.no_reference:
        variants.append(T.supervised_step(cfg.model.arch, cfg.data.batch_size, cfg.data.crop_size, device,
                                          precision, args.channels_last))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"profile: {recipe} ({cfg.model.arch}, B={cfg.data.batch_size}, {cfg.data.crop_size}px), {name}, "
          f"{precision}{', channels_last' if args.channels_last else ''}, {args.steps} profiled steps after "
          f"{args.warmup} warm-up; ms per step")
    results = {}
    for step in variants:
        r = results[step.name] = profile_variant(step, device, args.warmup, args.steps)
        busy = f", device busy {r['busy_fraction']:.0%}" if r["busy_fraction"] is not None else ""
        print(f"\n{step.name}: wall {r['wall_ms_per_step']:.1f} ms, device {r['device_ms_per_step']:.1f} ms{busy}, "
              f"{r['kernels_per_step']:.0f} kernels")
        for title, key in (("by kernel kind", "by_kind_ms"), ("by phase (boundaries, unprofiled steps)", "by_phase_ms"),
                           ("forward by model part", "forward_by_part_ms")):
            if r[key]:
                print(f"  {title}: " + ", ".join(
                    f"{k.split('/', 1)[-1] if k.startswith(('mcl/', 'part/')) else k} {v:.1f}"
                    for k, v in r[key].items()))
    mcl_modes = [v.name for v in variants if v.name in ("faithful", "efficient")]
    if len(mcl_modes) == 2:
        f, e = results["faithful"], results["efficient"]
        print(f"\nefficient / faithful: wall {e['wall_ms_per_step'] / f['wall_ms_per_step']:.3f}, "
              f"device time {e['device_ms_per_step'] / f['device_ms_per_step']:.3f}")
        kinds = sorted(set(f["by_kind_ms"]) | set(e["by_kind_ms"]), key=lambda k: -f["by_kind_ms"].get(k, 0))
        print("  saved by kind (faithful - efficient ms): " + ", ".join(
            f"{k} {f['by_kind_ms'].get(k, 0) - e['by_kind_ms'].get(k, 0):.1f}" for k in kinds))
    if args.json:
        Path(args.json).write_text(json.dumps({"recipe": recipe, "device": name, "precision": precision,
                                               "channels_last": args.channels_last, "steps": args.steps,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
