"""FLOPs per training step, counted with ``torch.utils.flop_counter.FlopCounterMode``, split into parts.

Convention (FlopCounterMode's): a FLOP is one multiply or one add of a dense op, so a convolution
or a linear layer costs ``2 x multiply-accumulates`` (a 3x3 conv ``Cin -> Cout`` on an ``H x W`` map
of ``N`` images: ``2 * Cin * Cout * 9 * H * W * N``). Counted ops: convolutions (forward and
``convolution_backward``, which counts the input and weight gradients actually computed), ``mm``,
``addmm``, ``bmm``, ``baddbmm`` and attention. Not counted: BatchNorm, ReLU, pooling,
interpolation, indexing, the loss's softmax, the optimizer and the EMA update (all memory-bound
elementwise work, a few percent of a ResNet's multiply-adds).

One training step = ``loss = forward(); loss.backward()``, so the online encoder and predictors
are counted forward and backward and the (no-grad) target encoder forward only.

Parts. Every leaf module with parameters is hooked: its forward FLOPs are the counter's increase
between its forward pre- and post-hook, its backward FLOPs the increase while the autograd node
that produced its output runs (node pre-hook to node hook). A part is a module-name prefix
(``online.neck`` -> ``neck``); what no part claims (the loss's matmuls) is ``other``.
FlopCounterMode's own per-module table is not used: its backward attribution is best-effort and
wrong for modules called more than once per step (MCL's neck, four times per view in faithful mode).

Meta device. FLOP formulas need only shapes, so the model is built on (or moved to) the ``meta``
device and run on ``meta`` inputs: no memory and no arithmetic, seconds for a paper-mode step of
ResNet-50 on 2 x 172 montages of 224 px. Two ops whose output size depends on data have no meta
kernel; :class:`MetaShims` answers them (``bincount`` -> ``minlength`` bins, ``.item()`` -> 0), which
is exact here because they only touch labels and queue pointers, never shapes of counted ops.
``tests/bench/test_bench_flops.py`` checks that meta and a real CPU run give the same count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

# (module-name prefix, part) pairs: the first matching prefix wins.
MCL_PARTS = (
    ("online.backbone.body", "backbone"),
    ("online.backbone.fpn", "fpn"),
    ("online.neck", "neck"),
    ("predictors", "predictors"),
    ("target.backbone.body", "target.backbone"),
    ("target.backbone.fpn", "target.fpn"),
    ("target.neck", "target.neck"),
)
MOCO_PARTS = (
    ("online.backbone", "backbone"),
    ("online.head", "head"),
    ("target.backbone", "target.backbone"),
    ("target.head", "target.head"),
)
RESNET_PARTS = (("fc", "head"), ("", "backbone"))


@dataclass
class StepFlops:
    """FLOPs of one training step: totals, forward/backward, and per part ``{part: {"forward", "backward"}}``."""

    total: int
    forward: int
    backward: int
    parts: dict[str, dict[str, int]] = field(default_factory=dict)
    unique_images: int = 1

    @property
    def per_image(self) -> float:
        return self.total / max(self.unique_images, 1)

    def part_total(self, name: str) -> int:
        """Forward + backward of a part; ``"target"`` sums every ``target.*`` part."""
        names = [p for p in self.parts if p == name or p.startswith(name + ".")]
        return sum(self.parts[p]["forward"] + self.parts[p]["backward"] for p in names)

    def as_dict(self) -> dict:
        return {
            "total_flops": self.total,
            "forward_flops": self.forward,
            "backward_flops": self.backward,
            "unique_images": self.unique_images,
            "flops_per_unique_image": self.per_image,
            "parts": {k: dict(v, total=v["forward"] + v["backward"]) for k, v in self.parts.items()},
        }


class MetaShims(TorchDispatchMode):
    """Answers the data-dependent ops that have no meta kernel, for meta inputs only.

    ``bincount(x, minlength=n)`` -> ``n`` zero bins (the callers bin labels ``< n``); ``.item()`` /
    ``int(t)`` -> 0 (queue pointers). Every other op, and every non-meta call, runs unchanged.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.bincount.default and args[0].is_meta:
            minlength = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
            return torch.zeros(max(int(minlength), 1), dtype=torch.long, device="meta")
        if func is aten._local_scalar_dense.default and args[0].is_meta:
            return False if args[0].dtype == torch.bool else 0
        return func(*args, **kwargs)


def part_of(name: str, parts: tuple[tuple[str, str], ...]) -> str | None:
    """The part a module named ``name`` belongs to (first matching prefix), or None."""
    for prefix, part in parts:
        if prefix == "" or name == prefix or name.startswith(prefix + "."):
            return part
    return None


class _PartTracker:
    """Forward/backward FLOPs per part from hooks on the leaf modules that hold parameters."""

    def __init__(self, model: nn.Module, parts: tuple[tuple[str, str], ...], counter: FlopCounterMode):
        self.counter = counter
        self.counts: dict[str, dict[str, int]] = {}
        self._handles = []
        self._leaves = []
        self._start: dict[int, int] = {}
        for name, module in model.named_modules():
            part = part_of(name, parts)
            has_params = next(module.parameters(recurse=False), None) is not None
            if part is None or not has_params or next(module.children(), None) is not None:
                continue
            self.counts.setdefault(part, {"forward": 0, "backward": 0})
            self._leaves.append((module, part))

    def _total(self) -> int:
        return sum(self.counter.flop_counts["Global"].values()) if "Global" in self.counter.flop_counts else 0

    def _add(self, part: str, key: str, value: int) -> None:
        self.counts[part][key] += value

    def __enter__(self) -> _PartTracker:
        for module, part in self._leaves:
            self._handles.append(module.register_forward_pre_hook(self._pre(part)))
            self._handles.append(module.register_forward_hook(self._post(part)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, part: str):
        def hook(module, inputs):
            self._start[id(module)] = self._total()
        return hook

    def _post(self, part: str):
        def hook(module, inputs, output):
            self._add(part, "forward", self._total() - self._start.pop(id(module)))
            node = output.grad_fn if isinstance(output, Tensor) else None
            if node is not None:
                self._hook_node(node, part)
        return hook

    def _hook_node(self, node, part: str) -> None:
        start = [0]

        def pre(grad_outputs):
            start[0] = self._total()

        def post(grad_inputs, grad_outputs):
            self._add(part, "backward", self._total() - start[0])

        node.register_prehook(pre)
        node.register_hook(post)


def count_step(model: nn.Module, forward: Callable[[], Tensor], parts: tuple[tuple[str, str], ...] = (),
               unique_images: int = 1, backward: bool = True) -> StepFlops:
    """Count ``loss = forward(); loss.backward()`` with FlopCounterMode, per part of ``model``.

    ``forward`` runs the model (on whatever device its inputs are) and returns a scalar loss. With
    ``backward=False`` only the forward is counted. Meta-device data-dependent ops are shimmed.
    """
    with FlopCounterMode(display=False) as counter:
        with _PartTracker(model, parts, counter) as tracker, MetaShims():
            loss = forward()
            forward_total = tracker._total()
            if backward:
                loss.backward()
            total = tracker._total()
    counts = {k: v for k, v in tracker.counts.items() if v["forward"] or v["backward"]}
    claimed_forward = sum(v["forward"] for v in counts.values())
    claimed_backward = sum(v["backward"] for v in counts.values())
    other = {"forward": forward_total - claimed_forward, "backward": total - forward_total - claimed_backward}
    if other["forward"] or other["backward"]:
        counts["other"] = other
    return StepFlops(total=total, forward=forward_total, backward=total - forward_total, parts=counts,
                     unique_images=unique_images)


@contextlib.contextmanager
def build_on(device: str | torch.device) -> Iterator[None]:
    """Build modules directly on ``device`` (``meta``: no memory, no init arithmetic)."""
    with torch.device(device):
        yield


# ---------------------------------------------------------------------------------------------- MCL

def mcl_step_flops(cfg, compute_mode: str | None = None, device: str = "meta", batch_size: int | None = None,
                   seed: int = 0) -> StepFlops:
    """FLOPs of one MCL training step for an ``MCLConfig`` (its batch, crops, model; ``compute_mode``).

    Single process (no all-gather): each view's logits are ``cells x B`` instead of ``cells x global
    batch`` (the loss's matmuls are well under 0.1% of the step either way).
    """
    import copy

    from mcl.methods.mcl import build_model

    cfg = copy.deepcopy(cfg)
    if compute_mode is not None:
        cfg.model.compute_mode = compute_mode
    if batch_size is not None:
        cfg.data.batch_size = batch_size
    with build_on(device):
        model = build_model(cfg)
    model.train()
    b, s = cfg.data.batch_size, cfg.data.crop_size
    crops = _input((b, 2 * len(cfg.montage.ratios), 3, s, s), device, seed)
    generator = torch.Generator().manual_seed(seed)
    return count_step(model, lambda: model(crops, generator=generator, gather=False).loss, MCL_PARTS,
                      unique_images=b)


def _input(shape: tuple[int, ...], device: str | torch.device, seed: int) -> Tensor:
    if torch.device(device).type == "meta":
        return torch.empty(shape, device="meta")
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


# ---------------------------------------------------------------------------------------------- references

def supervised_step_flops(arch: str = "resnet50", image_size: int = 224, batch_size: int = 2,
                          device: str = "meta", num_classes: int = 1000, backward: bool = True) -> StepFlops:
    """Plain supervised training of a torchvision ResNet: forward + backward of ``CE(model(x), y)``
    (``backward=False``: the forward alone, e.g. a momentum encoder's share)."""
    import torchvision

    with build_on(device):
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    model.train()
    x = _input((batch_size, 3, image_size, image_size), device, 0)
    y = torch.zeros(batch_size, dtype=torch.long, device=device)
    return count_step(model, lambda: nn.functional.cross_entropy(model(x), y), RESNET_PARTS,
                      unique_images=batch_size, backward=backward)


def moco_step_flops(arch: str, image_size: int, batch_size: int, device: str = "meta",
                    queue_size: int | None = None) -> StepFlops:
    """MoCo v2 (``mcl.models.moco.MoCo``, ``MoCoConfig``'s head): query encoder forward + backward on one view,
    key encoder forward on the other, logits against the ``K``-key queue (None: the config's 65536)."""
    from mcl.methods.moco import MoCoConfig
    from mcl.models.moco import MoCo

    cfg = MoCoConfig()
    cfg.model.arch = arch
    cfg.model.queue_size = queue_size or cfg.model.queue_size
    with build_on(device):
        model = MoCo.from_config(cfg)
    model.train()
    crops = _input((batch_size, 2, 3, image_size, image_size), device, 0)
    return count_step(model, lambda: model(crops, gather=False).loss, MOCO_PARTS, unique_images=batch_size)


def moco_flops_analytic(supervised: StepFlops, forward_only: StepFlops, embed_dim: int = 128,
                        head_hidden: int = 2048, queue_size: int = 65536, c5: int = 2048) -> float:
    """MoCo v2 FLOPs per image from ResNet counts, for when no MoCo model can be run.

    ``1 x (ResNet fwd+bwd) + 1 x (ResNet fwd)`` without the 1000-way ``fc``, plus the MLP head
    (``C5 -> H -> D``: fwd+bwd on the query, fwd on the key) and the query-vs-queue logits
    (``2 D (K + 1)`` forward, the same again for the query's gradient).
    """
    fc = supervised.parts.get("head", {"forward": 0, "backward": 0})
    fc_fwd = fc["forward"] / supervised.unique_images
    fc_all = (fc["forward"] + fc["backward"]) / supervised.unique_images
    query = supervised.per_image - fc_all
    key = forward_only.per_image - fc_fwd
    head_fwd = 2 * (c5 * head_hidden + head_hidden * embed_dim)
    logits_fwd = 2 * embed_dim * (queue_size + 1)
    return query + key + 3 * head_fwd + head_fwd + 2 * logits_fwd


def conv_flops(cin: int, cout: int, kernel: int, height: int, width: int, batch: int = 1) -> int:
    """Analytic forward FLOPs of a dense ``kernel x kernel`` conv producing an ``H x W`` map.

    ``2 Cin Cout k^2 H W N``.
    """
    return 2 * cin * cout * kernel * kernel * height * width * batch


def neck_p2_over_backbone(arch: str = "resnet50", crop_size: int = 224, fpn_channels: int = 256,
                          neck_convs: int = 4, device: str = "meta") -> float:
    """Forward FLOPs of the neck's 3x3 convs on one image's P2 over the ResNet body's forward (spec: ~1.8x)."""
    import torchvision

    with build_on(device):
        body = getattr(torchvision.models, arch)(weights=None)
    x = _input((1, 3, crop_size, crop_size), device, 0)
    backbone = count_step(body, lambda: body(x).sum(), RESNET_PARTS, backward=False).parts["backbone"]["forward"]
    p2 = crop_size // 4
    return neck_convs * conv_flops(fpn_channels, fpn_channels, 3, p2, p2) / backbone
