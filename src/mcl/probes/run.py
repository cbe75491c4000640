"""``mcl probe``: every probe for one or more inits on one train / held-out split; table, ``probe.json``, chart.

Per init: the :class:`~mcl.probes.encoder.FrozenEncoder` encodes both splits once (:func:`extract`); the
dense and RoI features feed linear segmentation and RoI retrieval; frozen-backbone detection (optional,
the costliest) trains the detector's heads over the same frozen parts. Features are cached in
``OUT/<init label>/features.pt`` with the key they were made from, so a rerun with the same init file,
data and sizes skips the encoding.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mcl.engine.atomic import write_atomic
from mcl.probes.data import ProbeSet
from mcl.probes.encoder import DENSE_SETS, ROI_SETS, FrozenEncoder
from mcl.probes.retrieval import roi_retrieval
from mcl.probes.segmentation import grid_labels, linear_segmentation

PROBES = ("seg", "roi", "det")
SCHEMA = "mcl-probe/1"


@dataclass
class ProbeOptions:
    """Budgets of the probes (fixed per run, the same for every init)."""

    probes: tuple[str, ...] = PROBES
    max_pixels: int = 30_000        # sampled pixels per split for linear segmentation
    steps: int = 50                 # L-BFGS iterations of every linear probe
    k: int = 20                     # kNN neighbours
    det_iterations: int = 300       # frozen-backbone detection
    det_recipe: str = "finetune_cpu_smoke"
    det_overrides: tuple[str, ...] = ()
    seed: int = 0
    batch: int = 16


def extract(encoder: FrozenEncoder, data: ProbeSet, max_pixels: int, seed: int, batch: int = 16) -> dict:
    """Dense features of up to ``max_pixels`` grid pixels (``ceil(max_pixels / N)`` per image, sampled with a
    generator seeded by ``seed`` and the image index) and RoI features of every object, with their labels:
    ``{"dense": {set: (n, d)}, "dense_labels": (n,), "roi": {set: (m, d)}, "roi_labels": (m,)}``."""
    size = data.images.shape[-1]
    labels = grid_labels(data.class_maps)                               # (N, S/4, S/4)
    cells = labels[0].numel()
    quota = min(cells, math.ceil(max_pixels / len(data)))
    dense: dict[str, list[Tensor]] = {k: [] for k in DENSE_SETS}
    roi: dict[str, list[Tensor]] = {k: [] for k in ROI_SETS}
    dense_labels = []
    for start in range(0, len(data), batch):
        images = data.images[start:start + batch]
        c5, pyramid = encoder.maps(images)
        maps = {k: v.cpu() for k, v in encoder.dense(c5, pyramid).items()}
        picks = []
        for i in range(len(images)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + start + i)
            picks.append(torch.randperm(cells, generator=g)[:quota] if quota < cells else torch.arange(cells))
        for name, fmap in maps.items():
            flat = fmap.flatten(2)                                     # (b, d, cells)
            dense[name].append(torch.cat([flat[i][:, p].T for i, p in enumerate(picks)]))
        dense_labels.append(torch.cat([labels[start + i].flatten()[p] for i, p in enumerate(picks)]))
        boxes = data.boxes[start:start + batch]
        if sum(len(b) for b in boxes):
            for name, value in encoder.rois(c5, pyramid, boxes, size).items():
                roi[name].append(value.cpu())
    return {"dense": {k: torch.cat(v) for k, v in dense.items()}, "dense_labels": torch.cat(dense_labels),
            "roi": {k: torch.cat(v) for k, v in roi.items()}, "roi_labels": torch.cat(data.box_labels)}


def _cache_key(init: str, encoder: FrozenEncoder, train: ProbeSet, val: ProbeSet, opts: ProbeOptions) -> dict:
    path = Path(init)
    stamp = [path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else None
    return {"init": init, "stamp": stamp, "arch": encoder.arch, "fpn": encoder.fpn_channels,
            "train": [len(train), float(train.images.sum())], "val": [len(val), float(val.images.sum())],
            "size": train.images.shape[-1], "max_pixels": opts.max_pixels, "seed": opts.seed}


def features_for(init: str, encoder: FrozenEncoder, train: ProbeSet, val: ProbeSet, opts: ProbeOptions,
                 cache: Path | None) -> tuple[dict, dict, bool]:
    """Both splits' features, from ``cache`` when its key matches (then the last value is True)."""
    key = _cache_key(init, encoder, train, val, opts)
    if cache is not None and cache.is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if stored.get("key") == json.loads(json.dumps(key)):
            return stored["train"], stored["val"], True
    feats = (extract(encoder, train, opts.max_pixels, opts.seed, opts.batch),
             extract(encoder, val, opts.max_pixels, opts.seed + 1, opts.batch))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, lambda f: torch.save({"key": key, "train": feats[0], "val": feats[1]}, f))
    return feats[0], feats[1], False


def probe_features(train: dict, val: dict, num_classes: int, opts: ProbeOptions) -> dict:
    """Linear segmentation per dense set and RoI retrieval per RoI set, from extracted features."""
    out: dict = {}
    if "seg" in opts.probes:
        out["segmentation"] = {name: linear_segmentation(train["dense"][name], train["dense_labels"],
                                                         val["dense"][name], val["dense_labels"], num_classes,
                                                         opts.steps) for name in DENSE_SETS}
    if "roi" in opts.probes:
        out["retrieval"] = {name: roi_retrieval(train["roi"][name], train["roi_labels"], val["roi"][name],
                                                val["roi_labels"], num_classes, opts.k, opts.steps)
                            for name in ROI_SETS}
    return out


def probe_init(init: str, label: str, train: ProbeSet, val: ProbeSet, opts: ProbeOptions, out: Path,
               files: dict | None, arch: str | None = None, fpn_channels: int | None = None,
               say=print, device="cpu") -> dict:
    """Every probe of ``opts`` for one init; ``files`` (the splits' COCO json and image folders) is needed
    for frozen-backbone detection."""
    from mcl.probes.frozen_detection import frozen_detection

    start = time.perf_counter()
    torch.manual_seed(opts.seed)        # what the init leaves random (all of it for 'random') is a function of --seed
    encoder = FrozenEncoder(init, arch, fpn_channels).to(device)
    say(f"probe {label}: {encoder.report.source.splitlines()[0]} ({encoder.arch}, FPN {encoder.fpn_channels})")
    result: dict = {"init": init, "arch": encoder.arch, "fpn_channels": encoder.fpn_channels,
                    "loaded": {part: list(v) for part, v in encoder.report.loaded.items()}}
    if {"seg", "roi"} & set(opts.probes):
        tr, va, cached = features_for(init, encoder, train, val, opts, out / label / "features.pt")
        result["features_cached"] = cached
        result.update(probe_features(tr, va, train.num_classes, opts))
    if "det" in opts.probes:
        if files is None:
            raise ValueError("frozen-backbone detection needs the splits' files")
        head = encoder.loaded("roi_heads.box_head")
        result["detection"] = frozen_detection(init, out / label / "frozen_det", files, encoder.arch,
                                               encoder.fpn_channels, opts.det_iterations, head, opts.seed,
                                               opts.det_recipe, opts.det_overrides)
    result["seconds"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------- reporting

# Every reported figure: name -> (group, feature set, key) in a probe result, and its column label. The one
# table behind ``mcl probe``'s columns, the online probe's ``probe/<name>`` and the demo's probe figures.
FIGURES = {"seg_miou_fpn": ("segmentation", "fpn", "miou", "seg mIoU FPN"),
           "seg_miou_c5": ("segmentation", "c5", "miou", "seg mIoU C5"),
           "roi_knn_fpn": ("retrieval", "fpn", "knn_acc", "RoI kNN FPN"),
           "roi_knn_c5": ("retrieval", "c5", "knn_acc", "RoI kNN C5"),
           "roi_knn_head": ("retrieval", "head", "knn_acc", "RoI kNN head"),
           "roi_linear_fpn": ("retrieval", "fpn", "linear_acc", "RoI linear FPN"),
           "det_ap": ("detection", "bbox", "AP", "frozen det AP")}


def figure(result: dict, name: str) -> float | None:
    """Figure ``name`` of :data:`FIGURES` of one probe result, a fraction (None if that probe did not run)."""
    group, part, key, _ = FIGURES[name]
    return result.get(group, {}).get(part, {}).get(key)


def metric(result: dict, name: str) -> float | None:
    """:func:`figure` in percent."""
    value = figure(result, name)
    return None if value is None else 100.0 * value


def _present(results) -> list[str]:
    """The figures of :data:`FIGURES` that at least one of ``results`` has."""
    return [n for n in FIGURES if any(metric(r, n) is not None for r in results)]


def chance_row(result: dict) -> dict:
    """The trivial scores beside the table: majority class for segmentation (mIoU) and retrieval."""
    seg = result.get("segmentation", {}).get("fpn", {})
    roi = result.get("retrieval", {}).get("fpn", {})
    return {"seg_miou": seg.get("chance_miou"), "roi_acc": roi.get("chance")}


def render_table(summary: dict, markdown: bool = False) -> str:
    """Inits x probe figures (percent)."""
    from mcl.bench.report import table

    rows = []
    columns = _present(summary["inits"].values())
    for label, result in summary["inits"].items():
        rows.append([label] + [(f"{v:.1f}" if (v := metric(result, n)) is not None else "-") for n in columns])
    d = summary["data"]
    title = (f"mcl probe: frozen features, {d['train_images']} train / {d['val_images']} held-out images at "
             f"{d['image_size']} px ({d['name']}; {'box-filled masks' if d['box_masks'] else 'masks'}); "
             f"percent")
    text = (f"**{title}**\n\n" if markdown else f"{title}\n") + table(["init"] + [FIGURES[n][3] for n in columns], rows,
                                                                        markdown)
    first = next(iter(summary["inits"].values()))
    chance = chance_row(first)
    notes = []
    if chance["seg_miou"] is not None:
        notes.append(f"majority-class mIoU {100 * chance['seg_miou']:.1f}")
    if chance["roi_acc"] is not None:
        notes.append(f"majority-class RoI accuracy {100 * chance['roi_acc']:.1f}")
    return text + (("\n\n" if markdown else "\n") + "chance: " + ", ".join(notes) if notes else "")


def plot(summary: dict, path: Path) -> Path:
    """Grouped bars: each probe figure per init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inits = list(summary["inits"])
    columns = _present(summary["inits"].values())
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(columns)), 4))
    width = 0.8 / max(len(inits), 1)
    for i, label in enumerate(inits):
        values = [metric(summary["inits"][label], n) or 0.0 for n in columns]
        ax.bar([j + (i - (len(inits) - 1) / 2) * width for j in range(len(columns))], values, width, label=label)
    ax.set_xticks(range(len(columns)), [FIGURES[n][3] for n in columns], fontsize=8)
    ax.set_ylabel("percent")
    ax.set_title("mcl probe: frozen features", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def write_outputs(summary: dict, out: Path) -> None:
    """``probe.json``, ``probe.md`` and ``probe.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "probe.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
    write_atomic(out / "probe.md", lambda f: f.write((render_table(summary, markdown=True) + "\n").encode()))
    plot(summary, out / "probe.png")
