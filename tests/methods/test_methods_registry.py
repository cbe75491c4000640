"""One pretrain command for every method: the recipe's `method:` picks it, the aliases agree, mixing is refused."""

import dataclasses

import pytest

from mcl.cli import main
from mcl.config import load_config, to_dict
from mcl.methods import METHODS, get_method
from mcl.methods.base import PretrainBase

SMOKE = {"mcl": "cpu_smoke", "moco_v2": "moco_cpu_smoke", "supervised_montage": "supervised_cpu_smoke"}
FIRST_LINE = {"mcl": "method: MCL", "moco_v2": "method: MoCo v2", "supervised_montage": "method: Supervised montage"}


def test_every_method_is_one_class_with_its_config_and_a_smoke_recipe_naming_it():
    assert set(METHODS) == set(SMOKE)
    for name, cls in METHODS.items():
        assert issubclass(cls, PretrainBase) and cls.NAME == name
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        assert fields["method"].default == name                     # a checkpoint's config names its method
        cfg = load_config(cls.Config, SMOKE[name])
        assert cfg.method == name


@pytest.mark.parametrize("name", list(SMOKE))
def test_pretrain_dry_run_runs_the_recipes_method(name, capsys):
    assert main(["pretrain", "--config", SMOKE[name], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == FIRST_LINE[name]


def test_method_override_picks_the_method_without_a_recipe(capsys):
    assert main(["pretrain", "method=moco_v2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("method: MoCo v2") and "queue 65536 keys" in out     # MoCo v2's own defaults


def test_unknown_method_and_a_key_of_another_method_are_one_line_errors(capsys):
    assert main(["pretrain", "method=densecl", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "method = 'densecl'" in err and "mcl, moco_v2, supervised_montage" in err and err.count("\n") == 1
    assert main(["pretrain", "--config", "cpu_smoke", "model.queue_size=64", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key model.queue_size" in err and err.count("\n") == 1


def test_aliases_run_their_method_and_refuse_a_recipe_of_another(capsys):
    assert main(["pretrain-moco", "--config", "moco_cpu_smoke", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("method: MoCo v2")
    assert main(["pretrain-supervised", "--dry-run"]) == 0                   # no recipe: the alias's method
    assert capsys.readouterr().out.startswith("method: Supervised montage")
    assert main(["pretrain-moco", "--config", "cpu_smoke", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "method = 'mcl'" in err and "mcl pretrain --config" in err and err.count("\n") == 1


def test_get_method_names_the_known_ones():
    assert get_method("moco_v2").TITLE == "MoCo v2"
    with pytest.raises(Exception, match="choose one of mcl, moco_v2, supervised_montage"):
        get_method("byol")


def test_a_module_checkpoint_config_round_trips_without_the_method_key():
    """A checkpoint written before recipes named their method has no `method` key: the class's default fills it."""
    cls = METHODS["moco_v2"]
    values = to_dict(load_config(cls.Config, "moco_cpu_smoke"))
    values.pop("method")
    module = cls(values)
    assert module.cfg.method == "moco_v2" and module.cfg.model.queue_size == 256
