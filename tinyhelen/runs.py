"""Opening a run: the one reader of "which model and which tokenizer is this?" for every stage.

    load_run(path, device="cpu", tokenizer="") -> (model in eval mode, tokenizer, meta)
    load_tokenizer_from(spec, meta=None) -> tokenizer

A run is any of:
    a run folder          ckpt.pt, and the tokenizer.json train.py copied beside it
    a ckpt.pt file        its folder is the run folder
    a transformers folder config.json + model.safetensors (tinyhelen/interop.py reads it); export.py's
                          also holds the run's tokenizer (tinyhelen_tokenizer.json: the tokenizer.json
                          there is transformers' own format) and its data meta (tinyhelen_meta.json)

meta is the meta.json of the prepared data the run trained on (tokenizer, tokenizer_name, vocab_size,
eot_id, ...), as the checkpoint keeps it; {} when nothing recorded it (a transformers folder that
export.py did not write).

The tokenizer is found in this order, the first that is there wins:
    1. the spec itself when it names one: a standard tokenizer (cl100k_base) or a tokenizer .json file
    2. the folder's tinyhelen_tokenizer.json (an export)
    3. the folder's tokenizer.json (a run or a prepared data folder; not a transformers folder's)
    4. the tokenizer a prepared data folder's meta.json names (it may be a standard one)
    5. the run's meta, when it names a standard tokenizer (a cl100k_base run has no file to copy)
Nothing found is a CheckpointError that says where it looked and what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tinyhelen.checkpoint import CheckpointError, build_model, load_source
from tinyhelen.pretrained import resolve

EXPORT_TOKENIZER = "tinyhelen_tokenizer.json"  # the run's own tokenizer file, kept in an export
EXPORT_META = "tinyhelen_meta.json"            # the run's data meta, kept in an export
STANDARD_TOKENIZERS = ("cl100k_base",)         # the names data/tokenizer.py's load_tokenizer knows


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu", tokenizer: str = ""
             ) -> tuple[torch.nn.Module, object, dict]:
    """(model in eval mode on device, its tokenizer, its data meta) from a run folder, a ckpt.pt or a
    transformers folder. tokenizer, when given, is where to take the tokenizer from instead of the run
    (any spec load_tokenizer_from reads): for a transformers folder that carries none."""
    path = Path(resolve(path))  # a short name or a .gguf file: its imported run folder
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run folder (holding ckpt.pt), a ckpt.pt file "
                              f"or a transformers folder (holding config.json)")
    source = load_source(path)  # the one reader of weights: checkpoints and transformers folders alike
    meta = export_meta(path) if is_transformers_folder(path) else dict(source.data_meta)
    model = build_model(source.model_config)
    model.load_state_dict(source.state_dict)
    return model.to(device).eval(), load_tokenizer_from(tokenizer or path, meta), meta


def export_meta(folder: Path) -> dict:
    """The data meta export.py keeps in a transformers folder ({} when it has none)."""
    path = folder / EXPORT_META
    return json.loads(path.read_text()) if path.is_file() else {}


def is_transformers_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and not (folder / "ckpt.pt").is_file()


def load_tokenizer_from(spec: str | os.PathLike, meta: dict | None = None):
    """A tokenizer from a standard name (cl100k_base), a tokenizer .json file, or a folder that holds or
    names one: a run folder (or its ckpt.pt), an export, a prepared data folder. meta is the run's data
    meta, for a run trained on a standard tokenizer (no file to copy). The order is the module's."""
    from data.tokenizer import load_tokenizer
    if str(spec) in STANDARD_TOKENIZERS:
        return load_tokenizer(str(spec))
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        return load_tokenizer(str(path))
    folder = path.parent if path.suffix == ".pt" else path
    if not folder.is_dir():
        raise CheckpointError(f"tokenizer {spec}: no such file or folder (give a run folder, a prepared data "
                              f"folder, a tokenizer.json or {' or '.join(STANDARD_TOKENIZERS)})")
    if (folder / EXPORT_TOKENIZER).is_file():
        return load_tokenizer(str(folder / EXPORT_TOKENIZER))
    if (folder / "tokenizer.json").is_file() and not is_transformers_folder(folder):
        return load_tokenizer(str(folder / "tokenizer.json"))
    named = _named_by_data_folder(folder)  # relative to the data folder, or a standard name
    if named:
        return load_tokenizer(named if named in STANDARD_TOKENIZERS else str(folder / named))
    if (meta or {}).get("tokenizer") in STANDARD_TOKENIZERS:
        return load_tokenizer(meta["tokenizer"])
    raise CheckpointError(
        f"no tokenizer found for {folder}: expected {folder / 'tokenizer.json'} (train.py copies the prepared "
        f"data's tokenizer.json there: copy it by hand for a run that lacks it)"
        + (f", or {folder / EXPORT_TOKENIZER} (export.py writes it)" if is_transformers_folder(folder) else "")
        + "; a stage that takes --tokenizer can name one instead")


def _named_by_data_folder(folder: Path) -> str:
    """The tokenizer a prepared data folder's meta.json names ("" for any other folder)."""
    path = folder / "meta.json"
    if not path.is_file():
        return ""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    return meta.get("tokenizer", "") if isinstance(meta, dict) else ""
