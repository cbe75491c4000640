"""Runs the bench sections for ``mcl bench`` and collects their figures in one results dict (the JSON).

Settings:
- FLOPs: paper mode (``paper_r50_in1k_100ep``: ResNet-50, B = 128 per device, 224 px, ratios
  1, 2, 4, 8, repeats 1, 1, 1, 2) and the CPU recipe (``cpu_smoke``), faithful and efficient; the
  references (supervised ResNet-50 and MoCo v2 at 224) and the figures of docs/method.md, "Compute modes".
- Step time: the *timing recipe*: ``cpu_smoke`` on a CPU, paper mode on a GPU (or ``--recipe``),
  plus supervised and MoCo v2 steps of the same backbone, batch and crop size.
- Data: per-core rates at 224 and at the timing recipe's crop size, for the per-image path and for
  ``data.augment_on=device`` (loader CPU per image, and the device's time for a batch of augmentation);
  the loader wait of the timing recipe at its own ``data.num_workers``.
``tiny`` shrinks every setting to ResNet-18 on 32 px crops (for tests; its figures mean nothing).
"""

from __future__ import annotations

import copy
import gc
import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PAPER_RECIPE = "paper_r50_in1k_100ep"
CPU_RECIPE = "cpu_smoke"
PAPER_TARGET_RATIO = 0.45          # the target: efficient <= 0.45 x faithful FLOPs at paper mode
TINY_OVERRIDES = [   # two levels (ratios 1, 2) so that B = 8 tiles; ResNet-18 on 32 px crops (cell 1)
    "data.batch_size=8", "data.crop_size=32", "data.num_workers=0", "data.synthetic_num=32",
    "data.synthetic_size=48", "montage.ratios=[1,2]", "montage.repeats=[1,1]", "loss.level_weights=[0.5,0.5]",
    "model.arch=resnet18", "model.cell_size=1", "model.fpn_channels=32", "model.neck_hidden=32",
    "model.predictor_hidden=32", "model.embed_dim=16", "model.sync_bn=false",
]


@dataclass
class BenchOptions:
    quick: bool = False
    tiny: bool = False
    device: str = "auto"
    modes: list[str] = field(default_factory=lambda: ["faithful", "efficient"])
    flops: bool = True
    timing: bool = True
    data: bool = True
    loader: bool = True
    references: bool = True
    floor: bool = True                   # time the "body floor" (ResNet body passes only) beside efficient
    recipe: str | None = None            # timing recipe (name or YAML); default: by device
    overrides: list[str] = field(default_factory=list)
    precision: str | None = None         # fp32 | bf16; default: bf16 on CUDA, fp32 on CPU
    channels_last: bool | None = None    # default: on for CUDA
    warmup: int | None = None
    repeats: int | None = None
    budget_s: float | None = None        # timing section's wall-clock budget (repeats stop early)
    compile: bool = False                # also time "<mode>+compile" (torch.compile'd ResNet bodies)
    activation_checkpointing: bool = False   # also time "<mode>+ckpt" (backbone stages recomputed)
    lightly: bool = True                 # time lightly's MoCo v2 beside ours when lightly is installed
    num_workers: int | None = None       # loader-wait workers (default: the recipe's)
    loader_steps: int | None = None
    data_path: str | None = None         # JPEG folder / list for the end-to-end rate
    command: str = "mcl bench"


def resolve_device(name: str) -> torch.device:
    from mcl.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch (use --device cpu)")
    return device


def load_recipe(name: str, overrides: list[str] | None = None):
    from mcl.config import load_config
    from mcl.methods.mcl import MCLConfig

    return load_config(MCLConfig, name, list(overrides or []))


def recipe_label(cfg, name: str) -> str:
    return (f"{name}: {cfg.model.arch}, B={cfg.data.batch_size}, {cfg.data.crop_size}px, "
            f"ratios {','.join(map(str, cfg.montage.ratios))}")


def machine_info(device: torch.device) -> dict:
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    info = {
        "hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "device": device.type,
        "cpu": cpu, "cpu_count": cpus, "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    else:
        info["device_name"] = f"CPU ({cpu}, {cpus} cores)"
    return info


# ---------------------------------------------------------------------------------------------- sections

def flops_section(opts: BenchOptions, log: Callable[[str], None]) -> dict:
    from mcl.bench import flops as F

    settings: dict[str, dict] = {}
    if opts.tiny:
        recipes = [("tiny", CPU_RECIPE, TINY_OVERRIDES, None)]
    else:
        recipes = [("paper", PAPER_RECIPE, [], PAPER_TARGET_RATIO), ("cpu_recipe", CPU_RECIPE, [], None)]
    for key, name, overrides, target in recipes:
        cfg = load_recipe(name, overrides)
        entry = {"recipe": name, "label": "tiny (tests only)" if opts.tiny else recipe_label(cfg, name),
                 "arch": cfg.model.arch, "batch_size": cfg.data.batch_size, "crop_size": cfg.data.crop_size,
                 "ratios": cfg.montage.ratios, "repeats": cfg.montage.repeats, "modes": {}}
        if target:
            entry["target_ratio"] = target
        for mode in opts.modes:
            t0 = time.perf_counter()
            count = F.mcl_step_flops(cfg, mode)
            entry["modes"][mode] = count.as_dict()
            log(f"  FLOPs {key} {mode}: {count.total / 1e12:.3f} TFLOP/step, {count.per_image / 1e9:.1f} GFLOP "
                f"per unique image ({time.perf_counter() - t0:.1f} s)")
        if "faithful" in entry["modes"] and "efficient" in entry["modes"]:
            entry["efficient_over_faithful"] = (entry["modes"]["efficient"]["total_flops"]
                                                / entry["modes"]["faithful"]["total_flops"])
        settings[key] = entry
    out = {"method": "torch.utils.flop_counter.FlopCounterMode on the meta device: 2 x multiply-adds of "
                     "conv/linear/matmul, forward + backward; BN, activations, pooling, optimizer, EMA not counted",
           "settings": settings, "references": references_flops(opts, log), "checks": {}}
    if not opts.tiny:
        out["checks"] = spec_checks(settings.get("paper"))
    return out


def references_flops(opts: BenchOptions, log: Callable[[str], None]) -> dict:
    from mcl.bench import flops as F

    arch, size = ("resnet18", 32) if opts.tiny else ("resnet50", 224)
    refs = {}
    try:
        sup = F.supervised_step_flops(arch, size, batch_size=2)
        refs["supervised"] = dict(sup.as_dict(), label=f"supervised {arch} {size}px (fwd+bwd)")
        log(f"  FLOPs supervised {arch}: {sup.per_image / 1e9:.2f} GFLOP per image")
    except Exception as exc:   # a reference must not sink the MCL figures
        refs["supervised"] = {"label": f"supervised {arch}", "error": f"{type(exc).__name__}: {exc}"}
        sup = None
    try:
        moco = F.moco_step_flops(arch, size, batch_size=8 if opts.tiny else 32)
        refs["moco_v2"] = dict(moco.as_dict(), label=f"MoCo v2 {arch} {size}px (q fwd+bwd, k fwd, K=65536)",
                               source="mcl.models.moco.MoCo")
        log(f"  FLOPs MoCo v2 {arch}: {moco.per_image / 1e9:.2f} GFLOP per image")
    except Exception as exc:
        if sup is None:
            refs["moco_v2"] = {"label": f"MoCo v2 {arch}", "error": f"{type(exc).__name__}: {exc}"}
        else:   # no runnable MoCo model: from the ResNet counts
            forward = F.supervised_step_flops(arch, size, batch_size=2, backward=False)
            per_image = F.moco_flops_analytic(sup, forward, c5=2048 if arch in ("resnet50", "resnet101") else 512)
            refs["moco_v2"] = {"label": f"MoCo v2 {arch} {size}px (analytic)", "unique_images": 1,
                               "total_flops": per_image, "flops_per_unique_image": per_image, "parts": {},
                               "source": f"analytic from the ResNet counts ({type(exc).__name__}: {exc})"}
    return refs


def spec_checks(paper: dict | None) -> dict:
    """The figures of docs/method.md, "Compute modes", from the paper-mode counts."""
    from mcl.bench import flops as F
    from mcl.bench.report import part_flops

    checks = {"neck_p2_over_backbone": F.neck_p2_over_backbone()}
    if paper and {"faithful", "efficient"} <= set(paper["modes"]):
        fa, ef = paper["modes"]["faithful"], paper["modes"]["efficient"]
        neck = part_flops(fa, "neck") / max(part_flops(ef, "neck"), 1)
        target = 1 - part_flops(ef, "target") / max(part_flops(fa, "target"), 1)
        checks["paper_neck_cut"] = {"value": neck, "text": f"paper mode: efficient cuts the online neck's FLOPs "
                                                           f"{neck:.1f}x (docs/method.md: about 20x)"}
        checks["paper_target_cut"] = {"value": target, "text": f"paper mode: efficient cuts the target pass's "
                                                               f"FLOPs by {100 * target:.0f}% "
                                                               f"(docs/method.md: more than two thirds)"}
    return checks


def timing_plan(opts: BenchOptions, device: torch.device) -> tuple[str, list[str], dict]:
    """Recipe, overrides and loop sizes of the timing section."""
    if opts.tiny:
        recipe, overrides = CPU_RECIPE, TINY_OVERRIDES + list(opts.overrides)
        sizes = {"warmup": 1, "repeats": 1, "min_repeats": 1, "budget_s": None}
    else:
        recipe = opts.recipe or (PAPER_RECIPE if device.type == "cuda" else CPU_RECIPE)
        overrides = list(opts.overrides)
        if device.type == "cuda":
            sizes = {"warmup": 3, "repeats": 5 if opts.quick else 10, "min_repeats": 2, "budget_s": None}
        else:
            sizes = {"warmup": 1, "repeats": 3 if opts.quick else 7, "min_repeats": 2,
                     "budget_s": 150.0 if opts.quick else None}
    for key in ("warmup", "repeats", "budget_s"):
        if getattr(opts, key) is not None:
            sizes[key] = getattr(opts, key)
    return recipe, overrides, sizes


def timing_section(opts: BenchOptions, device: torch.device, precision: str, channels_last: bool,
                   flop_settings: dict, log: Callable[[str], None]) -> dict:
    from mcl.bench import timing as T
    from mcl.config import to_dict

    recipe, overrides, sizes = timing_plan(opts, device)
    cfg = load_recipe(recipe, overrides)
    b, s, arch = cfg.data.batch_size, cfg.data.crop_size, cfg.model.arch
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    crops = T.random_crops(cfg, device)
    steps = [T.mcl_step(cfg, mode, crops, device, precision, channels_last) for mode in opts.modes]
    for flag, suffix in ((opts.compile, "compile"), (opts.activation_checkpointing, "ckpt")):
        if flag:
            steps += [T.mcl_step(cfg, mode, crops, device, precision, channels_last, name=f"{mode}+{suffix}",
                                 compile=suffix == "compile", activation_checkpointing=suffix == "ckpt")
                      for mode in opts.modes]
    n_mcl = len(steps)
    if opts.references:
        steps.append(T.supervised_step(arch, b, s, device, precision, channels_last))
    if opts.references and not opts.tiny:      # tiny: MoCo is counted (FLOPs), not timed, to stay fast
        try:
            queue = 65536 if 65536 % b == 0 else b * 256
            steps.append(T.moco_step(arch, b, s, device, precision, channels_last, queue_size=queue))
        except Exception as exc:
            log(f"  MoCo v2 step not built: {type(exc).__name__}: {exc}")
        if opts.lightly:
            try:
                steps.append(T.lightly_moco_step(arch, b, s, device, precision, channels_last, queue_size=queue))
            except ImportError as exc:
                log(f"  lightly's MoCo v2 not timed ({exc}; pip install lightly)")
    if opts.floor and "efficient" in opts.modes:
        steps.append(T.body_floor_step(cfg, crops, device, precision, channels_last))
        if opts.compile:
            steps.append(T.body_floor_step(cfg, crops, device, precision, channels_last, compile=True,
                                           name="body floor+compile"))
    log(f"timing {recipe} ({arch}, B={b}, {s}px) on {device}: warm-up {sizes['warmup']}, "
        f"up to {sizes['repeats']} interleaved repeats")
    variants = T.time_interleaved(steps, device, warmup=sizes["warmup"], repeats=sizes["repeats"],
                                  budget_s=sizes["budget_s"], min_repeats=sizes["min_repeats"], log=log)
    ratios = {"efficient_over_faithful": T.ratio(variants, "efficient", "faithful")}
    for step in steps[len(opts.modes):n_mcl]:
        ratios[f"{step.name.replace('+', '_')}_over_{step.name.split('+')[0]}"] = T.ratio(variants, step.name,
                                                                                         step.name.split("+")[0])
    for mode in opts.modes:
        for ref in steps[n_mcl:]:
            if ref.info["kind"] not in ("lightly_moco_v2", "body_floor"):
                ratios[f"{mode}_over_{ref.name.split()[0].lower()}"] = T.ratio(variants, mode, ref.name)
    mocos = [x.name for x in steps if x.info["kind"] == "moco_v2"]
    peers = [x.name for x in steps if x.info["kind"] == "lightly_moco_v2"]
    if mocos and peers:
        ratios["moco_v2_over_lightly"] = T.ratio(variants, mocos[0], peers[0])
    if "body floor" in variants:
        ratios["efficient_over_body_floor"] = T.ratio(variants, "efficient", "body floor")
        ratios["body_floor_over_faithful"] = T.ratio(variants, "body floor", "faithful")
    if "body floor+compile" in variants:
        ratios["efficient_compile_over_body_floor_compile"] = T.ratio(variants, "efficient+compile",
                                                                      "body floor+compile")
        ratios["body_floor_compile_over_faithful_compile"] = T.ratio(variants, "body floor+compile",
                                                                     "faithful+compile")
    out = {"recipe": recipe, "overrides": overrides,
           "label": "tiny (tests only)" if opts.tiny else recipe_label(cfg, recipe),
           "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"),
           "precision": precision, "channels_last": channels_last, "torch_threads": torch.get_num_threads(),
           "plan": sizes, "variants": variants, "ratios": {k: v for k, v in ratios.items() if v},
           "memory_method": next(iter(variants.values()))["memory_method"] if variants else None}
    counts = mcl_flop_counts(cfg, opts.modes, recipe, overrides, flop_settings)
    if {"faithful", "efficient"} <= set(counts):
        out["flop_ratio"] = counts["efficient"]["total_flops"] / counts["faithful"]["total_flops"]
    try:
        flop_rates(variants, cfg, counts, opts.tiny)
    except Exception as exc:      # the rates are a reading aid: never lose the timings over them
        out["flop_rate_error"] = f"{type(exc).__name__}: {exc}"
    out["config"] = to_dict(cfg)
    del steps, crops
    gc.collect()                 # free the timed models before the loader-wait loop builds its own
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def mcl_flop_counts(cfg, modes: list[str], recipe: str, overrides: list[str], flop_settings: dict) -> dict[str, dict]:
    """``{mode: StepFlops.as_dict()}`` of the timed MCL modes: the FLOP section's own counts when it counted
    this very recipe (no overrides), otherwise counted here (meta device, seconds)."""
    from mcl.bench import flops as F

    same = next((v for v in flop_settings.values() if v.get("recipe") == recipe and not overrides), None)
    return {m: same["modes"][m] if same and m in same["modes"] else F.mcl_step_flops(cfg, m).as_dict()
            for m in modes}


def flop_rates(variants: dict, cfg, mcl_counts: dict[str, dict], tiny: bool) -> None:
    """Adds ``flops_per_step`` and ``tflop_per_s`` (counted FLOPs / median step time) to each timed variant,
    and ``rate_vs_supervised`` (its FLOP rate / the supervised ResNet step's).

    ``mcl_counts``: :func:`mcl_flop_counts` of the timed modes. Counted FLOPs are the model's
    (``mcl.bench.flops``): a ``+ckpt`` variant's recomputed forward and a ``+compile`` variant's fusions do
    not change them. The body floor's are the efficient count's ``backbone`` + ``target.backbone`` parts;
    lightly's MoCo v2 is given our MoCo v2's count (same ResNet, head and queue). FLOP rate / supervised
    rate = 1 means the step costs exactly what its FLOPs cost in plain ResNet training on the same device.
    """
    from mcl.bench import flops as F
    from mcl.bench.report import part_flops

    b, s, arch = cfg.data.batch_size, cfg.data.crop_size, cfg.model.arch
    moco_per_image = None
    for v in variants.values():
        kind = v.get("info", {}).get("kind")
        if kind == "mcl":
            flops = mcl_counts[v["info"]["compute_mode"]]["total_flops"]
        elif kind == "body_floor":
            efficient = mcl_counts["efficient"]
            flops = part_flops(efficient, "backbone") + part_flops(efficient, "target.backbone")
        elif kind == "supervised":
            flops = F.supervised_step_flops(arch, s, batch_size=2).per_image * b
        elif kind in ("moco_v2", "lightly_moco_v2"):
            if moco_per_image is None:
                moco_per_image = F.moco_step_flops(arch, s, batch_size=min(b, 8 if tiny else 32),
                                                   queue_size=16 if tiny else 65536).per_image
            flops = moco_per_image * b
        else:
            continue
        v["flops_per_step"] = flops
        if v.get("median_s"):
            v["tflop_per_s"] = flops / v["median_s"] / 1e12
    sup = next((v for v in variants.values() if v.get("info", {}).get("kind") == "supervised"
                and v.get("tflop_per_s")), None)
    if sup:
        for v in variants.values():
            if v.get("tflop_per_s"):
                v["rate_vs_supervised"] = v["tflop_per_s"] / sup["tflop_per_s"]


def device_batch(opts: BenchOptions, device: torch.device, crop: int, cfg) -> int:
    """Batch for the device-augmentation timing: the recipe's (paper mode: 128) on CUDA; small on a CPU,
    where one thread does the work (its figure is CPU time per image, not a GPU's speed)."""
    if opts.tiny:
        return 2
    if device.type == "cuda":
        return cfg.data.batch_size if crop == cfg.data.crop_size else 128
    return 8 if crop >= 160 else 32


def data_section(opts: BenchOptions, device: torch.device, precision: str, channels_last: bool,
                 log: Callable[[str], None]) -> dict:
    from mcl.bench import data_rate as D
    from mcl.data.sources import list_images

    recipe, overrides, _ = timing_plan(opts, device)
    cfg = load_recipe(recipe, overrides)
    out: dict = {"rates": {}}
    if opts.data:
        count, budget = (2, None) if opts.tiny else ((12, 8.0) if opts.quick else (40, 30.0))
        jpegs = list_images(opts.data_path) if opts.data_path else None
        plans = [] if opts.tiny else [(224, (500, 375), 256)]
        if cfg.data.crop_size not in [p[0] for p in plans]:
            side = cfg.data.synthetic_size
            plans.append((cfg.data.crop_size, (side, side), side))
        for crop, image_size, synthetic in plans:
            t0 = time.perf_counter()
            try:
                out["rates"][str(crop)] = D.pipeline_rates(crop, image_size, count, synthetic_size=synthetic,
                                                           jpeg_paths=jpegs, budget_s=budget,
                                                           distinct=2 if opts.tiny else 16, device=device,
                                                           device_batch=device_batch(opts, device, crop, cfg))
            except Exception as exc:
                out["rates"][str(crop)] = {"crop_size": crop, "error": f"{type(exc).__name__}: {exc}"}
            r = out["rates"][str(crop)]
            log(f"  data {crop}px: " + ", ".join(f"{k} {r[k]['images_per_s']:.1f} img/s" for k in
                                                  ("views", "decode", "jpeg", "synthetic") if k in r)
                + f" ({time.perf_counter() - t0:.1f} s)")
            dp = r.get("device_path", {})
            if "augment" in dp:
                log(f"  data {crop}px, augment_on=device: loader {dp['loader_cpu_ms_per_image']:.2f} CPU ms/img; "
                    f"batch of {dp['batch']} on {dp['device']}: {1000 * dp['augment']['median_s_per_batch']:.1f} ms")
    if opts.loader:
        steps = opts.loader_steps or (2 if opts.tiny else (12 if device.type == "cuda" else (4 if opts.quick else 8)))
        mode = "efficient" if "efficient" in opts.modes else opts.modes[0]
        try:
            lw = D.loader_wait(cfg, device, steps=steps, compute_mode=mode, num_workers=opts.num_workers,
                               precision=precision, channels_last=channels_last, log=log)
            lw["label"] = "tiny (tests only)" if opts.tiny else recipe_label(cfg, recipe)
            lw["recipe"] = recipe
        except Exception as exc:
            lw = {"error": f"{type(exc).__name__}: {exc}"}
        out["loader"] = lw
    return out


# ---------------------------------------------------------------------------------------------- all

def run_suite(opts: BenchOptions, log: Callable[[str], None] = print) -> dict:
    """Every requested section; a failing section records its error and the others still run."""
    from mcl.errors import UserError

    start = time.perf_counter()
    device = resolve_device(opts.device)
    unknown = [m for m in opts.modes if m not in ("faithful", "efficient")]
    if unknown or not opts.modes:
        raise UserError(f"--modes: {','.join(unknown) or '(none)'}: choose from faithful, efficient")
    precision = opts.precision or ("bf16" if device.type == "cuda" else "fp32")
    channels_last = device.type == "cuda" if opts.channels_last is None else opts.channels_last
    results: dict = {
        "schema": "mcl-bench/1", "command": opts.command, "machine": machine_info(device),
        "settings": {"quick": opts.quick, "tiny": opts.tiny, "modes": opts.modes, "precision": precision,
                     "channels_last": channels_last, "device": str(device)},
    }
    sections = results["section_s"] = {}
    if opts.flops:
        log("counting FLOPs (meta device)")
        t0 = time.perf_counter()
        try:
            results["flops"] = flops_section(opts, log)
        except UserError:
            raise
        except Exception as exc:
            results["flops"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  FLOPs failed: {results['flops']['error']}")
        sections["flops"] = time.perf_counter() - t0
    if opts.timing:
        t0 = time.perf_counter()
        try:
            results["timing"] = timing_section(opts, device, precision, channels_last,
                                               results.get("flops", {}).get("settings", {}), log)
        except UserError:
            raise
        except Exception as exc:     # e.g. out of memory while building: keep the data figures
            results["timing"] = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"}
            log(f"  timing failed: {results['timing']['error']}")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        sections["timing"] = time.perf_counter() - t0
    if opts.data or opts.loader:
        log("measuring the data pipeline")
        t0 = time.perf_counter()
        results["data"] = data_section(opts, device, precision, channels_last, log)
        sections["data"] = time.perf_counter() - t0
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["elapsed_s"] = time.perf_counter() - start
    return copy.deepcopy(results)
