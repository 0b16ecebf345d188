"""Checkpoints: written atomically, loaded with weights_only=True, and turned back into models.

A checkpoint is one torch file holding plain data only (tensors, numbers, strings, lists, dicts), so
it loads with `torch.load(weights_only=True)` and can never run code:
    model       the model's state_dict
    optimizer   the optimizer's state_dict (absent in exported/finished models is fine)
    step        optimizer steps taken
    rng         torch (and CUDA) RNG states
    data        the batch source's position (data/tokens.py)
    config      the whole run config as a dict; config["model"]["__class__"] names the model type
"""

from __future__ import annotations

import dataclasses
import importlib
import random
from pathlib import Path

import torch

from atomic import atomic_file

# Model config class name -> (module, model class). Imported lazily so a Llama run never needs
# the Mamba module's dependencies.
MODEL_TYPES = {
    "LlamaConfig": ("model_llama", "Llama"),
    "MambaConfig": ("model_mamba", "Mamba"),
}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not ours: the message says what to do."""


def model_class(config_class_name: str):
    if config_class_name not in MODEL_TYPES:
        raise CheckpointError(f"unknown model config {config_class_name!r}; known: {', '.join(MODEL_TYPES)}")
    module_name, class_name = MODEL_TYPES[config_class_name]
    module = importlib.import_module(module_name)
    return getattr(module, config_class_name), getattr(module, class_name)


def build_model(model_cfg) -> torch.nn.Module:
    """The model for a model config dataclass (LlamaConfig -> Llama, MambaConfig -> Mamba)."""
    _, cls = model_class(type(model_cfg).__name__)
    return cls(model_cfg)


def model_config_from_dict(d: dict):
    d = dict(d)
    cfg_cls, _ = model_class(d.pop("__class__"))
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    return cfg_cls(**{k: v for k, v in d.items() if k in known})


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save through atomic_file: a crash leaves the old checkpoint or the new one, never half."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train first (python train.py CONFIG --out_dir=...) "
                              f"or point --out_dir at a run folder that holds ckpt.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            f"Checkpoints are written atomically, so this file was damaged after it was written: "
            f"restore it from a copy or delete it and start the run again.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a tinyhelen checkpoint (no model/config entries)")
    return ckpt


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, checkpoint dict) from a run folder or a ckpt.pt file."""
    ckpt = load_checkpoint(path)
    model = build_model(model_config_from_dict(ckpt["config"]["model"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
