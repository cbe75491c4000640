"""Recipes load, overrides apply, and bad keys or values are refused with one line naming them."""

import pytest

from mcl.config import ConfigError, from_dict, load_config, parse_overrides, to_dict, validate
from mcl.errors import UserError
from mcl.methods.mcl import MCLConfig


@pytest.mark.parametrize("name", ["cpu_smoke", "r50_1gpu", "paper_r50_in1k_100ep"])
def test_packaged_recipes_load_and_validate(name):
    cfg = load_config(MCLConfig, name)
    validate(cfg)
    assert from_dict(MCLConfig, to_dict(cfg)) == cfg


def test_paper_recipe_figures():
    cfg = load_config(MCLConfig, "paper_r50_in1k_100ep")
    assert cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes == 4096
    assert cfg.montage.ratios == [1, 2, 4, 8] and cfg.loss.level_weights == [0.5, 0.25, 0.125, 0.125]
    assert cfg.optim.weight_decay == 1e-5 and cfg.optim.trust_coefficient == 0.001


def test_both_override_forms():
    cfg = load_config(MCLConfig, "cpu_smoke", ["optim.base_lr=0.5", "--data.batch_size", "64",
                                                    "--montage.ratios=[1,2]", "montage.repeats=[1,1]",
                                               "loss.level_weights=[0.5,0.5]"])
    assert cfg.optim.base_lr == 0.5 and cfg.data.batch_size == 64 and cfg.montage.ratios == [1, 2]
    assert parse_overrides(["a.b-c=x"]) == {"a": {"b_c": "x"}}


def test_exponent_floats_without_a_dot_are_numbers():
    """YAML 1.1 reads 1e-4 as a string; a float key takes it as the number everyone means."""
    cfg = load_config(MCLConfig, "cpu_smoke", ["optim.weight_decay=1e-4", "optim.min_lr=2E-6"])
    assert cfg.optim.weight_decay == 1e-4 and cfg.optim.min_lr == 2e-6
    with pytest.raises(ConfigError, match="optim.weight_decay: '1e-4x' should be a number"):
        load_config(MCLConfig, None, ["optim.weight_decay=1e-4x"])


def test_unknown_key_and_wrong_type_are_named():
    with pytest.raises(ConfigError, match="unknown config key optim.lr "):
        load_config(MCLConfig, None, ["optim.lr=1"])
    with pytest.raises(ConfigError, match="data.batch_size: 'big' should be an integer"):
        load_config(MCLConfig, None, ["data.batch_size=big"])
    with pytest.raises(ConfigError, match="model.compute_mode"):
        load_config(MCLConfig, None, ["model.compute_mode=fast"])
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config(MCLConfig, "nope.yaml")


def test_out_of_range_values_are_refused():
    with pytest.raises(UserError, match=r"loss.temperature = 0.0 must be > 0 \[in defaults \+ command line\]"):
        load_config(MCLConfig, None, ["loss.temperature=0"])
    cfg = MCLConfig()                       # built in code, then checked: the same line
    cfg.optim.momentum = 1.0
    with pytest.raises(UserError, match="optim.momentum = 1.0 must be in"):
        validate(cfg)


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_size: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml line"):
        load_config(MCLConfig, bad)
