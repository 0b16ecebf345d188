"""The shared config system: files, typed overrides, nested model settings and clear errors."""

from __future__ import annotations

import dataclasses
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


# ------------------------------------------------------------------ non-finite numbers

def float_keys(cfg, prefix: str = "") -> list[str]:
    """Every float (or tuple-of-float) key of a config that its stage reads, nested ones dotted."""
    import typing
    hints, keys = typing.get_type_hints(type(cfg)), []
    for f in dataclasses.fields(cfg):
        if f.name in config_lib.unread_keys(cfg):
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += float_keys(value, f"{prefix}{f.name}.")
        elif "float" in str(hints[f.name]):
            keys.append(prefix + f.name)
    return keys


def stage_configs() -> dict:
    import curriculum
    import finetune_glue
    import instruct
    import sample
    import train
    return {"train": train.TrainConfig(), "finetune_glue": finetune_glue.GlueConfig(),
            "instruct train": instruct.InstructConfig(), "instruct generate": instruct.GenerateConfig(),
            "curriculum": curriculum.CurriculumConfig(), "sample": sample.SampleConfig()}


def test_every_float_setting_of_every_stage_refuses_nan_and_inf(capsys):
    checked = 0
    for stage, defaults in stage_configs().items():
        for key in float_keys(defaults):
            for text in ("nan", "inf", "-inf"):
                with pytest.raises(SystemExit) as e:  # the entry points' path: run_cli
                    config_lib.run_cli(lambda cfg: pytest.fail(f"{stage} --{key}={text} was accepted"),
                                       defaults, [f"--{key}={text}"])
                err = capsys.readouterr().err
                assert e.value.code == 2, (stage, key, text)
                assert f"error: flag --{key}={text}: {key.rpartition('.')[2]} must be" in err
                assert "finite" in err
                checked += 1
    assert checked > 100  # lr, betas, the model's floats, the fractions, temperature... of each stage


def test_non_finite_in_a_config_file_names_file_and_line(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("steps = 3\nlr = float('nan')\n")
    with pytest.raises(ConfigError, match=r"c.py:2: lr must be a finite number, got nan"):
        config_lib.parse_args(Outer(), [str(path)])
    path.write_text("from model_llama import LlamaConfig\nmodel = LlamaConfig(rope_theta=float('inf'))\n")
    # a dataclass built whole in the file
    with pytest.raises(ConfigError, match="model.rope_theta must be a finite number"):
        config_lib.parse_args(Outer(), [str(path)])


# ------------------------------------------------------------------ keys a stage inherits but does not read

@dataclass
class Stage(Outer):
    unread_keys = {"name": "use --title: this stage's name for itself"}
    title: str = ""


def test_an_unread_key_is_an_error_naming_the_key_to_use(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"flag --name=x: Stage does not read name, a key it inherits from "
                                          r"Outer: use --title"):
        config_lib.parse_args(Stage(), ["--name=x"])
    path = tmp_path / "c.py"
    path.write_text("steps = 3\nname = 'x'\n")
    with pytest.raises(ConfigError, match=r"c.py:2: Stage does not read name"):
        config_lib.parse_args(Stage(), [str(path)])
    assert config_lib.parse_args(Stage(), ["--title=x"]).title == "x"
    with pytest.raises(ConfigError) as e:  # not offered among the valid keys either
        config_lib.parse_args(Stage(), ["--nmae=x"])
    assert "title" in str(e.value) and "name," not in str(e.value)
    with pytest.raises(SystemExit):
        config_lib.parse_args(Stage(), ["--help"])
    help_text = capsys.readouterr().out
    assert help_text.endswith("not read by this command:\n  name: use --title: this stage's name for itself\n")


def test_stage_configs_name_the_keys_they_read_instead():
    configs = stage_configs()
    for stage, cfg in configs.items():  # every declared unread key is a real field (no typo hides one)
        assert set(config_lib.unread_keys(cfg)) <= {f.name for f in dataclasses.fields(cfg)}, stage
    for stage, flag, instead in (("finetune_glue", "--data_dir=out/data/leaner", "--glue_dir"),
                                 ("finetune_glue", "--eval_steps=4", "--eval_every"),
                                 ("finetune_glue", "--sample_tokens=50", "sample.py"),
                                 ("instruct train", "--data_dir=out/data/leaner", "--data,"),
                                 ("instruct train", "--model.n_layer=4", "--init_from"),
                                 ("instruct train", "--bpb_genres=wiki", "evaluate.py")):
        with pytest.raises(ConfigError, match="does not read") as e:
            config_lib.parse_args(configs[stage], [flag])
        assert instead in str(e.value), (stage, flag)
    # curriculum.py reads every key of train.py (its sample and bits per byte included)
    assert config_lib.unread_keys(configs["curriculum"]) == {}


def test_the_commands_exit_2_without_a_traceback():
    from conftest import run_script
    for cmd, message in ((["train.py", "--lr=nan"], "lr must be a finite number, got nan"),
                         (["train.py", "--lr=inf"], "lr must be a finite number, got inf"),
                         (["train.py", "--weight_decay=nan"], "weight_decay must be a finite number"),
                         (["finetune_glue.py", "--data_dir=out/data/leaner"], "use --glue_dir")):
        bad = run_script(*cmd, check=False)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
