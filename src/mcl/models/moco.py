"""MoCo v2 (arXiv 1911.05722, 2003.04297) as a baseline in the MCL framework.

For a batch of ``B`` images with two views ``x1, x2`` (each ``(B, 3, S, S)``):

    q = normalize(head(backbone(x1)))              (B, D)  online ("query") encoder, with gradient
    k = normalize(head_t(backbone_t(x2)))          (B, D)  momentum ("key") encoder, no gradient
    logits = [q . k, q @ Q^T] / T                  (B, 1 + K)   Q: queue of past keys, (K, D)
    L = CE(logits, 0) = mean_b -log( e^{q_b.k_b/T} / (e^{q_b.k_b/T} + sum_j e^{q_b.Q_j/T}) )

After the loss the keys of the *global* batch (all-gathered over processes, rank order) replace
the oldest ``G`` queue rows: ``Q[p:p+G] = gather(k)``, ``p <- (p + G) mod K``; this needs
``K mod G == 0``. After every optimizer step ``theta_t <- m theta_t + (1 - m) theta`` (m = 0.999,
constant). MoCo v2: D = 128, hidden 2048, K = 65536, T = 0.2. As in MoCo v2, the loss is one
direction (x1 queries, x2 keys).

Key names follow MCL's encoder so ``mcl export`` finds the ResNet: ``online.backbone.body.*``
(torchvision ResNet names, ``fc`` and ``avgpool`` left out), ``online.head.*`` (the MLP), and the
same under ``target.*``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from mcl.losses import MoCoStats, gather_targets, moco_loss
from mcl.models.backbone import RESNET_CHANNELS, make_resnet
from mcl.models.ema import ema_update


class ResNetBody(nn.Module):
    """A torchvision ResNet up to ``layer4`` as ``body`` (same keys as ``ResNetFPN.body``), globally pooled.

    ``(N, 3, S, S) -> (N, C5)`` with ``C5`` = 512 (ResNet-18/34) or 2048 (ResNet-50/101).
    """

    def __init__(self, arch: str):
        super().__init__()
        self.body = IntermediateLayerGetter(make_resnet(arch), {"layer4": "c5"})
        self.out_channels = RESNET_CHANNELS[arch][-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)["c5"].mean(dim=(2, 3))


class MoCoEncoder(nn.Module):
    """``backbone`` (pooled ResNet) + ``head`` (MoCo v2 MLP: Linear C5->H, ReLU, Linear H->D): ``(N, D)``."""

    def __init__(self, arch: str, hidden: int, dim: int):
        super().__init__()
        self.backbone = ResNetBody(arch)
        self.head = nn.Sequential(nn.Linear(self.backbone.out_channels, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


# ---------------------------------------------------------------- pure functions

@torch.no_grad()
def enqueue(queue: Tensor, ptr: int, keys: Tensor) -> int:
    """Write ``keys (G, D)`` over ``queue[ptr:ptr+G]`` in place and return the next pointer ``(ptr+G) mod K``.

    Requires ``K mod G == 0`` (then ``ptr`` is always a multiple of ``G`` and a write never wraps).
    """
    size, n = queue.shape[0], keys.shape[0]
    if n == 0 or size % n:
        raise ValueError(f"queue size {size} is not a multiple of the number of keys per step {n}")
    if ptr % n:
        raise ValueError(f"queue pointer {ptr} is not a multiple of the keys per step {n}")
    queue[ptr:ptr + n] = keys.to(queue.dtype)
    return (ptr + n) % size


def gather_keys(keys: Tensor) -> Tensor:
    """All-gather ``(B, D)`` keys of every process into ``(W*B, D)`` in rank order (identity without a group)."""
    return gather_targets(keys.detach())[0]


# ---------------------------------------------------------------- the model

@dataclass
class MoCoOutput:
    loss: Tensor
    stats: MoCoStats


class MoCo(nn.Module):
    """Online encoder, momentum (target) encoder and the key queue; ``forward`` is one MoCo v2 step."""

    def __init__(self, *, arch: str, head_hidden: int, embed_dim: int, queue_size: int, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if queue_size < 1:
            raise ValueError(f"queue size must be >= 1, got {queue_size}")
        self.temperature = float(temperature)
        self.online = MoCoEncoder(arch, head_hidden, embed_dim)
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, embed_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._host_ptr: int | None = None    # queue_ptr's value on the host (no device read per step)

    @classmethod
    def from_config(cls, cfg) -> "MoCo":
        """The model of an ``mcl.methods.moco.MoCoConfig`` (its ``model`` section)."""
        m = cfg.model
        return cls(arch=m.arch, head_hidden=m.head_hidden, embed_dim=m.embed_dim, queue_size=m.queue_size,
                   temperature=m.temperature)

    def check_queue(self, keys_per_step: int) -> None:
        """Refuse a queue that ``keys_per_step`` (the global batch) does not divide, naming one that it does."""
        size = self.queue.shape[0]
        if keys_per_step < 1 or size % keys_per_step:
            raise ValueError(f"queue size {size} is not a multiple of the {keys_per_step} keys per step "
                             f"(the global batch); {max(size // max(keys_per_step, 1), 1) * keys_per_step} is")

    def forward(self, crops: Tensor, gather: bool = True) -> MoCoOutput:
        """``crops (B, 2, 3, S, S)`` -> loss of view 0 as queries against view 1's keys; then enqueue the keys."""
        if crops.dim() != 5 or crops.shape[1] != 2:
            raise ValueError(f"MoCo expects crops of shape (B, 2, 3, S, S), got {tuple(crops.shape)}")
        q = F.normalize(self.online(crops[:, 0]).float(), dim=1)
        with torch.no_grad():
            k = F.normalize(self.target(crops[:, 1]).float(), dim=1)
        loss, stats = moco_loss(q, k, self.queue.clone(), self.temperature)
        self.push_keys(k, gather)
        return MoCoOutput(loss, stats)

    @torch.no_grad()
    def push_keys(self, keys: Tensor, gather: bool = True) -> None:
        """Enqueue this step's keys, all-gathered over processes first when ``gather``."""
        keys = gather_keys(keys) if gather else keys.detach()
        self.check_queue(keys.shape[0])
        if self._host_ptr is None:            # first step, or after a checkpoint was loaded: read it once
            self._host_ptr = int(self.queue_ptr)
        self._host_ptr = enqueue(self.queue, self._host_ptr, keys)
        self.queue_ptr.fill_(self._host_ptr)

    def _load_from_state_dict(self, *args, **kwargs):
        self._host_ptr = None                 # the loaded queue_ptr is the truth
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA step of the key encoder towards the online encoder (parameters only; BN buffers are its own)."""
        ema_update(self.target, self.online, momentum)
