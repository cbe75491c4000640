"""The bench report: a plain-text table for the terminal, the same tables in markdown, and the JSON file.

Every figure is read from the results dict that ``mcl.bench.suite.run_suite`` fills (the JSON's
content); nothing is computed here except unit conversions and ratios of figures already there.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from mcl.engine.atomic import write_atomic

GIGA, TERA, MIB = 1e9, 1e12, 2**20
PART_COLUMNS = ("backbone", "fpn", "neck", "predictors", "target", "other")


def _fmt(value, digits: int = 1, none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def table(headers: list[str], rows: list[list[str]], markdown: bool = False, left: int = 2) -> str:
    """Columns aligned for a terminal (the first ``left`` to the left), or a GitHub markdown table."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) if i < left else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    out.append("  ".join("-" * w for w in widths))
    for row in rows:
        out.append("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(out)


def part_flops(flops: dict, name: str) -> int:
    parts = flops.get("parts", {})
    return sum(v["total"] for k, v in parts.items() if k == name or k.startswith(name + "."))


# ---------------------------------------------------------------------------------------------- sections

def flops_section(results: dict, markdown: bool = False) -> str:
    f = results.get("flops")
    if not f:
        return ""
    if "error" in f:
        return f"FLOPs: failed: {f['error']}"
    refs = f.get("references", {})
    sup = refs.get("supervised", {}).get("flops_per_unique_image")
    headers = ["setting", "mode", "B", "TFLOP/step", "GFLOP/img", "x sup.", "backbone", "FPN", "neck", "predictors",
               "target", "other"]
    rows = []
    for setting in f.get("settings", {}).values():
        for mode, c in setting.get("modes", {}).items():
            img = c["unique_images"]
            rows.append([setting["label"], mode, str(img), _fmt(c["total_flops"] / TERA, 2),
                         _fmt(c["flops_per_unique_image"] / GIGA),
                         _fmt(c["flops_per_unique_image"] / sup if sup and setting.get("crop_size") == 224 else None,
                              2)]
                        + [_fmt(part_flops(c, p) / img / GIGA, 2) for p in PART_COLUMNS])
    for key, ref in refs.items():
        if "error" in ref:
            rows.append([ref.get("label", key), "-", "-", "-", f"failed: {ref['error'][:40]}", "-"] + ["-"] * 6)
            continue
        img = ref["unique_images"]
        parts = ref.get("parts", {})
        backbone = sum(v["total"] for k, v in parts.items() if not k.startswith("target"))
        target = sum(v["total"] for k, v in parts.items() if k.startswith("target"))
        rows.append([ref["label"], "-", str(img), _fmt(ref["total_flops"] / TERA, 3),
                     _fmt(ref["flops_per_unique_image"] / GIGA),
                     _fmt(ref["flops_per_unique_image"] / sup if sup else None, 2),
                     _fmt(backbone / img / GIGA, 2), "-", "-", "-", _fmt(target / img / GIGA, 2) if target else "-",
                     "-"])
    lines = [_title("FLOPs per training step: forward + backward, online + target "
                    "(FlopCounterMode on the meta device; parts in GFLOP per unique image)", markdown),
             table(headers, rows, markdown)]
    notes = []
    for setting in f.get("settings", {}).values():
        r = setting.get("efficient_over_faithful")
        if r is not None:
            target = setting.get("target_ratio")
            verdict = f" (issue's target <= {target}: {'met' if r <= target else 'NOT met'})" if target else ""
            notes.append(f"{setting['label']}: efficient / faithful FLOPs = {r:.3f}{verdict}")
    checks = f.get("checks", {})
    if "neck_p2_over_backbone" in checks:
        notes.append(f"neck 3x3 convs on P2 of one 224 image / ResNet-50 body forward = "
                     f"{checks['neck_p2_over_backbone']:.2f} (docs/method.md, Compute modes: about 1.8)")
    for key in ("paper_neck_cut", "paper_target_cut"):
        if key in checks:
            notes.append(checks[key]["text"])
    lines += [_bullets(notes, markdown)]
    return "\n".join(lines)


def timing_section(results: dict, markdown: bool = False) -> str:
    t = results.get("timing")
    if not t:
        return ""
    if "error" in t:
        return f"Step time: failed: {t['error']}"
    headers = ["variant", "setting", "B", "median s/step", "min-max s", "CPU s/step", "unique img/s", "TFLOP/s",
               "x sup. rate", "peak MiB", "repeats"]
    rows = []
    for name, v in t["variants"].items():
        info = v.get("info", {})
        setting = f"{info.get('arch', '')} {info.get('crop_size', '')}px"
        if "error" in v and not v.get("times_s"):
            rows.append([name, setting, str(v["images"]), "failed", v["error"][:50]] + ["-"] * 5 + ["0"])
            continue
        peak = v.get("peak_bytes_max")
        rows.append([name, setting, str(v["images"]), _fmt(v.get("median_s"), 3),
                     f"{_fmt(v.get('min_s'), 2)}-{_fmt(v.get('max_s'), 2)}", _fmt(v.get("median_cpu_s"), 2),
                     _fmt(v.get("images_per_s"), 1),
                     _fmt(v.get("tflop_per_s"), 3 if v.get("tflop_per_s", 0) < 1 else 1),
                     _fmt(v.get("rate_vs_supervised"), 2),
                     _fmt(peak / MIB if peak is not None else None, 0), str(v.get("repeats", 0))])
    lines = [_title(f"Step time: {t['label']} ({t['device_name']}, {t['precision']}"
                    f"{', channels_last' if t.get('channels_last') else ''}; whole step: fwd, bwd, clip, "
                    f"optimizer, EMA; median of interleaved repeats; peak = memory above the step's start, "
                    f"{t.get('memory_method', '')})", markdown),
             table(headers, rows, markdown)]
    notes = []
    r = t.get("ratios", {}).get("efficient_over_faithful")
    if r:
        flop_r = t.get("flop_ratio")
        notes.append(f"efficient / faithful step time = {r['of_medians']:.3f} (ratio of medians), "
                     f"{r['median_of_paired']:.3f} (median of {r['pairs']} paired repeats)"
                     + (f", {r['of_cpu_medians']:.3f} (process CPU time)" if r.get("of_cpu_medians") else "")
                     + (f"; FLOP ratio at this setting {flop_r:.3f}" if flop_r else ""))
    floor = t.get("ratios", {}).get("body_floor_over_faithful")
    if floor:
        info = t["variants"]["body floor"]["info"]
        flop_r = t.get("flop_ratio")
        notes.append(f"body floor = the ResNet body passes alone (online fwd+bwd on {info.get('online_images')} "
                     f"montages, target fwd on {info.get('target_images')} crops; nothing else): "
                     f"floor / faithful step time = {floor['of_medians']:.3f}: a lower bound on efficient / faithful "
                     f"at this precision and format (efficient runs these passes and more)"
                     + (f" (FLOP ratio {flop_r:.3f})" if flop_r else ""))
    for name, rr in t.get("ratios", {}).items():
        if name not in ("efficient_over_faithful", "body_floor_over_faithful") and rr:
            notes.append(f"{name.replace('_over_', ' / ').replace('_', ' ')} step time = {rr['of_medians']:.2f}")
    if any(v.get("tflop_per_s") for v in t["variants"].values()):
        notes.append("TFLOP/s = counted FLOPs per step (the FLOP table's, model FLOPs: recomputation not counted) / "
                     "median step time; x sup. rate = that / the supervised ResNet step's TFLOP/s (1 = the step "
                     "costs what its FLOPs cost in plain ResNet training on this device)")
    lines.append(_bullets(notes, markdown))
    return "\n".join(lines)


def data_section(results: dict, markdown: bool = False) -> str:
    d = results.get("data")
    if not d:
        return ""
    lines = []
    rates = d.get("rates", {})
    if rates:
        headers = ["pipeline", "crop px", "source images", "img/s (wall)", "img/CPU-s", "ms/img", "images timed"]
        rows = []
        names = {"views": "8-crop views on decoded images", "decode": "JPEG decode only",
                 "jpeg": "JPEG file -> 8 crops (ImageDataset)", "synthetic": "synthetic scene render -> 8 crops"}
        for size, r in rates.items():
            if "error" in r:
                rows.append(["failed", str(size), r["error"][:60], "-", "-", "-", "-"])
                continue
            for key in ("views", "decode", "jpeg", "synthetic"):
                if key not in r:
                    continue
                v = r[key]
                source = (f"{r['image_size'][0]}x{r['image_size'][1]}" if key != "synthetic"
                          else f"{v['scene_size']}x{v['scene_size']}")
                rows.append([names[key], str(r["crop_size"]), source, _fmt(v["images_per_s"], 1),
                             _fmt(v.get("images_per_cpu_s"), 1), _fmt(v["median_ms_per_image"], 1),
                             str(v["images"])])
        breakdown = [(size, r["views_cpu_ms_by_step"]) for size, r in rates.items()
                     if isinstance(r.get("views_cpu_ms_by_step"), dict) and "error" not in r["views_cpu_ms_by_step"]]
        if breakdown:
            steps = list(dict.fromkeys(k for _, b in breakdown for k in b))
            rows2 = [[step] + [_fmt(b.get(step), 1) for _, b in breakdown] for step in steps]
            rows2.append(["total"] + [_fmt(sum(b.values()), 1) for _, b in breakdown])
            breakdown_table = table(["crop recipe step (CPU ms per image, all 8 crops)"]
                                    + [f"{size}px" for size, _ in breakdown], rows2, markdown, left=1)
        else:
            breakdown_table = ""
        lines += [_title("Data pipeline per CPU core (main process, torch.set_num_threads(1); one image = "
                         "8 normalised crops; img/CPU-s = per second of this thread's CPU time)", markdown),
                  table(headers, rows, markdown)]
        if breakdown_table:
            lines += ["", breakdown_table]
    device_text = device_path_section(results, markdown)
    if device_text:
        lines.append(device_text)
    lw = d.get("loader")
    if lw:
        if "error" in lw:
            lines.append(f"loader wait: failed: {lw['error']}")
        else:
            headers = ["setting", "mode", "workers", "B", "steps", "first batch s", "mean step s", "wait fraction",
                       "unique img/s"]
            steps = lw["step_s"][1:] or lw["step_s"]
            on_device = " (augment_on=device)" if lw.get("augment_on") == "device" else ""
            rows = [[f"{lw['label']}{on_device}", lw["compute_mode"], str(lw["num_workers"]),
                     str(lw["recipe_batch_size"]), str(lw["steps"]), _fmt(lw["first_batch_wait_s"], 2),
                     _fmt(sum(steps) / len(steps), 2),
                     _fmt(100 * lw["wait_fraction"], 1) + " %" if lw["wait_fraction"] is not None else "-",
                     _fmt(lw["images_per_s"], 1)]]
            lines += [_title("Time the training loop waits for data (DataLoader + whole steps; first step "
                             "excluded from the fraction)", markdown), table(headers, rows, markdown)]
    return "\n".join(lines)


def device_path_section(results: dict, markdown: bool = False) -> str:
    """Per-image path vs ``data.augment_on=device``: loader CPU per image and the CPU cores a GPU needs."""
    rates = results.get("data", {}).get("rates", {})
    rows, notes = [], []
    step = _efficient_step(results)
    for size, r in rates.items():
        dp = r.get("device_path")
        if not dp or "error" in r:
            continue
        if "error" in dp:
            rows.append([f"augment_on=device: failed: {dp['error'][:50]}", str(size)] + ["-"] * 5)
            continue
        jpeg_rate = r["jpeg"].get("images_per_cpu_s")
        per_image_ms = 1000 / jpeg_rate if jpeg_rate else None
        device_ms = dp.get("loader_cpu_ms_per_image")
        aug = dp["augment"]
        where = (f"{aug.get('device_name', dp['device'])}" if dp["device"].startswith("cuda")
                 else "CPU, 1 thread")
        for label, ms, bytes_, batch_ms in (
                ("per image in the loader (JPEG -> 8 crops)", per_image_ms, dp["per_image_path_bytes_per_image"], None),
                (f"augment_on=device: loader (JPEG -> {dp['canvas_side']}px canvas + parameters)", device_ms,
                 dp["host_to_device_bytes_per_image"], 1000 * aug["median_s_per_batch"])):
            rows.append([label, str(size), _fmt(1000 / ms if ms else None, 1),
                         _fmt(ms, 2),                    # cores for 1,000 img/s = 1000 img/s x ms / 1000
                         _fmt(bytes_ / MIB, 2),
                         f"{_fmt(batch_ms, 1)} (B={dp['batch']}, {where})" if batch_ms is not None else "-",
                         _fmt(dp["batch"] / (batch_ms / 1000), 0) if batch_ms else "-"])
        if step and str(step["crop_size"]) == str(size) and per_image_ms and device_ms:
            x = step["images_per_s"]
            notes.append(f"{size}px at the measured efficient step rate ({x:,.0f} img/s, {step['label']}): "
                         f"per-image path {x * per_image_ms / 1000:.1f} CPU cores per GPU, "
                         f"augment_on=device {x * device_ms / 1000:.1f} cores"
                         + (f" plus {1000 * aug['median_s_per_batch']:.1f} ms of GPU time per batch of "
                            f"{dp['batch']} ({100 * aug['median_s_per_batch'] / step['median_s']:.1f}% of a "
                            f"{step['median_s']:.3f} s step)" if dp["device"].startswith("cuda")
                            and dp["batch"] == step["batch"] else ""))
    if not rows:
        return ""
    headers = ["path", "crop px", "img/CPU-s per core", "CPU cores per 1,000 img/s",
               "MiB/img to device", "device ms/batch", "device img/s"]
    notes.insert(0, "CPU cores per GPU for X img/s = X / (img/CPU-s per core); one core = one loader worker "
                    "(torch.set_num_threads(1)); 'device' = the batched 2k-crop augmentation "
                    "(DeviceMultiCropViews.apply) of a batch of canvases already on the device")
    return "\n".join([_title("Where augmentation runs: per image in the loader vs data.augment_on=device "
                             "(CPU cores per GPU = images/s x CPU s per image)", markdown),
                      table(headers, rows, markdown), _bullets(notes, markdown)])


def _efficient_step(results: dict) -> dict | None:
    """The timed efficient (or first) MCL step on CUDA: images/s, median s, batch, crop size, label."""
    t = results.get("timing") or {}
    variants = t.get("variants", {})
    v = variants.get("efficient") or variants.get("faithful")
    if not v or "error" in v or not str(t.get("device_name", "")).strip() or t.get("device_name") == "CPU":
        return None
    data = t.get("config", {}).get("data", {})
    if not v.get("images_per_s") or not data:
        return None
    return {"images_per_s": v["images_per_s"], "median_s": v["median_s"], "batch": data.get("batch_size"),
            "crop_size": data.get("crop_size"), "label": t.get("label", "")}


def _title(text: str, markdown: bool) -> str:
    return f"\n**{text}**\n" if markdown else f"\n== {text} =="


def _bullets(notes: list[str], markdown: bool) -> str:
    if not notes:
        return ""
    return "\n" + "\n".join(("- " if markdown else "  ") + n for n in notes)


def header(results: dict) -> str:
    m = results.get("machine", {})
    s = results.get("settings", {})
    load = m.get("load_average_start")
    return (f"mcl bench{' --quick' if s.get('quick') else ''}{' --tiny' if s.get('tiny') else ''}: "
            f"{m.get('device_name', '?')} | {m.get('cpu_count', '?')} CPUs, torch threads {m.get('torch_threads', '?')}"
            f" | torch {m.get('torch', '?')} | host {m.get('hostname', '?')}"
            + (f" | load average at start {load[0]:.1f}" if load else ""))


def render(results: dict, markdown: bool = False) -> str:
    parts = [header(results)]
    for section in (flops_section, timing_section, data_section):
        text = section(results, markdown)
        if text:
            parts.append(text)
    if "elapsed_s" in results:
        parts.append(f"\n(bench took {results['elapsed_s']:.0f} s)")
    return "\n".join(parts) + "\n"


def default_out_path(device_name: str, hostname: str, is_cuda: bool, folder: str | Path = "benchmarks/results") -> Path:
    """``benchmarks/results/bench-<device or host>.json``, the name reduced to ``[A-Za-z0-9._-]``."""
    name = device_name if is_cuda else hostname
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "unknown"
    return Path(folder) / f"bench-{safe}.json"


def write(results: dict, json_path: str | Path) -> tuple[Path, Path]:
    """Write the JSON and, beside it, the same report as markdown (``.md``); returns both paths."""
    json_path = Path(json_path)
    text = json.dumps(results, indent=1, default=_plain) + "\n"
    write_atomic(json_path, lambda f: f.write(text.encode()))
    md = json_path.with_suffix(".md")
    report = f"<!-- written by `{results.get('command', 'mcl bench')}` -->\n" + render(results, markdown=True)
    write_atomic(md, lambda f: f.write(report.encode()))
    return json_path, md


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
