"""The pretraining methods, one file each, and their registry.

A recipe names its method (``method: moco_v2``; no ``method`` key: ``mcl``); ``mcl pretrain`` looks it up
here. Each method file (``mcl.py``, ``moco.py``, ``supervised.py``) exports its config dataclass, its
LightningModule (a ``mcl.methods.base.PretrainBase``) and its ``--dry-run`` text (the module's ``describe``).
docs/contributing.md says how to add one.
"""

from __future__ import annotations

from pathlib import Path

from mcl.engine.checkpoints import newest_valid
from mcl.errors import UserError
from mcl.methods.base import PretrainBase
from mcl.methods.mcl import MCLPretrainModule
from mcl.methods.moco import MoCoPretrainModule
from mcl.methods.supervised import SupervisedPretrainModule

METHODS: dict[str, type[PretrainBase]] = {m.NAME: m for m in (MCLPretrainModule, MoCoPretrainModule,
                                                             SupervisedPretrainModule)}
DEFAULT_METHOD = "mcl"


def get_method(name: object, where: str = "the recipe") -> type[PretrainBase]:
    """The LightningModule class of method ``name``; a one-line error naming the known ones."""
    if name not in METHODS:
        raise UserError(f"method = {name!r} in {where} is not a pretraining method (choose one of "
                        f"{', '.join(METHODS)})")
    return METHODS[name]


def method_of_checkpoint(checkpoint: dict) -> str:
    """The method a pretraining checkpoint was written by: its ``mcl_method`` tag (checkpoints of MCL written
    before the tag existed have none: ``mcl``)."""
    return checkpoint.get("mcl_method", DEFAULT_METHOD)


def resume_point(run_dir: Path, warn=print) -> tuple[Path, str] | None:
    """The newest valid checkpoint of a run folder and the method that wrote it, read once (the checkpoint's
    tensors are not kept); None when the folder has none."""
    found = newest_valid(run_dir, warn)
    return (found[0], method_of_checkpoint(found[1])) if found else None
