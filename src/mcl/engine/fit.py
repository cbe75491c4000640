"""One pretraining run from start to end-of-run text, for every method (``mcl pretrain``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def is_rank_zero() -> bool:
    """Process 0 of the job, as the launcher's environment tells before the Trainer starts."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0 and \
        int(os.environ.get("LOCAL_RANK", "0")) == 0


def fit(cfg, module, datamodule, resume: bool) -> int:
    """Refuse to overwrite a run, save the resolved config, train, write ``last.ckpt``, print the summary.

    ``module`` is a ``mcl.methods.base.PretrainBase`` (its title and figures make the end-of-run text).
    Stopped by a signal (``mcl.engine.preemption``): the checkpoint is already written; prints it and the
    ``--resume`` command and returns 0. Too many non-finite steps raise ``NonFiniteError`` (exit 2).
    """
    from mcl.config import save_yaml
    from mcl.engine.nonfinite import NonFiniteMonitor
    from mcl.engine.preemption import GracefulStop
    from mcl.engine.summary import RunSummary
    from mcl.engine.trainer import build_trainer
    from mcl.errors import UserError
    from mcl.methods import resume_point
    from mcl.probes.online import online_probe

    run_dir = Path(cfg.trainer.out)
    ckpt_path = None
    if resume:
        found = resume_point(run_dir)
        if found is not None:
            ckpt_path, written_by = found
            check_same_method(ckpt_path, written_by, module)
        print(f"resuming from {ckpt_path}" if ckpt_path else f"--resume: no checkpoint in {run_dir} yet, "
              f"starting a new run there", flush=True)
    elif run_dir.is_dir() and any(run_dir.glob("*.ckpt")):
        raise UserError(f"{run_dir} already holds checkpoints: add --resume to continue that run, "
                        f"or choose a new --out (nothing was overwritten)")
    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
    summary = RunSummary(run_dir)
    trainer = build_trainer(cfg, run_dir, extra_callbacks=[summary, *online_probe(cfg, run_dir)])
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    stop = next(c for c in trainer.callbacks if isinstance(c, GracefulStop))
    nonfinite = next(c for c in trainer.callbacks if isinstance(c, NonFiniteMonitor))
    if stop.stopped_at is not None:
        if trainer.is_global_zero:
            print(f"mcl: {stop.message()}", flush=True)
        return 0
    trainer.save_checkpoint(run_dir / "last.ckpt", weights_only=False)   # full state: --resume continues from it
    if trainer.is_global_zero:
        print(summary.text(trainer, run_dir / "last.ckpt", module), flush=True)
        print(f"non-finite steps skipped: {nonfinite.skipped} (train/nonfinite_skipped in the logs)", flush=True)
    sys.stdout.flush()
    return 0


def check_same_method(checkpoint: Path, written_by: str, module) -> None:
    """Refuse to resume a run of method ``written_by`` with another method's recipe (one line naming both)."""
    from mcl.errors import UserError

    if written_by != module.NAME:
        raise UserError(f"{checkpoint} was written by method {written_by}, but this recipe is method {module.NAME}: "
                        f"resume with the run's own recipe ({checkpoint.parent / 'config.yaml'})")
