"""Export a trained model to the Hugging Face `transformers` format.

    python export.py --out_dir=out/demo_llama [--hf_dir=out/demo_llama/hf]
    python export.py --out_dir=out/demo_llama --gguf [--gguf_path=out/demo_llama/model.gguf]

Writes config.json + model.safetensors + generation_config.json and the run's tokenizer as a fast
tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json), so that
`AutoModelForCausalLM` and `AutoTokenizer.from_pretrained(HF_DIR)`, and with them
`pipeline("text-generation", model=HF_DIR)`, take the folder as is and give the same greedy text as
`sample.py --temperature=0`. The run's end-of-text id is eos (generate stops at the end of a
document, as sample.py does) and bos (the tokenizer starts each prompt with it, as sample.py does).
The run's tokenizer.json is kept beside them as tinyhelen_tokenizer.json and its data meta as
tinyhelen_meta.json, so that sample.py, evaluate.py and every stage open the folder as they open the
run (tinyhelen/runs.py).

--gguf writes one GGUF file instead (tinyhelen/interop_gguf.py), which llama.cpp loads and runs: the Llama,
and Mamba-1 / Mamba-2 without an MLP after each mixer, with a gpt-2K tokenizer.

Mistakes (no checkpoint, a model the format cannot hold, an unwritable destination) exit with code
2 and say what to do.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tinyhelen import config as config_lib
from tinyhelen import interop
from tinyhelen import interop_gguf
from tinyhelen.atomic import atomic_write_json
from tinyhelen.checkpoint import CheckpointError, load_model
from tinyhelen.runs import EXPORT_META, EXPORT_TOKENIZER, load_tokenizer_from
from tinyhelen.pretrained import resolve


@dataclass
class ExportConfig:
    out_dir: str = "out/demo_llama"  # run folder holding ckpt.pt (or a ckpt.pt path)
    hf_dir: str = ""                 # destination; empty = the run folder's hf/
    gguf: bool = False               # write a GGUF file for llama.cpp instead of the transformers folder
    gguf_path: str = ""              # with --gguf; empty = the run folder's model.gguf


def find_tokenizer(run_dir: Path, meta: dict) -> tuple[object | None, str]:
    """(the run's tokenizer, "") by tinyhelen/runs.py's rule, or (None, why) when the run has none: the
    model still exports, with a warning."""
    try:
        return load_tokenizer_from(run_dir, meta), ""
    except (CheckpointError, OSError, ValueError) as e:
        return None, str(e)


def end_of_text_id(meta: dict, tokenizer, why: str, vocab_size: int) -> int | None:
    """The run's end-of-text id: from the prepared data's meta saved in the checkpoint, else from
    the run's tokenizer; None (with a warning) when neither is there."""
    eot_id = meta.get("eot_id")
    if eot_id is None:
        if tokenizer is None:
            print(f"warning: no end-of-text id for this run ({why}); the export has no eos_token_id, so "
                  "transformers' generate will run to max_new_tokens", file=sys.stderr)
            return None
        eot_id = tokenizer.eot_id
    if not 0 <= eot_id < vocab_size:
        raise CheckpointError(f"the run's end-of-text id {eot_id} is outside the model's vocabulary of "
                              f"{vocab_size}: the checkpoint and its data do not belong together")
    return int(eot_id)


def export(cfg: ExportConfig) -> Path:
    out_dir = Path(resolve(cfg.out_dir))  # a short name or a .gguf file: its imported run folder
    run_dir = out_dir.parent if out_dir.suffix == ".pt" else out_dir
    model, ckpt = load_model(out_dir)
    meta = ckpt.get("data_meta") or {}
    tokenizer, why = find_tokenizer(run_dir, meta)
    if cfg.gguf:
        return export_gguf(cfg, run_dir, model, tokenizer)
    eot_id = end_of_text_id(meta, tokenizer, why, model.config.vocab_size)
    hf_dir = Path(cfg.hf_dir) if cfg.hf_dir else run_dir / "hf"
    if hf_dir.exists() and not hf_dir.is_dir():
        raise NotADirectoryError(f"--hf_dir={hf_dir} is a file: give a folder to write the model into")
    interop.save_hf(model, hf_dir, eos_token_id=eot_id)
    if eot_id is None:
        tokenizer = None  # warned about above: without an end-of-text id there is no tokenizer either
    elif tokenizer is None:
        print(f"warning: no tokenizer for this run ({why}); the export has no tokenizer files, so "
              "AutoTokenizer cannot load it", file=sys.stderr)
    else:
        interop.save_hf_tokenizer(tokenizer, hf_dir, getattr(model.config, "max_seq_len", 1 << 20))
    if (run_dir / "tokenizer.json").is_file():
        shutil.copyfile(run_dir / "tokenizer.json", hf_dir / EXPORT_TOKENIZER)
    if meta:
        atomic_write_json(hf_dir / EXPORT_META, meta)
    print(f"wrote {hf_dir} ({type(model).__name__}, {model.num_params(non_embedding=False):,} parameters, "
          f"eos_token_id {eot_id}, {'tokenizer ' + tokenizer.name if tokenizer else 'no tokenizer'})")
    return hf_dir


def export_gguf(cfg: ExportConfig, run_dir: Path, model, tokenizer) -> Path:
    path = Path(cfg.gguf_path) if cfg.gguf_path else run_dir / "model.gguf"
    if path.is_dir():
        raise IsADirectoryError(f"--gguf_path={path} is a folder: give the .gguf file to write")
    if tokenizer is None:
        raise CheckpointError(f"a GGUF file holds its tokenizer, and the run in {run_dir} has none: "
                              "put the run's tokenizer.json beside ckpt.pt")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise CheckpointError("--gguf needs the gguf package: pip install -r requirements.txt") from None
    interop_gguf.save_gguf(model, tokenizer, path)
    print(f"wrote {path} ({type(model).__name__}, {model.num_params(non_embedding=False):,} parameters, "
          f"tokenizer {tokenizer.name}, eos/bos {tokenizer.eot_id}, {path.stat().st_size:,} bytes)")
    return path


@config_lib.exits_2_on(CheckpointError, interop.HFFormatError, interop_gguf.GGUFFormatError, OSError)
def main(cfg: ExportConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, ExportConfig())
