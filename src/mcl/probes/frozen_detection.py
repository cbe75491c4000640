"""Frozen-backbone detection: the detector with body + FPN (+ the box-head convs an init carries) frozen.

Runs ``mcl finetune`` in this process (the same recipe, data loader and COCO scoring as fine-tuning) with
``model.freeze`` set, ``model.masks=false`` (box AP only: the mask head is the costliest part on a CPU)
and a fixed iteration budget; only the RPN, the box head's fc and the predictor (and the box-head convs of
inits without pretrained ones) train. This is where MCL's box-head-conv transfer shows: its head convs are
features here, not a fresh start.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mcl.errors import UserError

FROZEN_BACKBONE = ("backbone.body", "backbone.fpn")
FROZEN_HEAD = tuple(f"roi_heads.box_head.{k}" for k in range(4))


def frozen_parts(head_pretrained: bool) -> list[str]:
    """The module prefixes to freeze: body and FPN always, the 4 box-head convs when the init carries them."""
    return [*FROZEN_BACKBONE, *(FROZEN_HEAD if head_pretrained else ())]


def frozen_detection(init: str, out: Path, data: dict, arch: str, fpn_channels: int, iterations: int,
                     head_pretrained: bool, seed: int = 0, recipe: str = "finetune_cpu_smoke",
                     overrides: tuple[str, ...] = ()) -> dict:
    """COCO box AP (``results["bbox"]``, fractions) of the frozen-feature detector trained ``iterations``.

    ``data``: ``train_json``, ``train_images``, ``val_json``, ``val_images``. ``out`` is replaced.
    """
    from mcl.cli import main

    shutil.rmtree(out, ignore_errors=True)
    freeze = "[" + ",".join(frozen_parts(head_pretrained)) + "]"
    argv = ["finetune", "--config", recipe, "--init", init, "--out", str(out),
            "--train-json", data["train_json"], "--train-images", data["train_images"],
            "--val-json", data["val_json"], "--val-images", data["val_images"],
            f"model.arch={arch}", f"model.fpn_channels={fpn_channels}", f"model.freeze={freeze}", "model.masks=false",
            f"schedule.iterations_1x={iterations}", "schedule.reference_batch=2", f"trainer.seed={seed}",
            "trainer.progress_bar=false", f"trainer.checkpoint_every_steps={max(iterations, 1)}",
            "trainer.keep_checkpoints=1", "data.num_workers=0", *overrides]
    code = main(argv)
    results = out / "eval" / "results.json"
    if code != 0 or not results.is_file():
        raise UserError(f"frozen-backbone detection failed (exit {code}); its run folder: {out}")
    scores = json.loads(results.read_text())
    return {"bbox": scores["bbox"], "iterations": iterations, "frozen": frozen_parts(head_pretrained)}
