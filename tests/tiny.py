"""Tiny models built the way the library builds them: a method's config (its paper defaults, validated)
with dotted overrides, then the model's ``from_config``."""

from __future__ import annotations

import torch

from mcl.config import load_config


def config(cls, *overrides: str):
    """``cls`` (a method's config dataclass) with ``section.key=value`` overrides, validated."""
    return load_config(cls, None, list(overrides))


def mcl_model(*overrides: str, seed: int = 0):
    """An ``MCL`` from ``MCLConfig`` + overrides, its weights drawn after ``torch.manual_seed(seed)``."""
    from mcl.methods.mcl import MCLConfig
    from mcl.models.mcl import MCL

    torch.manual_seed(seed)
    return MCL.from_config(config(MCLConfig, *overrides))


def supervised_model(*overrides: str, seed: int = 0):
    """A ``SupervisedMontage`` from ``SupervisedConfig`` + overrides (give ``model.num_classes``)."""
    from mcl.methods.supervised import SupervisedConfig
    from mcl.models.supervised import SupervisedMontage

    torch.manual_seed(seed)
    return SupervisedMontage.from_config(config(SupervisedConfig, *overrides))
