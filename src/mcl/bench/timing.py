"""Wall-clock step time, unique images/s and peak memory of whole training steps.

A *step* is what the trainer does per batch: forward (montages, both encoders, predictors, loss),
backward, gradient-norm clipping, the optimizer step (LARS) and the EMA update of the target.
Variants (faithful, efficient, references) are built once, fed the same input tensor, and timed
**interleaved**: after warm-up steps of each, repeat ``for r: for variant: time one step``, so slow
phases of a shared machine hit every variant alike; each variant's figure is the median of its
repeats, and a ratio is also given as the median of the per-repeat ratios. Step ``r`` of every
MCL variant draws the same montage permutations (generator seeded with ``r``).

Timed region: ``synchronize(); t0; step; synchronize(); t1`` (CUDA synchronises, CPU does not
need to). The process CPU time of the step (all threads) is kept too: on a shared machine other
processes stretch wall time much more than CPU time. Peak memory of a step, above what was resident
just before it, is measured on the last warm-up step (untimed, since the probe trims the heap first):
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the step (and the absolute peak, which includes the model);
- CPU (Linux): the process's resident high-water mark ``VmHWM`` reset through
  ``/proc/self/clear_refs`` (and freed heap returned with ``malloc_trim``) before the step, minus
  ``VmRSS`` before it. Without ``clear_refs``, ``ru_maxrss`` growth is reported, which is only
  meaningful for the first step that raises it (``method`` says which one was used).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import math
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------- devices

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on the device when ``precision == "bf16"``; fp32 otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return contextlib.nullcontext()


class MemoryProbe:
    """Peak memory of a region, above what was resident at its start (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda.max_memory_allocated" if device.type == "cuda" else _cpu_method()
        self._libc = None
        if self.method == "VmHWM":
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")

    def __enter__(self) -> MemoryProbe:
        self.peak_bytes = None
        self.absolute_peak_bytes = None
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.method == "VmHWM":
            gc.collect()
            if self._libc is not None:
                self._libc.malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._start = _proc_status()["VmRSS"]
        else:
            self._start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_bytes = peak - self._start
            self.absolute_peak_bytes = peak
        elif self.method == "VmHWM":
            status = _proc_status()
            self.peak_bytes = status["VmHWM"] - self._start
            self.absolute_peak_bytes = status["VmHWM"]
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.peak_bytes = peak - self._start
            self.absolute_peak_bytes = peak


def _proc_status() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process in bytes."""
    text = open("/proc/self/status").read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def _cpu_method() -> str:
    try:
        _proc_status()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM"
    except (OSError, AttributeError):
        return "ru_maxrss"


# ---------------------------------------------------------------------------------------------- steps

@dataclass
class Step:
    """One variant: ``run()`` does one whole training step; ``images`` unique images per step."""

    name: str
    run: Callable[[], None]
    images: int
    info: dict = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)   # for inspection (tests); not reported


def _channels_last(model: nn.Module, on: bool) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if on else model


def mcl_training(cfg, compute_mode: str, device: torch.device, channels_last: bool = False, seed: int = 0,
                 compile: bool = False, activation_checkpointing: bool = False):
    """``(model, optimizer, trainable params, clip norm)`` of an MCL training step for ``cfg`` with ``compute_mode``."""
    from mcl.methods.mcl import build_model
    from mcl.optim import build_optimizer, scaled_lr

    cfg = copy.deepcopy(cfg)
    cfg.model.compute_mode = compute_mode
    torch.manual_seed(seed)
    cfg.model.activation_checkpointing = activation_checkpointing
    model = _channels_last(build_model(cfg).to(device), channels_last)
    model.train()
    if compile:
        from mcl.engine.speed import apply_speed_settings
        apply_speed_settings(model, False, True, device.type)
    o = cfg.optim
    trainable = nn.ModuleDict({"online": model.online, "predictors": model.predictors})
    optimizer = build_optimizer(trainable, o.name, scaled_lr(o.base_lr, cfg.data.batch_size), o.weight_decay,
                                o.momentum, o.trust_coefficient, o.exclude_bn_bias)
    return model, optimizer, [p for p in trainable.parameters() if p.requires_grad], o.clip_grad_norm


def mcl_step(cfg, compute_mode: str, crops: Tensor | Callable[[], Tensor], device: torch.device,
             precision: str = "fp32", channels_last: bool = False, seed: int = 0, name: str | None = None,
             compile: bool = False, activation_checkpointing: bool = False) -> Step:
    """A whole MCL training step (forward, backward, clip, LARS, EMA) for ``cfg`` with ``compute_mode``.

    ``crops``: the ``(B, 2L, 3, S, S)`` input, or a function returning this step's input (a loader's batch).
    """
    model, optimizer, params, clip = mcl_training(cfg, compute_mode, device, channels_last, seed, compile,
                                                  activation_checkpointing)
    counter = [0]

    def run() -> None:
        generator = torch.Generator().manual_seed(counter[0])   # same permutations for every variant at step r
        counter[0] += 1
        with autocast(device, precision):
            out = model(crops() if callable(crops) else crops, generator=generator, gather=False)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        model.update_target(0.99)

    return Step(name or compute_mode, run, cfg.data.batch_size,
                {"kind": "mcl", "compute_mode": compute_mode, "arch": cfg.model.arch,
                 "crop_size": cfg.data.crop_size, "batch_size": cfg.data.batch_size, "compile": compile,
                 "activation_checkpointing": activation_checkpointing})


def body_floor_step(cfg, crops: Tensor, device: torch.device, precision: str = "fp32", channels_last: bool = False,
                    seed: int = 0, compile: bool = False, name: str = "body floor") -> Step:
    """The ResNet body passes that every MCL step on the paper's montage pyramid must make, and nothing else.

    Per view ``v``: the online body forward on the view's montages (``sum_i M_i`` images, 2 x 172 in
    paper mode) and the target body forward (no grad) on its level-0 crops (``B``); one backward of
    ``sum_v sum_k mean(C_k)`` through the online body. No FPN, neck, predictors, loss, optimizer or EMA.
    Efficient mode computes exactly these body passes plus the small parts it keeps, so this step's time
    is the lowest any efficient step can reach with this backbone and batch: ``floor / faithful`` bounds
    the efficient / faithful step-time ratio from below. Montages are built once, before timing.
    ``compile``: both bodies ``torch.compile``'d, as ``trainer.compile`` does (the bound for ``+compile``).
    """
    from mcl.methods.mcl import build_model
    from mcl.montage import build_pyramids

    torch.manual_seed(seed)
    model = build_model(cfg)
    online = _channels_last(model.online.backbone.body.to(device), channels_last).train()
    target = _channels_last(model.target.backbone.body.to(device), channels_last).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        views = [(torch.cat(montages).contiguous(memory_format=fmt), montages[0].contiguous(memory_format=fmt))
                 for montages, _ in build_pyramids(crops, model.specs, model.interpolation,
                                                   torch.Generator().manual_seed(seed))]
    del model
    if compile:
        online.compile()
        target.compile()

    def run() -> None:
        online.zero_grad(set_to_none=True)
        loss = 0.0
        with autocast(device, precision):
            for online_input, target_input in views:
                loss = loss + sum(c.float().mean() for c in online(online_input).values())
                with torch.no_grad():
                    target(target_input)
        loss.backward()

    return Step(name, run, cfg.data.batch_size,
                {"kind": "body_floor", "arch": cfg.model.arch, "crop_size": cfg.data.crop_size,
                 "batch_size": cfg.data.batch_size, "compile": compile,
                 "online_images": sum(x.shape[0] for x, _ in views),
                 "target_images": sum(t.shape[0] for _, t in views)},
                {"online": online, "target": target})


def supervised_step(arch: str, batch_size: int, image_size: int, device: torch.device, precision: str = "fp32",
                    channels_last: bool = False, seed: int = 0) -> Step:
    """Plain supervised training of a torchvision ResNet: CE on 1000 classes, SGD with momentum."""
    import torchvision

    torch.manual_seed(seed)
    model = _channels_last(getattr(torchvision.models, arch)(weights=None).to(device), channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)

    def run() -> None:
        with autocast(device, precision):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return Step(f"supervised {arch}", run, batch_size,
                {"kind": "supervised", "arch": arch, "crop_size": image_size, "batch_size": batch_size})


def moco_step(arch: str, batch_size: int, image_size: int, device: torch.device, precision: str = "fp32",
              channels_last: bool = False, seed: int = 0, queue_size: int | None = None) -> Step:
    """MoCo v2 (``mcl.models.moco``, ``MoCoConfig``'s head): query fwd+bwd, key fwd, queue logits, SGD, EMA;
    two views per image. ``queue_size`` None: the config's 65536."""
    from mcl.methods.moco import MoCoConfig
    from mcl.models.moco import MoCo

    cfg = MoCoConfig()
    cfg.model.arch = arch
    cfg.model.queue_size = queue_size or cfg.model.queue_size
    torch.manual_seed(seed)
    model = _channels_last(MoCo.from_config(cfg).to(device), channels_last)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9,
                                weight_decay=1e-4)
    crops = torch.randn(batch_size, 2, 3, image_size, image_size,
                        generator=torch.Generator().manual_seed(seed)).to(device)

    def run() -> None:
        with autocast(device, precision):
            out = model(crops, gather=False)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        model.update_target(0.999)

    return Step(f"MoCo v2 {arch}", run, batch_size,
                {"kind": "moco_v2", "arch": arch, "crop_size": image_size, "batch_size": batch_size})


def lightly_moco_step(arch: str, batch_size: int, image_size: int, device: torch.device, precision: str = "fp32",
                      channels_last: bool = False, seed: int = 0, queue_size: int = 65536) -> Step:
    """The peer: MoCo v2 built from lightly's parts, as lightly's own MoCo example does.

    torchvision ResNet without ``fc`` -> ``MoCoProjectionHead(C5, 2048, 128)``; momentum copies via
    ``deactivate_requires_grad`` / ``update_momentum``; ``NTXentLoss(0.2, memory_bank_size=(K, 128))``.
    Same step as ``moco_step``: query fwd+bwd on view 0, key fwd on view 1, SGD, EMA (m = 0.999).
    Raises ``ImportError`` without lightly (``pip install 'mcl-pretrain[bench]'``).
    """
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    torch.manual_seed(seed)
    resnet = getattr(torchvision.models, arch)(weights=None)
    c5 = resnet.fc.in_features
    backbone = nn.Sequential(*list(resnet.children())[:-1], nn.Flatten(1))
    head = MoCoProjectionHead(c5, 2048, 128)
    backbone_m, head_m = copy.deepcopy(backbone), copy.deepcopy(head)
    deactivate_requires_grad(backbone_m)
    deactivate_requires_grad(head_m)
    modules = nn.ModuleList([backbone, head, backbone_m, head_m])
    _channels_last(modules.to(device), channels_last).train()
    criterion = NTXentLoss(temperature=0.2, memory_bank_size=(queue_size, 128)).to(device)
    optimizer = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.03, momentum=0.9,
                                weight_decay=1e-4)
    crops = torch.randn(batch_size, 2, 3, image_size, image_size,
                        generator=torch.Generator().manual_seed(seed)).to(device)

    def run() -> None:
        with autocast(device, precision):
            query = head(backbone(crops[:, 0]))
            with torch.no_grad():
                key = head_m(backbone_m(crops[:, 1]))
            loss = criterion(query, key)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_momentum(backbone, backbone_m, 0.999)
        update_momentum(head, head_m, 0.999)

    import lightly
    return Step(f"lightly MoCo v2 {arch}", run, batch_size,
                {"kind": "lightly_moco_v2", "arch": arch, "crop_size": image_size, "batch_size": batch_size,
                 "lightly": lightly.__version__})


def random_crops(cfg, device: torch.device, seed: int = 0) -> Tensor:
    """The input every MCL variant shares: ``(B, 2L, 3, S, S)`` standard-normal crops on ``device``."""
    b, s, levels = cfg.data.batch_size, cfg.data.crop_size, len(cfg.montage.ratios)
    return torch.randn(b, 2 * levels, 3, s, s, generator=torch.Generator().manual_seed(seed)).to(device)


# ---------------------------------------------------------------------------------------------- the timer

def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def time_interleaved(steps: list[Step], device: torch.device, warmup: int = 1, repeats: int = 3,
                     budget_s: float | None = None, min_repeats: int = 2, memory: bool = True,
                     log: Callable[[str], None] = print) -> dict:
    """Warm up every step, then time ``repeats`` interleaved rounds (fewer if ``budget_s`` runs out,
    never fewer than ``min_repeats``). A step that fails (e.g. out of memory) is dropped and its error kept.
    Peak memory is measured on the last warm-up step (so the probe's heap trim never touches a timed step;
    with one warm-up step it includes the optimizer's first-step state).

    Returns ``{name: {"times_s", "median_s", "images_per_s", "peak_bytes", ...}}``.
    """
    probe = MemoryProbe(device)
    results: dict[str, dict] = {s.name: {"info": s.info, "images": s.images, "times_s": [], "cpu_s": [],
                                         "peak_bytes": [], "absolute_peak_bytes": [], "memory_method": probe.method}
                                for s in steps}
    alive = list(steps)

    def one(step: Step, record: bool, probe_memory: bool) -> None:
        if probe_memory:
            with probe:
                elapsed, cpu = _timed(step, device)
            results[step.name]["peak_bytes"].append(probe.peak_bytes)
            results[step.name]["absolute_peak_bytes"].append(probe.absolute_peak_bytes)
        else:
            elapsed, cpu = _timed(step, device)
        if record:
            results[step.name]["times_s"].append(elapsed)
            results[step.name]["cpu_s"].append(cpu)
        log(f"  {step.name}: {'step' if record else 'warm-up'} {elapsed:.3f} s (process CPU {cpu:.3f} s)")

    def guarded(step: Step, record: bool, probe_memory: bool = False) -> None:
        try:
            one(step, record, probe_memory)
            return
        except Exception as exc:     # keep the other variants going; report why this one stopped
            if not _is_oom(exc) and not isinstance(exc, RuntimeError):
                raise
            first_line = (str(exc).splitlines() or [""])[0]
            results[step.name]["error"] = f"{type(exc).__name__}: {first_line[:300]}"
        log(f"  {step.name}: failed: {results[step.name]['error']}")
        alive.remove(step)
        gc.collect()                 # the traceback's frames are gone: free the failed step's tensors
        if device.type == "cuda":
            torch.cuda.empty_cache()

    start = time.perf_counter()
    for w in range(max(warmup, 1 if memory else 0)):
        for step in list(alive):   # memory: on the last warm-up step (untimed: the probe trims the heap)
            guarded(step, record=False, probe_memory=memory and w == max(warmup, 1) - 1)
    timed_start = time.perf_counter()
    done = 0
    for r in range(repeats):
        if budget_s is not None and r >= min_repeats and time.perf_counter() - start > budget_s:
            break
        if budget_s is not None and r >= min_repeats and done:
            per_round = (time.perf_counter() - timed_start) / done
            if time.perf_counter() - start + per_round > budget_s:
                break
        for step in list(alive):
            guarded(step, record=True)
        done += 1
    for res in results.values():
        times = res["times_s"]
        if times:
            res["median_s"] = statistics.median(times)
            res["min_s"] = min(times)
            res["max_s"] = max(times)
            res["images_per_s"] = res["images"] / res["median_s"]
            res["median_cpu_s"] = statistics.median(res["cpu_s"])
        peaks = [p for p in res["peak_bytes"] if p is not None]
        res["peak_bytes_max"] = max(peaks) if peaks else None
        absolute = [p for p in res["absolute_peak_bytes"] if p is not None]
        res["absolute_peak_bytes_max"] = max(absolute) if absolute else None
        res["repeats"] = len(times)
    return results


def _timed(step: Step, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds (all threads) of one step."""
    synchronize(device)
    c0, t0 = time.process_time(), time.perf_counter()
    step.run()
    synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def ratio(results: dict, numerator: str, denominator: str) -> dict | None:
    """``numerator / denominator`` step time: ratio of medians, median of the per-repeat ratios, and the
    ratio of median process CPU times (less sensitive to other processes on a shared machine)."""
    a, b = results.get(numerator, {}), results.get(denominator, {})
    if not a.get("times_s") or not b.get("times_s"):
        return None
    paired = [x / y for x, y in zip(a["times_s"], b["times_s"]) if y > 0]
    cpu = a.get("median_cpu_s"), b.get("median_cpu_s")
    return {"of_medians": a["median_s"] / b["median_s"],
            "median_of_paired": statistics.median(paired) if paired else math.nan,
            "pairs": len(paired),
            "of_cpu_medians": cpu[0] / cpu[1] if cpu[0] and cpu[1] else None}
