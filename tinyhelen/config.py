"""The one config system for every entry point (train, sample, evaluate, export, finetune...).

An entry point declares its settings as a dataclass. The command line is

    python ENTRY.py [configs/some_file.py ...] [--key=value ...]

Config files are plain Python: every public top-level name they define must be a field of the
dataclass (imports, functions and classes are ignored, so a file may `from model_llama import
LlamaConfig` and write `model = LlamaConfig(n_layer=8)`). Later files and then `--key=value`
overrides win. A field that holds a dataclass (such as `model`) is reached with dots:
`--model.n_layer=4`.

Every value is checked against the declared type, and a field declared with `setting(...)` also
against its allowed values (`choices`), its range (`min`, `above`, `max`) or a `check` function.
An unknown key, a value of the wrong type or an out-of-range value is a ConfigError that names where
it came from (file and line, or the flag) and lists the valid keys or values, so a mistake stops
the command before any compute:

    decay: str = setting("cosine", choices=("cosine", "linear", "constant"))
    max_steps: int = setting(1000, min=1)
    lr: float = setting(1e-3, above=0)

Every float must be finite: nan or inf (which would pass `above=0`, since nan compares false) is a
ConfigError too.

A stage's config may extend another's (finetune_glue's GlueConfig extends the Trainer's TrainConfig)
and inherit keys it does not read. It lists them in a class attribute `unread_keys`, each with what
to set instead; setting one is a ConfigError that says so, instead of a value silently ignored:

    unread_keys = {"data_dir": "use --glue_dir, the folder of the Leaner-Glue task files"}
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence


class ConfigError(ValueError):
    """Bad configuration: the message says where and how to fix it."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def setting(default, *, choices: Sequence | None = None, min: float | None = None,
            above: float | None = None, max: float | None = None, check=None):
    """A dataclass field whose value is checked whenever a config is read: one of `choices`, at
    least `min`, greater than `above`, at most `max`, and `check(value)` returning None when the
    value is fine or a phrase saying what it must be ("must be all or a comma list of ...")."""
    rules = {k: v for k, v in (("choices", choices), ("min", min), ("above", above), ("max", max),
                               ("check", check)) if v is not None}
    return dataclasses.field(default=default, metadata={"rules": rules})


def _rule_problem(value, rules: dict) -> str | None:
    """What is wrong with value under a field's rules, or None."""
    if value is None or not rules:
        return None
    if "choices" in rules and value not in rules["choices"]:
        return f"must be one of {', '.join(map(str, rules['choices']))}"
    if "min" in rules and value < rules["min"]:
        return f"must be at least {rules['min']}"
    if "above" in rules and value <= rules["above"]:
        return f"must be greater than {rules['above']}"
    if "max" in rules and value > rules["max"]:
        return f"must be at most {rules['max']}"
    if "check" in rules:
        return rules["check"](value)
    return None


def _non_finite(value) -> bool:
    """Whether value is, or holds, a float nan or inf."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return any(_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    return False


def _check_rules(cfg, name: str, value, where: str, key: str) -> None:
    if _non_finite(value):
        what = "a finite number" if isinstance(value, float) else "finite numbers only"
        raise ConfigError(f"{where}: {key} must be {what}, got {value!r}")
    f = next(f for f in dataclasses.fields(cfg) if f.name == name)
    problem = _rule_problem(value, f.metadata.get("rules", {}))
    if problem:
        raise ConfigError(f"{where}: {key} {problem}, got {value!r}")


def unread_keys(cfg) -> dict[str, str]:
    """{key: what to set instead} of the inherited keys a config's stage does not read."""
    return getattr(type(cfg), "unread_keys", {})


def valid_keys(cfg) -> list[str]:
    """Every settable key of a config instance, nested ones dotted (model.n_layer)."""
    keys = []
    for f in dataclasses.fields(cfg):
        if f.name in unread_keys(cfg):
            continue
        value = getattr(cfg, f.name)
        keys.append(f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{k}" for k in valid_keys(value)]
    return keys


def _describe(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value, tp, where: str, key: str):
    """Return value converted to tp when that is lossless (int -> float), else raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where, key)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {key} must be {_describe(tp)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{where}: {key} must be a {origin.__name__}, got {value!r}")
        (item_tp, *rest) = typing.get_args(tp) or (Any,)
        return origin(_check_value(v, item_tp, where, key) for v in value)
    if dataclasses.is_dataclass(tp):
        if not dataclasses.is_dataclass(value):
            raise ConfigError(f"{where}: {key} must be a {tp.__name__}(...), got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be True or False, got {value!r}")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool) and tp is not bool):
        raise ConfigError(f"{where}: {key} must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _parse_text(text: str, tp, where: str, key: str):
    """Turn the text of a --key=value flag into a value of type tp."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if text.lower() == "none" and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_text(text, arg, where, key)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {key} must be {_describe(tp)}, got {text!r}")
    if origin in (tuple, list):
        (item_tp, *rest) = typing.get_args(tp) or (str,)
        items = [t for t in text.split(",") if t != ""]
        return origin(_parse_text(t.strip(), item_tp, where, key) for t in items)
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{where}: {key} must be true or false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ConfigError(f"{where}: {key} must be {tp.__name__}, got {text!r}") from None
    if tp is str or tp is Any:
        return text
    raise ConfigError(f"{where}: {key} of type {_describe(tp)} cannot be set from the command line")


def _unknown(key: str, where: str, cfg) -> ConfigError:
    keys = ", ".join(valid_keys(cfg))
    return ConfigError(f"{where}: unknown config key {key!r}. Valid keys: {keys}")


def _set(cfg, dotted: str, value, where: str, from_text: bool):
    """Return a copy of cfg with cfg.<dotted> = value (type-checked).

    Copies are updated field by field without running __post_init__, because settings that must
    agree (n_head and n_kv_head, say) are often changed one flag at a time; _validate checks the
    finished config once."""
    head, _, rest = dotted.partition(".")
    names = {f.name for f in dataclasses.fields(cfg)}
    if head not in names:
        raise _unknown(dotted, where, cfg)
    if head in unread_keys(cfg):
        base = next(b.__name__ for b in type(cfg).__mro__[1:]
                    if head in getattr(b, "__dataclass_fields__", {}))
        raise ConfigError(f"{where}: {type(cfg).__name__} does not read {dotted}, a key it inherits from "
                          f"{base}: {unread_keys(cfg)[head]}")
    if rest:
        inner = getattr(cfg, head)
        if not dataclasses.is_dataclass(inner):
            raise _unknown(dotted, where, cfg)
        value = _set(inner, rest, value, where, from_text)
    else:
        tp = _field_types(type(cfg))[head]
        current = getattr(cfg, head)
        if dataclasses.is_dataclass(current) and from_text:
            raise ConfigError(f"{where}: {head} is a group of settings; set its members, e.g. "
                              f"--{head}.{dataclasses.fields(current)[0].name}=...")
        value = _parse_text(value, tp, where, head) if from_text else _check_value(value, tp, where, head)
        _check_rules(cfg, head, value, where, head)
    updated = copy.copy(cfg)
    object.__setattr__(updated, head, value)
    return updated


def _validate(cfg, prefix: str = ""):
    """Rebuild every dataclass from its fields so that its own checks (__post_init__) run once on
    the finished settings, after the rules of every field (also those of a dataclass a config file
    built whole, such as `model = LlamaConfig(...)`); their complaints become ConfigErrors."""
    values = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        _check_rules(cfg, f.name, value, "config", prefix + f.name)
        values[f.name] = _validate(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else value
    try:
        return type(cfg)(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"inconsistent {type(cfg).__name__} settings: {e}") from None


def _assignment_lines(path: Path) -> dict[str, int]:
    """Line of the last top-level assignment of each name, for error messages."""
    lines = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Name):
                lines[t.id] = node.lineno
    return lines


def apply_file(cfg, path: str | Path):
    """Apply the settings of one Python config file to cfg and return the new config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (give a path such as configs/demo_llama.py)")
    namespace: dict[str, Any] = {"__file__": str(path), "__name__": "__config__"}
    try:
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    except Exception as e:  # the user's file is broken: say which one and why
        raise ConfigError(f"{path}: error while running this config file: {type(e).__name__}: {e}") from e
    lines = _assignment_lines(path)
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        cfg = _set(cfg, name, value, f"{path}:{lines.get(name, '?')}", from_text=False)
    return cfg


def parse_args(defaults, argv: Sequence[str] | None = None):
    """Build a config from defaults (a dataclass instance), config files and --key=value flags."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = defaults
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(describe(cfg))
            raise SystemExit(0)
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            key = key.replace("-", "_")
            if not eq:
                # "--key value" also works; a bare boolean flag (--resume) means true.
                takes_value = _declared_type(cfg, key) is not bool and args and not args[0].startswith("--")
                text = args.pop(0) if takes_value else "true"
            cfg = _set(cfg, key, text, f"flag {arg}", from_text=True)
        else:
            cfg = apply_file(cfg, arg)
    return validate(cfg)


def validate(cfg):
    """The checks parse_args runs on a finished config, for configs built in code: every field's
    rules, then each dataclass's own __post_init__; returns the checked copy or raises ConfigError."""
    return _validate(cfg)


def _declared_type(cfg, dotted: str):
    """The declared type of a (possibly dotted) key, or None if there is no such key."""
    head, _, rest = dotted.partition(".")
    if head not in {f.name for f in dataclasses.fields(cfg)}:
        return None
    if rest:
        inner = getattr(cfg, head)
        return _declared_type(inner, rest) if dataclasses.is_dataclass(inner) else None
    return _field_types(type(cfg))[head]


def describe(cfg) -> str:
    """Human-readable listing of every key and its current value."""
    rows = []
    for key in valid_keys(cfg):
        value, owner = cfg, cfg
        for part in key.split("."):
            owner, value = value, getattr(value, part)
        if not dataclasses.is_dataclass(value):
            name = key.rpartition(".")[2]
            rules = next(f for f in dataclasses.fields(owner) if f.name == name).metadata.get("rules", {})
            choices = f"   ({' | '.join(map(str, rules['choices']))})" if "choices" in rules else ""
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value  # as a flag takes it
            rows.append(f"  --{key}={shown}{choices}")
    unread = [f"  {key}: {hint}" for key, hint in unread_keys(cfg).items()]
    return ("settings (set in a config file or as --key=value):\n" + "\n".join(rows)
            + ("\nnot read by this command:\n" + "\n".join(unread) if unread else ""))


def to_dict(cfg) -> dict:
    """Plain dict of a config, nested dataclasses included, with each dataclass's class name kept so
    that the model type can be rebuilt from a checkpoint."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = {"__class__": type(value).__name__, **to_dict(value)}
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def exits_2_on(*errors: type[BaseException]):
    """Decorator for an entry point's main(cfg): a ConfigError or one of `errors` raised inside it is
    the user's mistake (a missing file, a bad checkpoint...): print "error: ..." and exit 2, with no
    traceback. Anything else is a bug and keeps its traceback."""
    caught = (ConfigError, *errors)

    def wrap(main):
        @functools.wraps(main)
        def guarded(cfg):
            try:
                return main(cfg)
            except caught as e:
                print(f"error: {e}", file=sys.stderr)
                raise SystemExit(2) from None
        return guarded
    return wrap


def run_cli(main, defaults, argv=None):
    """Parse the config for an entry point and turn ConfigErrors into a clear message + exit 2."""
    try:
        cfg = parse_args(defaults, argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return main(cfg)
