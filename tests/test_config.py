"""The shared config system: files, typed overrides, nested model settings and clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tinyhelen import config as config_lib
from tinyhelen.config import ConfigError


@dataclass
class Inner:
    n_layer: int = 2
    theta: float = 10.0
    tied: bool = False


@dataclass
class Outer:
    lr: float = 1e-3
    steps: int = 10
    name: str = "run"
    compile: bool = True
    model: object = field(default_factory=Inner)


def test_flags_are_typed_and_nested():
    cfg = config_lib.parse_args(Outer(), ["--lr=3e-4", "--steps=7", "--compile=false", "--model.n_layer=5",
                                          "--model.theta=500000", "--name=abc"])
    assert (cfg.lr, cfg.steps, cfg.compile, cfg.name) == (3e-4, 7, False, "abc")
    assert cfg.model == Inner(n_layer=5, theta=500000.0)
    assert isinstance(cfg.model.theta, float)


def test_bare_flag_means_true():
    assert config_lib.parse_args(Outer(compile=False), ["--compile"]).compile is True


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("import math\nlr = 2e-3\nsteps = 3 * 4\n_private = 1\n")
    cfg = config_lib.parse_args(Outer(), [str(path), "--steps=99"])
    assert cfg.lr == 2e-3 and cfg.steps == 99


def test_unknown_flag_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        config_lib.parse_args(Outer(), ["--stpes=3"])
    message = str(e.value)
    assert "stpes" in message and "steps" in message and "model.n_layer" in message


def test_unknown_key_in_file_names_file_and_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("lr = 1e-3\n\nbatch_sise = 4\n")
    with pytest.raises(ConfigError) as e:
        config_lib.parse_args(Outer(), [str(path)])
    assert f"{path}:3" in str(e.value) and "batch_sise" in str(e.value)


@pytest.mark.parametrize("flag", ["--steps=1.5", "--steps=ten", "--compile=maybe", "--model.n_layer=x"])
def test_wrong_type_is_an_error(flag):
    with pytest.raises(ConfigError, match="must be"):
        config_lib.parse_args(Outer(), [flag])


def test_wrong_type_in_file(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("steps = 'many'\n")
    with pytest.raises(ConfigError, match=r"c.py:1.*steps must be int"):
        config_lib.parse_args(Outer(), [str(path)])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.parse_args(Outer(), [str(tmp_path / "nope.py")])
    broken = tmp_path / "broken.py"
    broken.write_text("lr = (\n")
    with pytest.raises(ConfigError, match="broken.py"):
        config_lib.parse_args(Outer(), [str(broken)])


def test_run_cli_exits_2_with_message(capsys):
    with pytest.raises(SystemExit) as e:
        config_lib.run_cli(lambda cfg: None, Outer(), ["--nope=1"])
    assert e.value.code == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err


def test_to_dict_keeps_model_class():
    d = config_lib.to_dict(Outer())
    assert d["model"]["__class__"] == "Inner" and d["model"]["n_layer"] == 2


@dataclass
class Heads:
    n_head: int = 8
    n_kv_head: int = 8

    def __post_init__(self):
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")


@dataclass
class WithHeads:
    model: object = field(default_factory=Heads)


def test_dependent_settings_are_checked_once_at_the_end():
    # Changing n_head first would be inconsistent on its own; only the finished config is checked.
    cfg = config_lib.parse_args(WithHeads(), ["--model.n_head=4", "--model.n_kv_head=2"])
    assert cfg.model == Heads(4, 2)
    with pytest.raises(ConfigError, match="inconsistent Heads settings: n_head"):
        config_lib.parse_args(WithHeads(), ["--model.n_head=6", "--model.n_kv_head=4"])


def test_space_separated_values_and_bare_booleans(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("steps = 4\n")
    cfg = config_lib.parse_args(Outer(compile=False), ["--name", "x y", "--compile", str(path), "--lr", "0.5"])
    assert (cfg.name, cfg.compile, cfg.steps, cfg.lr) == ("x y", True, 4, 0.5)
