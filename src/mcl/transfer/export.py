"""Export an ``mcl pretrain`` checkpoint to torchvision detectors (Mask / Faster / Keypoint R-CNN, RetinaNet),
a torchvision ResNet, or detectron2 weights.

The pretraining model is built from the detector's own modules (DESIGN decision 1), so an export is
a renaming of prefixes (docs/method.md, "Transfer"):

- ``model.{encoder}.backbone.body.*``  -> ``backbone.body.*``          (part "backbone")
- ``model.{encoder}.backbone.fpn.*``   -> ``backbone.fpn.*``           (part "fpn")
- ``model.{encoder}.neck.convs.{k}.*`` -> ``roi_heads.box_head.{k}.*`` (part "head", k = 0..3)

Formats:

- ``torchvision-maskrcnn``: a state dict (``torch.save``) for ``maskrcnn_resnet50_fpn_v2`` (or the same
  layout around another torchvision ResNet); the box head's fc, the RPN, the predictors and the mask
  head stay fresh. Load it with ``model.load_state_dict(state, strict=False)``.
- ``torchvision-fasterrcnn``: the same for ``fasterrcnn_resnet50_fpn_v2`` (no mask head).
- ``torchvision-keypointrcnn``: the same for the v2-layout Keypoint R-CNN of ``mcl.transfer.detection``
  (torchvision's only Keypoint R-CNN, v1, has an FPN without norm and a 2-fc box head: no box-head conv would fit).
- ``torchvision-retinanet``: ``retinanet_resnet50_fpn_v2``: the body, and the FPN's C3-C5 laterals and P3-P5
  outputs with BatchNorm folded into conv + bias (its FPN has no norm); P2, P6/P7, the box-head convs and the
  heads do not transfer (RetinaNet has no P2, no RoI head; its P6/P7 and heads are its own).
- ``semantic-fpn``: the body and FPN for ``mcl.transfer.semseg.SemanticFPN`` (``mcl finetune --task semseg``);
  its head stays fresh.
- ``torchvision-resnet``: a state dict for ``torchvision.models.resnetNN`` (body only; ``fc`` stays fresh).
- ``detectron2``: a ``.pkl`` ``{"model": {name: float32 array}, "__author__": "mcl", "matching_heuristics":
  True}`` with detectron2 names (``mcl.transfer.detectron2_names``) for Mask R-CNN R50-FPN with a
  4conv1fc box head and BN/SyncBN in ResNet, FPN and head. A ``*_config.yaml`` beside it holds the
  settings these weights need: ``INPUT.FORMAT "RGB"``, ``MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]``,
  ``MODEL.PIXEL_STD [58.395, 57.12, 57.375]``, ``MODEL.RESNETS.STRIDE_IN_1X1 False`` (torchvision strides
  in the 3x3 conv), ``MODEL.RESNETS.NORM / FPN.NORM / ROI_BOX_HEAD.NORM "SyncBN"``,
  ``ROI_BOX_HEAD.NUM_CONV 4, NUM_FC 1``. detectron2's defaults (BGR, 0-255 Caffe means) would not fit.

``encoder`` picks the online encoder (default) or the EMA target encoder.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

from mcl.engine.atomic import write_atomic
from mcl.errors import UserError
from mcl.models.backbone import closest_resnet, identify_resnet
from mcl.transfer.detectron2_names import detectron2_config, to_detectron2
from mcl.transfer.formats import BOX_HEAD_FORMATS, DEPTH_ONLY_FORMATS, DEPTHS, DETECTOR_OF, FORMATS
from mcl.transfer.mmdet_names import MMDET_FRESH, mmdet_config, to_mmdet

ENCODERS = ("online", "target")
PARTS = ("backbone", "fpn", "head")
HEAD_CONVS = 4  # the 4conv1fc box head
FORMAT_TAG = "mcl-pretrain/1"
_FRESH = {
    "torchvision-maskrcnn": "RPN, box head fc, box predictor, mask head and predictor",
    "torchvision-fasterrcnn": "RPN, box head fc, box predictor",
    "torchvision-retinanet": "FPN P6/P7 convs, the classification and box-regression heads (GroupNorm convs)",
    "torchvision-keypointrcnn": "RPN, box head fc, box predictor, keypoint head and predictor",
    "torchvision-resnet": "fc (classifier)",
    "detectron2": "RPN, box head fc1, box predictor, mask head",
    "mmdet": MMDET_FRESH,
    "semantic-fpn": "the Semantic FPN head (its per-level conv stacks and the classifier)",
}


# ---------------------------------------------------------------- reading the checkpoint

@dataclass
class Layout:
    """What the checkpoint's tensors describe: ResNet depth, FPN width, neck convs."""

    arch: str
    fpn_channels: int | None      # None: no FPN in the checkpoint (backbone-only pretraining, e.g. MoCo)
    neck_convs: int


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The ``state_dict`` of an ``mcl pretrain`` checkpoint (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (give a .ckpt written by mcl pretrain, e.g. RUN/last.ckpt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or unsafe files all end here
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"cannot read checkpoint {path} ({reason}): the file is truncated or not an mcl "
                        f"checkpoint; copy it again or pick another .ckpt of the run") from None
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(k.startswith("model.online.backbone.body.") for k in state):
        raise UserError(f"{path} is not an mcl pretraining checkpoint (no state_dict with model.online.* tensors): "
                        f"export a .ckpt written by mcl pretrain")
    tag = obj.get("mcl_format", FORMAT_TAG)
    if tag != FORMAT_TAG:
        raise UserError(f"{path} has checkpoint format {tag!r}, this mcl reads {FORMAT_TAG!r}: "
                        f"export it with the mcl version that wrote it")
    return state


def infer_layout(state: dict[str, Tensor], encoder: str) -> Layout:
    """ResNet depth, FPN channels and neck conv count, read from the encoder's tensors."""
    body = f"model.{encoder}.backbone.body."
    if not any(k.startswith(body) for k in state):
        raise UserError(f"the checkpoint has no {encoder} encoder (no model.{encoder}.* tensors): "
                        f"use --encoder online")
    arch = identify_resnet({k: v for k, v in state.items() if k.startswith(body)})
    if arch is None:
        closest, difference = closest_resnet(state, body)
        raise UserError(f"the checkpoint's ResNet body is none of the torchvision ResNets mcl builds: closest "
                        f"{closest}, but {difference}; nothing was written (the checkpoint is incomplete or altered)")
    fpn_key = f"model.{encoder}.backbone.fpn.layer_blocks.0.0.weight"
    fpn_channels = int(state[fpn_key].shape[0]) if fpn_key in state else None
    convs = {k.split(".")[4] for k in state if k.startswith(f"model.{encoder}.neck.convs.")}
    return Layout(arch, fpn_channels, len(convs))


# ---------------------------------------------------------------- the renaming plan

def plan(state: dict[str, Tensor], fmt: str, encoder: str, layout: Layout) -> list[tuple[str, str, str]]:
    """``(checkpoint key, torchvision key, part)`` for every tensor the format takes (torchvision names)."""
    src = f"model.{encoder}."
    rules = [(f"{src}backbone.body.", "" if fmt == "torchvision-resnet" else "backbone.body.", "backbone")]
    if fmt not in ("torchvision-resnet", "torchvision-retinanet"):
        rules.append((f"{src}backbone.fpn.", "backbone.fpn.", "fpn"))
    if fmt in BOX_HEAD_FORMATS:
        rules += [(f"{src}neck.convs.{k}.", f"roi_heads.box_head.{k}.", "head")
                  for k in range(min(layout.neck_convs, HEAD_CONVS))]
    items = []
    for key in state:
        for prefix, new, part in rules:
            if key.startswith(prefix):
                items.append((key, new + key[len(prefix):], part))
                break
    return items


def fold_batchnorm(weight: Tensor, bn: dict[str, Tensor], eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """A conv without bias followed by BatchNorm in eval mode, as one conv with bias (the same function):

        s = gamma / sqrt(running_var + eps);   W' = W * s (per output channel);   b' = beta - running_mean * s
    """
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    return weight * scale.view(-1, 1, 1, 1), bn["bias"] - bn["running_mean"] * scale


def retinanet_fpn(state: dict[str, Tensor], encoder: str) -> dict[str, Tensor]:
    """Our BN FPN's C3..C5 laterals and P3..P5 output convs as RetinaNet v2's FPN (no norm, convs with bias).

    Ours: ``inner_blocks.{1,2,3}`` / ``layer_blocks.{1,2,3}`` = conv (``.0``) + BN (``.1``) on C3..C5 (index 0 is
    C2 / P2, which RetinaNet has not). Theirs: ``inner_blocks.{0,1,2}.0.{weight,bias}``. BN is folded
    (:func:`fold_batchnorm`) with its running statistics, so the exported FPN computes what ours computes in eval mode.
    """
    src = f"model.{encoder}.backbone.fpn."
    out = {}
    for block in ("inner_blocks", "layer_blocks"):
        for ours, theirs in ((1, 0), (2, 1), (3, 2)):
            prefix = f"{src}{block}.{ours}."
            bn = {p: state[f"{prefix}1.{p}"] for p in ("weight", "bias", "running_mean", "running_var")
                  if f"{prefix}1.{p}" in state}
            if f"{prefix}0.weight" not in state or len(bn) < 4:
                continue                    # absent: the proof names the missing covered key
            weight, bias = fold_batchnorm(state[f"{prefix}0.weight"].float(), {k: v.float() for k, v in bn.items()})
            out[f"backbone.fpn.{block}.{theirs}.0.weight"] = weight
            out[f"backbone.fpn.{block}.{theirs}.0.bias"] = bias
    return out


def group(keys) -> dict[str, int]:
    """Counts per key prefix (up to the first index, at most 4 components): a readable summary of many keys."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = []
        for p in key.split(".")[:4]:
            if p.isdigit():
                break
            parts.append(p)
        name = ".".join(parts)
        counts[name] = counts.get(name, 0) + 1
    return counts


# ---------------------------------------------------------------- the report

@dataclass
class ExportReport:
    """What an export took, left out and proved; ``text()`` is what ``mcl export`` prints."""

    checkpoint: str
    fmt: str
    encoder: str
    arch: str
    exported: dict[str, int] = field(default_factory=dict)   # part -> tensors
    not_exported: list[str] = field(default_factory=list)    # checkpoint keys the format does not take
    dropped: list[str] = field(default_factory=list)         # taken parts' keys the format has no place for
    check: str | None = None                                 # the strict-load proof, when run
    out: str | None = None
    extra_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    usage: str = ""
    fpn_channels: int = 256
    head_convs: int = 0                                      # box-head convs taken from the neck
    has_fpn: bool = True                                     # False: backbone-only checkpoint, FPN stays fresh
    # the exported tensors under torchvision Mask R-CNN names, before a framework's renaming (for the proof)
    torchvision_names: dict = field(default_factory=dict, repr=False)

    def text(self) -> str:
        bar = "=" * 72
        lines = [bar, f"mcl export: {self.checkpoint} ({self.arch}, {self.encoder} encoder) -> {self.fmt}"]
        if self.out:
            lines.append(f"  written: {self.out}" + "".join(f"\n  written: {f}" for f in self.extra_files))
        total = sum(self.exported.values())
        per_part = ", ".join(f"{p} {n}" for p, n in self.exported.items())
        lines.append(f"  exported: {total} tensors ({per_part})")
        lines.append(f"  not exported: {len(self.not_exported)} checkpoint tensors"
                     + "".join(f"\n    {k} ({n})" for k, n in group(self.not_exported).items()))
        if self.dropped:
            lines.append(f"  dropped: {len(self.dropped)} BatchNorm num_batches_tracked counters "
                         f"(detectron2 files do not hold them)")
        lines.append(f"  left random in the detector/classifier: {_FRESH[self.fmt]}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.check:
            lines.append(f"  check: {self.check}")
        if self.usage:
            lines.append("  use:\n" + "\n".join(f"    {u}" for u in self.usage.rstrip().splitlines()))
        return "\n".join(lines + [bar])

    def __str__(self) -> str:
        return self.text()


# ---------------------------------------------------------------- conversion

def _usage(report: ExportReport, out: str) -> str:
    """How to use the exported file (torchvision) or the detectron2 settings it needs."""
    fmt, arch = report.fmt, report.arch
    if fmt == "torchvision-resnet":
        return (f"model = torchvision.models.{arch}(weights=None)\n"
                f"model.load_state_dict(torch.load({out!r}), strict=False)  # only fc stays fresh\n"
                f"input: RGB in 0-1, normalised by ImageNet mean/std")
    if fmt in DETECTOR_OF:
        kind = DETECTOR_OF[fmt]
        stock = {"maskrcnn": "maskrcnn_resnet50_fpn_v2", "fasterrcnn": "fasterrcnn_resnet50_fpn_v2",
                 "retinanet": "retinanet_resnet50_fpn_v2"}.get(kind)
        build = (f"torchvision.models.detection.{stock}(weights=None, weights_backbone=None, num_classes=K)"
                 if stock and arch == "resnet50" and report.fpn_channels == 256
                 else f"mcl.transfer.export.torchvision_detector({arch!r}, K, fpn_channels={report.fpn_channels}, "
                      f"kind={kind!r})")
        return (f"model = {build}\n"
                f"model.load_state_dict(torch.load({out!r}), strict=False)\n"
                f"or: mcl finetune --init CKPT (converts on the fly)")
    if fmt == "semantic-fpn":
        from mcl.transfer.finetune_config import ModelConfig

        head = ModelConfig()
        return (f"model = mcl.transfer.semseg.SemanticFPN({arch!r}, K + 1, {report.fpn_channels}, "
                f"{head.semseg_head_channels}, {head.semseg_head_norm!r})\n"
                f"model.load_state_dict(torch.load({out!r}), strict=False)\n"
                f"or: mcl finetune --task semseg --init CKPT (converts on the fly)")
    if fmt == "mmdet":
        return (f"mmdetection 3.x: python tools/train.py {Path(out).stem}_config.py (the config beside the weights: "
                f"RGB, ImageNet mean/std in 0-255, style pytorch, SyncBN, Shared4Conv1FCBBoxHead, load_from)")
    return ("detectron2 needs these settings (RGB input, ImageNet mean/std in 0-255, stride in the 3x3 conv):\n"
            + detectron2_config(arch, report.fpn_channels, out))


def convert_checkpoint(path, fmt: str, encoder: str = "online") -> tuple[dict, ExportReport]:
    """The exported object and its report (no file written, no strict-load proof run).

    Returns a ``{name: Tensor}`` state dict for the torchvision formats (torchvision names), and for
    ``detectron2`` the ``{"model": {name: float32 ndarray}, "__author__": "mcl", "matching_heuristics":
    True}`` payload that ``export`` pickles.
    """
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r} is unknown: choose one of {', '.join(FORMATS)}")
    if encoder not in ENCODERS:
        raise UserError(f"encoder {encoder!r} is unknown: choose online or target")
    state = read_checkpoint(path)
    layout = infer_layout(state, encoder)
    if fmt in DEPTH_ONLY_FORMATS and layout.arch not in DEPTHS:
        raise UserError(f"--format {fmt} writes plain ResNets 18-101 (its config names only a depth); the checkpoint "
                        f"holds a {layout.arch}: export it with a torchvision format")
    items = plan(state, fmt, encoder, layout)
    parts = ("backbone",) if fmt == "torchvision-resnet" or layout.fpn_channels is None else \
        PARTS if fmt in BOX_HEAD_FORMATS else ("backbone", "fpn")
    report = ExportReport(str(path), fmt, encoder, layout.arch, exported=dict.fromkeys(parts, 0),
                          fpn_channels=layout.fpn_channels or 256, has_fpn=layout.fpn_channels is not None,
                          head_convs=min(layout.neck_convs, HEAD_CONVS) if fmt in BOX_HEAD_FORMATS else 0)
    taken = {src for src, _, _ in items}
    result: dict = {}
    if fmt == "torchvision-retinanet" and layout.fpn_channels is not None:
        folded = retinanet_fpn(state, encoder)
        result.update(folded)
        report.exported["fpn"] = len(folded)
        taken |= {k for k in state if k.startswith(f"model.{encoder}.backbone.fpn.")
                  and k.split(".")[5] in ("1", "2", "3") and not k.endswith("num_batches_tracked")}
        report.notes.append("FPN: C3-C5 laterals and P3-P5 output convs, BatchNorm folded into conv + bias "
                            "(RetinaNet v2's FPN has no norm; the same function as ours in eval mode); our P2 lateral "
                            "and output have no counterpart; P6/P7 and the heads stay fresh")
    report.not_exported = [k for k in state if k not in taken]
    for src, name, part in items:
        report.torchvision_names[name] = state[src]
        if fmt in DEPTH_ONLY_FORMATS:
            name = to_detectron2(name) if fmt == "detectron2" else to_mmdet(name)
            if name is None:
                report.dropped.append(src)
                continue
        if name in result:  # the rules are meant to be one-to-one
            raise RuntimeError(f"export renaming collision: two tensors named {name!r}")
        result[name] = state[src]
        report.exported[part] += 1
    if fmt in DETECTOR_OF and layout.fpn_channels not in (None, 256):
        report.notes.append(f"FPN width {layout.fpn_channels} (torchvision's stock detectors have 256): build the "
                            f"detector with mcl finetune model.fpn_channels={layout.fpn_channels}")
    if fmt != "torchvision-resnet" and layout.fpn_channels is None:
        report.notes.append("backbone-only checkpoint (no FPN, no neck): the FPN and all box-head convs stay fresh")
    elif fmt in BOX_HEAD_FORMATS and layout.neck_convs < HEAD_CONVS:
        report.notes.append(f"the checkpoint's neck has {layout.neck_convs} convs: box head convs "
                            f"{layout.neck_convs + 1}-{HEAD_CONVS} stay fresh")
    if fmt == "detectron2":
        result = {"model": {k: v.detach().float().numpy() for k, v in result.items()}, "__author__": "mcl",
                  "matching_heuristics": True}
    if fmt == "mmdet":     # what mmengine's load_checkpoint (config's load_from) reads
        result = {"state_dict": result, "meta": {"mcl_export": "mmdet", "arch": layout.arch}}
    return result, report


# ---------------------------------------------------------------- the proof

def torchvision_detector(arch: str = "resnet50", num_classes: int = 91, fpn_channels: int = 256,
                         kind: str = "maskrcnn") -> nn.Module:
    """A random ``maskrcnn_resnet50_fpn_v2`` (other depths or FPN widths: the same layout), or another ``kind`` of
    ``mcl.transfer.detection.build_detector`` (``fasterrcnn``, ``retinanet``, ``keypointrcnn``)."""
    from mcl.transfer.detection import build_detector  # detection imports this module

    return build_detector(arch, num_classes, fpn_channels=fpn_channels, kind=kind)


DETECTOR_NAMES = {"maskrcnn": "Mask R-CNN v2", "fasterrcnn": "Faster R-CNN v2", "retinanet": "RetinaNet v2",
                  "keypointrcnn": "Keypoint R-CNN (v2 layout)"}


NOT_WRITTEN = ": nothing was written (the checkpoint is incomplete or altered; if mcl wrote it so, please report it)"


def _counters(keys) -> set[str]:
    return {k for k in keys if k.endswith(".num_batches_tracked")}


def verify_torchvision(state: dict[str, Tensor], arch: str, fmt: str, head_convs: int = HEAD_CONVS,
                       has_fpn: bool = True, fpn_channels: int = 256) -> str:
    """Load ``state`` into the real torchvision model and prove it covers exactly what it should.

    ``state`` must hold exactly the model's keys in the covered parts (ResNet body; for Mask R-CNN also the
    FPN and box-head convs ``0..head_convs-1``); after a non-strict load the missing keys must be exactly
    the others (the fresh parts), no key may be unexpected, and every loaded tensor must equal its source.
    Returns a one-line summary; raises ``UserError`` when the proof fails.
    """
    if fmt == "torchvision-resnet":
        model, name, covered = getattr(torchvision.models, arch)(weights=None), f"torchvision {arch}", None
    elif fmt == "semantic-fpn":
        from mcl.transfer.finetune_config import ModelConfig
        from mcl.transfer.semseg import SemanticFPN  # semseg imports this module

        head = ModelConfig()
        model = SemanticFPN(arch, 2, fpn_channels, head.semseg_head_channels, head.semseg_head_norm)
        name = f"mcl Semantic FPN ({arch}, FPN {fpn_channels})"
        covered = ("backbone.body.",) + (("backbone.fpn.",) if has_fpn else ())
    else:
        kind = DETECTOR_OF[fmt]
        model = torchvision_detector(arch, num_classes=2, fpn_channels=fpn_channels, kind=kind)
        name = f"torchvision {DETECTOR_NAMES[kind]} ({arch}, FPN {fpn_channels})"
        fpn = ("backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks.") if kind == "retinanet" else \
            ("backbone.fpn.",)
        covered = (("backbone.body.",) + (fpn if has_fpn else ())
                   + tuple(f"roi_heads.box_head.{k}." for k in range(head_convs)))
    own = model.state_dict()
    fresh = {k for k in own if (k.startswith("fc.") if covered is None else not k.startswith(covered))}
    if set(state) != set(own) - fresh:
        wrong = sorted(set(state) ^ (set(own) - fresh))
        raise UserError(f"export check failed for {name}: {len(wrong)} covered keys absent or extra "
                        f"(e.g. {wrong[0]}){NOT_WRITTEN}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(f"export check failed: the tensors do not fit {name} "
                        f"({str(exc).strip().splitlines()[-1].strip()[:160]}){NOT_WRITTEN}") from None
    # BatchNorm fills in a missing num_batches_tracked itself, so fresh BN counters are not reported missing
    missing, counters = set(result.missing_keys), _counters(fresh)
    if result.unexpected_keys or not missing <= fresh or missing - counters != fresh - counters:
        wrong = sorted(result.unexpected_keys) + sorted((missing ^ fresh) - counters)
        raise UserError(f"export check failed for {name}: {len(wrong)} keys unexpected or wrongly missing "
                        f"(e.g. {wrong[0]}){NOT_WRITTEN}")
    loaded = model.state_dict()
    unequal = [k for k, v in state.items() if not torch.equal(loaded[k], v)]
    if unequal:
        raise UserError(f"export check failed for {name}: {unequal[0]} differs after loading; "
                        f"please report this mcl bug")
    return (f"strict load into {name}: {len(state)} tensors loaded, all equal to the checkpoint's; "
            f"0 unexpected; the {len(fresh)} keys left out are exactly the fresh parts")


# ---------------------------------------------------------------- writing

class _PortablePickler(pickle.Pickler):
    """Pickles arrays as ``numpy.ndarray(shape, "<f4", bytearray)``, readable with numpy 1.x and 2.x.

    numpy 2's own array pickles name ``numpy._core``, which the numpy 1.x of many detectron2 installs
    cannot import.
    """

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj, dtype="<f4")
            return np.ndarray, (arr.shape, "<f4", bytearray(arr.tobytes()))
        return NotImplemented


def detectron2_yaml_path(out: Path) -> Path:
    """Where the detectron2 settings go: ``NAME_config.yaml`` beside ``NAME.pkl``."""
    return out.with_name(out.stem + "_config.yaml")


def mmdet_config_path(out: Path) -> Path:
    """Where the mmdetection config goes: ``NAME_config.py`` beside ``NAME.pth``."""
    return out.with_name(out.stem + "_config.py")


def export(path, fmt: str, out, encoder: str = "online", force: bool = False) -> ExportReport:
    """Convert ``path`` to ``fmt``, prove it (torchvision formats) and write ``out`` atomically.

    Refuses to overwrite an existing output (or, for detectron2, its ``*_config.yaml``) unless ``force``.
    """
    out = Path(out)
    if fmt == "detectron2" and out.suffix != ".pkl":
        raise UserError(f"--out {out}: detectron2 reads this format only from a .pkl file, "
                        f"name it e.g. {out.with_suffix('.pkl')}")
    outputs = [out] + ([detectron2_yaml_path(out)] if fmt == "detectron2" else
                       [mmdet_config_path(out)] if fmt == "mmdet" else [])
    for target in outputs:
        if target.is_dir():
            raise UserError(f"--out {target} is a folder: give a file name, e.g. {target / 'mcl_export.pth'}")
        if target.exists() and not force:
            raise UserError(f"{target} already exists: pass --force to overwrite it, or choose another --out")
    payload, report = convert_checkpoint(path, fmt, encoder)
    if fmt in DEPTH_ONLY_FORMATS:     # coverage proven on the torchvision names the framework's are renamed from
        proof = verify_torchvision(report.torchvision_names, report.arch, "torchvision-maskrcnn", report.head_convs,
                                   report.has_fpn, report.fpn_channels)
        report.check = (f"{proof}; renamed one-to-one to {fmt} names (proven against {fmt} itself by "
                        f"tests/transfer/test_transfer_{'detectron2' if fmt == 'detectron2' else 'mmdet'}.py)")
    if fmt == "detectron2":
        text = detectron2_config(report.arch, report.fpn_channels, str(out.resolve()))
        write_atomic(out, lambda f: _PortablePickler(f, protocol=4).dump(payload))
        write_atomic(outputs[1], lambda f: f.write(text.encode()))
        report.extra_files.append(str(outputs[1]))
    elif fmt == "mmdet":
        text = mmdet_config(report.arch, report.fpn_channels, str(out.resolve()))
        write_atomic(out, lambda f: torch.save(payload, f))
        write_atomic(outputs[1], lambda f: f.write(text.encode()))
        report.extra_files.append(str(outputs[1]))
    else:
        report.check = verify_torchvision(payload, report.arch, fmt, report.head_convs, report.has_fpn,
                                          report.fpn_channels)
        write_atomic(out, lambda f: torch.save(payload, f))
    report.out = str(out)
    report.usage = _usage(report, str(out.resolve()) if fmt in DEPTH_ONLY_FORMATS else str(out))
    return report
