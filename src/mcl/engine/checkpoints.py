"""Checkpoint files that are never half-written, and resume that only trusts files that load.

Writes go through ``mcl.engine.atomic`` (a temporary file beside ``NAME``, flushed to disk, renamed over ``NAME``): a
crash or a full disk leaves the previous file intact. Resume picks the newest checkpoint that loads
(with ``weights_only=True``) and carries our format tag; a truncated or foreign file is skipped
with a warning naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mcl.engine.atomic import write_atomic
from mcl.errors import UserError

FORMAT_TAG = "mcl-pretrain/1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through ``mcl.engine.atomic.write_atomic``, flushed to the disk before the rename."""
    write_atomic(Path(path), lambda f: torch.save(obj, f), fsync=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes through ``atomic_torch_save``."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load one of our checkpoints safely (``weights_only=True``); a clear error for anything else."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # truncated, not a torch file, or holding arbitrary objects
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}): truncated or not an mcl "
                        f"checkpoint; use another file") from None
    if not isinstance(data, dict) or data.get("mcl_format") != FORMAT_TAG or "state_dict" not in data:
        raise UserError(f"checkpoint {path} is not an mcl pretraining checkpoint (no '{FORMAT_TAG}' tag)")
    return data


def newest_valid(run_dir: Path, warn=print) -> tuple[Path, dict] | None:
    """``last.ckpt`` or the newest ``*.ckpt`` that loads and is ours, with what it holds; None when the folder
    has none."""
    candidates = sorted(Path(run_dir).glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime),
                        reverse=True)
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except UserError as exc:
            warn(f"skipping {exc}")
    return None


def newest_valid_checkpoint(run_dir: Path, warn=print) -> Path | None:
    """The path of :func:`newest_valid`'s checkpoint, or None."""
    found = newest_valid(run_dir, warn)
    return found[0] if found else None
