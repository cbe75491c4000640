"""Skip optimizer steps whose loss or gradient is not finite, without a host sync per step.

Per optimizer step, on the device: ``ok = isfinite(loss) & all gradients finite`` (with several
processes, gradients only: they are all-reduced, so every process takes the same decision). The
parameters, the optimizer state and the model's buffers (BN statistics, MoCo's queue) are copied
before the step and put back with ``torch.where(ok, new, old)`` after it; the EMA target update
(``mcl.models.ema.ema_update(..., ok)``) is
weighted by ``ok``. A skipped step therefore changes nothing but the step counter (and the lr
schedule, which follows the step counter).

Counters stay on the device; the host reads them every ``trainer.nonfinite_check_every`` steps and
before every checkpoint is written. Once ``trainer.max_nonfinite_steps`` consecutive steps were
skipped, the run stops with :class:`NonFiniteError` and no checkpoint is written after that point.

Testing hook: ``MCL_INJECT_NAN_AT_STEPS="5,6"`` multiplies the loss of optimizer steps 5 and 6
(1-based) by NaN.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from mcl.engine.checkpoints import load_checkpoint, newest_valid_checkpoint
from mcl.errors import UserError

INJECT_ENV = "MCL_INJECT_NAN_AT_STEPS"


class NonFiniteError(UserError):
    """Too many consecutive non-finite steps: the run stops, keeping the last good checkpoint."""


def injected_steps(env: dict | None = None) -> set[int]:
    """Optimizer steps (1-based) whose loss the test hook turns into NaN."""
    text = (env if env is not None else os.environ).get(INJECT_ENV, "")
    return {int(s) for s in text.replace(" ", "").split(",") if s}


def grads_finite(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """0-d bool on the device: every gradient finite (max-abs norms, so no overflow); None if no grads."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return None
    return torch.isfinite(torch.stack(torch._foreach_norm(grads, ord=float("inf")))).all()


class NonFiniteGuard:
    """The per-step decision, the snapshot/restore around the optimizer step, and device counters."""

    def __init__(self, inject: set[int] | None = None, use_loss: bool = True):
        self.inject = set(inject or ())
        self.use_loss = use_loss
        self._loss_ok: torch.Tensor | None = None
        self._grads_ok: torch.Tensor | None = None
        self._saved: list[torch.Tensor] = []
        self._snaps: list[torch.Tensor] = []
        self._fresh: list[torch.Tensor] = []
        self.counters: torch.Tensor | None = None    # [skipped, run, peak, peak_end, steps] int64

    # ----- during the step ------------------------------------------------------------------------
    def observe_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The loss to backpropagate (NaN at injected steps); remembers whether it is finite."""
        if step in self.inject:
            loss = loss * float("nan")
        if self.use_loss:
            ok = torch.isfinite(loss.detach())
            self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok
        return loss

    def observe_grads(self, optimizer: torch.optim.Optimizer) -> None:
        self._grads_ok = grads_finite(optimizer)

    def snapshot(self, optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
        """Copy what an optimizer step (and the forward inside it) may change."""
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state = [t for p in params for t in optimizer.state.get(p, {}).values() if torch.is_tensor(t)]
        saved = params + state + [b for b in module.buffers()]
        if [id(t) for t in saved] != [id(t) for t in self._saved] or any(
                s.shape != t.shape for s, t in zip(self._snaps, saved)):
            self._snaps = [torch.empty_like(t) for t in saved]
        self._saved = saved
        with torch.no_grad():
            torch._foreach_copy_(self._snaps, saved)
        self._state_before = {id(t) for t in state}
        self._params = params
        self._optimizer = optimizer

    @torch.no_grad()
    def restore(self) -> torch.Tensor | None:
        """After the step: undo it where not ok; update the counters. Returns ``ok`` (None: no decision)."""
        flags = [f for f in (self._loss_ok, self._grads_ok) if f is not None]
        self._loss_ok = self._grads_ok = None
        if not flags:
            return None
        ok = flags[0] if len(flags) == 1 else flags[0] & flags[1]
        for t, s in zip(self._saved, self._snaps):
            torch.where(ok, t, s, out=t)
        for p in self._params:                   # state created by this step (first step): as if absent
            for t in self._optimizer.state.get(p, {}).values():
                if torch.is_tensor(t) and id(t) not in self._state_before and t.is_floating_point():
                    t.masked_fill_(~ok, 0)
        self._count(ok)
        return ok

    def _count(self, ok: torch.Tensor) -> None:
        if self.counters is None:
            self.counters = torch.zeros(5, dtype=torch.int64, device=ok.device)
        skipped, run, peak, peak_end, steps = self.counters.unbind(0)
        bad = (~ok).long()
        run = (run + 1) * bad
        steps = steps + 1
        higher = run > peak
        self.counters = torch.stack([skipped + bad, run, torch.where(higher, run, peak),
                                     torch.where(higher, steps, peak_end), steps])

    # ----- on the host --------------------------------------------------------------------------
    def read(self) -> dict:
        """One host sync: ``skipped``, ``run`` (current streak), ``peak`` (longest), ``peak_end``, ``steps``."""
        values = [0] * 5 if self.counters is None else self.counters.tolist()
        return dict(zip(("skipped", "run", "peak", "peak_end", "steps"), values))


class NonFiniteMonitor(Callback):
    """Logs ``train/nonfinite_skipped``; reads the guard every ``check_every`` steps and before each save,
    and stops the run after ``max_consecutive`` skipped steps in a row."""

    def __init__(self, run_dir: Path, check_every: int = 50, max_consecutive: int = 25):
        self.run_dir = Path(run_dir)
        self.check_every, self.max_consecutive = int(check_every), int(max_consecutive)
        self.skipped_before = 0          # skipped in earlier sessions of this run (from the checkpoint)
        self.first_step = 0              # global step when this session started
        self.last = {"skipped": 0, "run": 0, "peak": 0, "peak_end": 0, "steps": 0}
        self._guard: NonFiniteGuard | None = None
        self._trainer = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._guard = getattr(pl_module, "guard", None)
        self._trainer = trainer
        self.first_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        guard = self._guard
        if guard is None or guard.counters is None:
            return
        pl_module.log("train/nonfinite_skipped", guard.counters[0].float() + self.skipped_before, batch_size=1)
        if trainer.global_step % self.check_every == 0:
            self.check()

    def on_train_end(self, trainer, pl_module) -> None:
        self.check()

    @property
    def skipped(self) -> int:
        """Steps skipped over the whole run (all sessions), as of the last read."""
        return self.skipped_before + self.last["skipped"]

    def check(self) -> None:
        """Read the counters (host sync); raise :class:`NonFiniteError` after too long a streak."""
        if self._guard is None:
            return
        self.last = self._guard.read()
        if self.last["peak"] >= self.max_consecutive:
            raise NonFiniteError(self.message())

    def message(self) -> str:
        end = self.first_step + self.last["peak_end"]
        start = end - self.last["peak"] + 1
        step = self._trainer.global_step if self._trainer is not None else end
        good = newest_valid_checkpoint(self.run_dir, warn=lambda _: None)
        where = (f"last good checkpoint: {good} (step {load_checkpoint(good).get('global_step')})" if good
                 else f"no checkpoint was saved in {self.run_dir}")
        return (f"{self.last['peak']} consecutive optimizer steps had a non-finite loss or gradient (steps "
                f"{start}-{end}, seen at step {step}; limit trainer.max_nonfinite_steps={self.max_consecutive}); "
                f"stopped without saving; {where}; lower optim.base_lr or check the data, then --resume")

    def state_dict(self) -> dict:
        self.check()                     # refuse to write a checkpoint after too many bad steps
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_before = int(state.get("skipped", 0))
