"""Config: presets load, overrides are typed, unknown keys and bad values name the key."""

import pytest

from cdkd.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_config,
    run_name,
    save_config,
)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_round_trips(name, tmp_path):
    cfg = load_config(name)
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)


def test_overrides_are_typed():
    # (96 does not divide the 256 teacher: the integer CCA merge is refused at load, the overlap one is not)
    cfg = load_config(None, ["train.epochs=7", "model.input_size=[32,96]", "distill.sau_kernels=3,5", "data.flip=false",
                             "distill.merge=overlap"])
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.model.input_size == (32, 96)
    assert cfg.distill.sau_kernels == (3, 5)
    assert cfg.data.flip is False


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=0.1", "train.lrr"),
        ("nosuch.key=1", "nosuch"),
        ("distill.fidelity=exact", "distill.fidelity"),
        ("train.epochs=abc", "train.epochs"),
        ("model.input_size=[30,30]", "model.input_size"),
        ("distill.learn=[tau,gamma]", "distill.learn"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_preset_lists_presets():
    with pytest.raises(ConfigError, match="no preset named"):
        load_config("no_such_preset")


def test_defaults_are_the_papers_main_setting():
    cfg = Config()
    assert cfg.model.input_size == (64, 64) and cfg.model.split_ratio == 3.0
    assert cfg.teacher.input_size == (256, 256)
    assert cfg.distill.num_projectors == 3 and cfg.distill.sau_kernels == (3, 5, 7, 7)


def test_run_name_records_the_setup():
    cfg = config_from_dict({"train": {"mode": "distill", "seed": 2}, "distill": {"fidelity": "official"}})
    assert run_name(cfg) == "distill-official_w32-256_to_w32-64_mpii_s2"
