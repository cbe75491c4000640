"""Graceful stop: SIGTERM, SIGINT or SIGUSR1 -> checkpoint at the next optimizer-step boundary, stop, exit 0.

The signal handler only records the signal (a Python attribute: free to test every batch). At the
end of the next batch that completed an optimizer step, the run saves ``stepNNNNNNN.ckpt`` and
``last.ckpt`` through the checkpoint callback (atomic, our format, counted in the kept-K set) and
asks Lightning to stop; ``mcl pretrain`` then prints the checkpoint and the ``--resume`` command and
returns 0. With several processes the flag is agreed by an all-reduce (max) every
``trainer.stop_check_every`` steps, so a signal that reached one process stops all of them at the
same step. Under SLURM, SIGUSR1 (``#SBATCH --signal=USR1@120``) also requeues the job
(``scontrol requeue``) once the checkpoint is written. A second SIGINT interrupts at once.

These handlers replace Lightning's SIGTERM handler for the duration of training (Lightning would
stop without a checkpoint) and are installed after Lightning's, at ``on_train_start``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def resume_command(argv: list[str] | None = None) -> str:
    """The command line of this run, as ``mcl ...`` with ``--resume``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["mcl", *args])


def slurm_job_id(env=os.environ) -> str | None:
    array_job = env.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in env:
        return f"{array_job}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_slurm_job(job_id: str) -> str:
    """``scontrol requeue JOB``; returns a one-line report (never raises)."""
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not requeue SLURM job {job_id}: {exc}"
    if result.returncode != 0:
        return f"could not requeue SLURM job {job_id}: {(result.stderr or result.stdout).strip()}"
    return f"requeued SLURM job {job_id}"


class GracefulStop(Callback):
    """Records SIGTERM / SIGINT / SIGUSR1; saves and stops at the next optimizer-step boundary."""

    def __init__(self, check_every: int = 10):
        self.check_every = int(check_every)
        self.signal: int | None = None
        self.stopped_at: int | None = None      # global step of the stop checkpoint
        self.saved: list[Path] = []
        self.notes: list[str] = []
        self._previous: dict[int, object] = {}
        self._last_step = 0

    # ----- signals ------------------------------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt          # a second Ctrl-C: stop now
        if self.signal is None:
            self.signal = signum

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and connector.received_sigterm:    # arrived during start-up
            self.signal, connector.received_sigterm = signal.SIGTERM, False
        self._last_step = trainer.global_step
        self.install()

    def on_train_end(self, trainer, pl_module) -> None:
        self.uninstall()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.uninstall()

    # ----- the stop -----------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:       # mid-accumulation: no optimizer step yet
            return
        self._last_step = trainer.global_step
        requested = self.signal is not None
        if trainer.world_size > 1:
            if trainer.global_step % self.check_every != 0:
                return
            flag = torch.tensor(float(requested), device=trainer.strategy.root_device)
            requested = bool(trainer.strategy.reduce(flag, reduce_op="max").item() > 0)
        if requested and self.stopped_at is None:
            self.stop(trainer)

    def stop(self, trainer) -> None:
        """Save the step checkpoint and ``last.ckpt`` now, then ask the trainer to stop."""
        checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpoint is None:
            raise RuntimeError("GracefulStop needs a ModelCheckpoint callback to save through")
        candidates = checkpoint._monitor_candidates(trainer)
        if checkpoint._last_global_step_saved != trainer.global_step:
            checkpoint._save_topk_checkpoint(trainer, candidates)
            checkpoint._save_last_checkpoint(trainer, candidates)
        step_file = Path(checkpoint.dirpath) / f"step{trainer.global_step:07d}.ckpt"
        self.saved = [p for p in (step_file, Path(checkpoint.last_model_path or "")) if p.is_file()]
        self.stopped_at = trainer.global_step
        trainer.should_stop = True
        if self.signal == signal.SIGUSR1 and trainer.is_global_zero and slurm_job_id() is not None:
            self.notes.append(requeue_slurm_job(slurm_job_id()))

    def message(self, command: str | None = None) -> str:
        """What happened, where the checkpoint is, and how to continue."""
        name = signal.Signals(self.signal).name if self.signal is not None else "a signal to another process"
        files = " and ".join(str(p) for p in dict.fromkeys(self.saved))
        lines = [f"stopped by {name} after optimizer step {self.stopped_at}: saved {files}"]
        lines += self.notes
        lines.append(f"continue with: {command or resume_command()}")
        return "\n".join(lines)
