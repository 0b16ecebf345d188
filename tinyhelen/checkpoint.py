"""Checkpoints: written atomically, loaded with weights_only=True, and turned back into models.

A checkpoint is one torch file holding plain data only (tensors, numbers, strings, lists, dicts), so
it loads with `torch.load(weights_only=True)` and can never run code:
    model       the model's state_dict
    optimizer   the optimizer's state_dict (absent in exported/finished models is fine)
    step        optimizer steps taken
    rng         torch (and CUDA) RNG states
    tokens_seen input tokens trained on so far
    data        the batch source's state (its state_dict; see trainer.py)
    listeners   the states of the stage's stateful listeners, in order
    config      the whole run config as a dict; config["model"]["__class__"] names the model type
    data_meta   the meta.json of the prepared data the run trained on (tokenizer, eot id, genres)

load_source reads the weights another run starts from (init_from): a run folder, a ckpt.pt, or a
`transformers` folder; load_matching_weights copies them into a model by name and reports what was
loaded, what was new and what was dropped.
"""

from __future__ import annotations

import dataclasses
import importlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyhelen.atomic import atomic_file

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


@dataclass
class WeightsSource:
    """The weights a run starts from (init_from), with the config of the model they belong to."""
    model_config: object
    state_dict: dict
    data_meta: dict   # the source run's prepared-data meta ({} for a transformers folder)
    path: Path


def load_source(path: str | Path) -> WeightsSource:
    """Weights to start from: a run folder or ckpt.pt of this engine, or a `transformers` folder
    (config.json + safetensors) of a Llama, Mamba, Mamba-2 or Bamba model."""
    path = Path(path)
    if path.is_dir() and not (path / "ckpt.pt").is_file() and (path / "config.json").is_file():
        from tinyhelen.interop import load_hf
        try:
            model = load_hf(path)
        except (ValueError, KeyError) as e:  # interop.HFFormatError is a ValueError
            raise CheckpointError(f"{path}: cannot import this transformers model: {e}") from None
        return WeightsSource(model.config, model.state_dict(), {}, path)
    if not path.exists():
        raise CheckpointError(f"init_from {path} does not exist: give a run folder (holding ckpt.pt), a "
                              f"ckpt.pt file or a transformers folder (holding config.json)")
    ckpt = load_checkpoint(path)
    return WeightsSource(model_config_from_dict(ckpt["config"]["model"]), ckpt["model"],
                         ckpt.get("data_meta", {}), path)


def load_matching_weights(model: torch.nn.Module, state_dict: dict, prefix: str = "") -> dict[str, list[str]]:
    """Copy state_dict into model by name: source key K goes to the model's PREFIX + K.

    Returns {"loaded": [...], "new": [...], "dropped": [...]}: model keys filled from the source,
    model keys the source lacks (kept at their initial values, e.g. a classifier head), and
    source keys the model has no place for (e.g. an LM head under a classifier). A name present in
    both with a different shape is an error: silently keeping a fresh embedding would be a bug."""
    own = model.state_dict()
    mapped = {prefix + k: v for k, v in state_dict.items()}
    mismatched = [f"{k}: {tuple(v.shape)} in the source, {tuple(own[k].shape)} in the model"
                  for k, v in mapped.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise CheckpointError("init_from weights do not fit the model: " + "; ".join(mismatched[:5]))
    loaded = [k for k in own if k in mapped]
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(mapped[k])
    return {"loaded": loaded, "new": [k for k in own if k not in mapped],
            "dropped": [k for k in state_dict if prefix + k not in own]}
