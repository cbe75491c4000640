"""What fine-tuning a detector (``mcl.transfer.detection``) and a segmenter (``mcl.transfer.semseg``) share.

:class:`FinetuneBase` holds the optimisation, the frozen modules, the saved file and the cross-process gather;
a subclass builds its network (``network()`` returns it) and defines its steps and its evaluation.

Optimisation: SGD (momentum; ``weight_decay`` on weights, ``weight_decay_norm`` on BatchNorm and GroupNorm
parameters, detectron2's convention), the lr stepped per optimizer step by ``lr_factor`` (linear warm-up,
x0.1 at the milestones) of ``resolve_schedule`` at the run's global batch.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from mcl.engine.checkpoints import atomic_torch_save
from mcl.errors import UserError
from mcl.transfer.finetune_config import ResolvedSchedule, lr_factor, resolve_schedule

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def norm_split(model: nn.Module) -> tuple[list, list]:
    """Trainable parameters as (not in a norm layer, in a BatchNorm / GroupNorm) for separate weight decay."""
    other, norm = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm if isinstance(module, NORM_LAYERS) else other).append(p)
    return other, norm


def freeze_modules(model: nn.Module, prefixes: list[str]) -> None:
    """Stop gradients to every parameter under the module names ``prefixes`` (e.g. ``backbone.body``,
    ``roi_heads.box_head.0``) and put those modules in eval mode (the caller keeps them there: ``train()``).
    A prefix that names no module is an error."""
    modules = dict(model.named_modules())
    for prefix in prefixes:
        if prefix not in modules:
            close = sorted(n for n in modules if n.count(".") <= 2)[:12]
            raise UserError(f"model.freeze: {prefix!r} names no module of the detector (e.g. {', '.join(close[1:])})")
        modules[prefix].requires_grad_(False)
        modules[prefix].eval()


class FinetuneBase(L.LightningModule):
    """A fine-tuned network with ``cfg`` (a ``FinetuneConfig``) and ``frozen`` (module names kept frozen)."""

    TASK: str                    # the file's mcl_task: "detection" or "semseg"
    cfg: object
    frozen: list[str]

    def network(self) -> nn.Module:
        """The module being fine-tuned (its names are what ``model.freeze`` names)."""
        raise NotImplementedError

    def start(self) -> None:
        """Once ``network()`` is built: freeze ``model.freeze``, and no evaluation yet."""
        self.frozen = list(self.cfg.model.freeze or [])
        freeze_modules(self.network(), self.frozen)
        self.eval_dir: Path | None = None
        self.eval_extra: dict = {}
        self.last_results: dict | None = None
        self.last_eval_step = -1

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but frozen modules stay in eval mode (their BatchNorm statistics fixed)."""
        super().train(mode)
        modules = dict(self.network().named_modules())   # by name: SyncBN conversion replaces modules
        for name in getattr(self, "frozen", []):
            modules[name].eval()
        return self

    def save(self, path: str | Path) -> Path:
        """The weights and what rebuilds them (the constructor's arguments), written atomically."""
        path = Path(path)
        atomic_torch_save({"hyper_parameters": dict(self.hparams), "state_dict": self.state_dict(),
                           "mcl_task": self.TASK}, path)
        return path

    @classmethod
    def from_file(cls, path: str | Path) -> FinetuneBase:
        """The fine-tuned module saved by ``mcl finetune`` (``detector.pt``, ``semseg.pt``) or one of its
        Lightning checkpoints, as the class of its task (files without ``mcl_task`` are detectors)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"fine-tuned model not found: {path} (give RUN_DIR/detector.pt, RUN_DIR/semseg.pt "
                            f"or a .ckpt)")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot read {path} as a checkpoint: {str(exc).splitlines()[0]}") from None
        if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
            raise UserError(f"{path} is not an mcl finetune checkpoint (no hyper_parameters/state_dict); "
                            f"give RUN_DIR/detector.pt or RUN_DIR/semseg.pt")
        from mcl.transfer.detection import DetectionFinetuneModule  # both import this module
        from mcl.transfer.semseg import SemsegFinetuneModule

        task = ckpt.get("mcl_task") or ckpt["hyper_parameters"].get("config", {}).get("task", "detection")
        kind = {"detection": DetectionFinetuneModule, "semseg": SemsegFinetuneModule}[task]
        if cls is not FinetuneBase and not issubclass(kind, cls):
            raise UserError(f"{path} holds a {task} model, not a {cls.TASK} one")
        module = kind(**ckpt["hyper_parameters"])
        module.load_state_dict(ckpt["state_dict"])
        return module

    def plan(self, world_size: int, accumulate: int) -> ResolvedSchedule:
        return resolve_schedule(self.cfg.schedule, self.cfg.data.batch_size * world_size * accumulate)

    def gather(self, items: list) -> list:
        """``items`` of every process, concatenated in rank order (as is with one process)."""
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            parts = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, items)
            return [x for part in parts for x in part]
        return items

    def configure_optimizers(self):
        s = self.cfg.schedule
        plan = self.plan(self.trainer.world_size, self.trainer.accumulate_grad_batches)
        other, norm = norm_split(self.network())
        optimizer = torch.optim.SGD([{"params": other, "weight_decay": s.weight_decay},
                                     {"params": norm, "weight_decay": s.weight_decay_norm}],
                                    lr=plan.lr, momentum=s.momentum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, plan, s.warmup_factor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
