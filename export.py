"""Export a trained model to the Hugging Face `transformers` format.

    python export.py --out_dir=out/demo_llama [--hf_dir=out/demo_llama/hf]

Writes config.json + model.safetensors + generation_config.json (and the run's tokenizer.json for
reference), so that `transformers.LlamaForCausalLM.from_pretrained(HF_DIR)` (or MambaForCausalLM /
Mamba2ForCausalLM / BambaForCausalLM) loads the weights and gives the same logits as this engine.
The run's end-of-text id becomes eos_token_id, so transformers' generate stops at the end of a
document as sample.py does. Mistakes (no checkpoint, a model transformers cannot hold, an
unwritable destination) exit with code 2 and say what to do.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import config as config_lib
import interop
from checkpoint import CheckpointError, load_model


@dataclass
class ExportConfig:
    out_dir: str = "out/demo_llama"  # run folder holding ckpt.pt (or a ckpt.pt path)
    hf_dir: str = ""                 # destination; empty = the run folder's hf/


def end_of_text_id(run_dir: Path, ckpt: dict, vocab_size: int) -> int | None:
    """The run's end-of-text id: from the prepared data's meta saved in the checkpoint, else from
    the run's tokenizer; None (with a warning) when neither is there."""
    meta = ckpt.get("data_meta") or {}
    eot_id = meta.get("eot_id")
    if eot_id is None:
        from sample import load_run_tokenizer
        try:
            eot_id = load_run_tokenizer(run_dir, meta).eot_id
        except (CheckpointError, OSError, ValueError) as e:
            print(f"warning: no end-of-text id for this run ({e}); the export has no eos_token_id, so "
                  "transformers' generate will run to max_new_tokens", file=sys.stderr)
            return None
    if not 0 <= eot_id < vocab_size:
        raise CheckpointError(f"the run's end-of-text id {eot_id} is outside the model's vocabulary of "
                              f"{vocab_size}: the checkpoint and its data do not belong together")
    return int(eot_id)


def export(cfg: ExportConfig) -> Path:
    out_dir = Path(cfg.out_dir)
    run_dir = out_dir.parent if out_dir.suffix == ".pt" else out_dir
    model, ckpt = load_model(out_dir)
    eot_id = end_of_text_id(run_dir, ckpt, model.config.vocab_size)
    hf_dir = Path(cfg.hf_dir) if cfg.hf_dir else run_dir / "hf"
    if hf_dir.exists() and not hf_dir.is_dir():
        raise NotADirectoryError(f"--hf_dir={hf_dir} is a file: give a folder to write the model into")
    interop.save_hf(model, hf_dir, eos_token_id=eot_id)
    tokenizer = run_dir / "tokenizer.json"
    if tokenizer.is_file():
        shutil.copyfile(tokenizer, hf_dir / "tinyhelen_tokenizer.json")
    print(f"wrote {hf_dir} ({type(model).__name__}, {model.num_params(non_embedding=False):,} parameters, "
          f"eos_token_id {eot_id})")
    return hf_dir


def main(cfg: ExportConfig) -> None:
    try:
        export(cfg)
    except (CheckpointError, interop.HFFormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    config_lib.run_cli(main, ExportConfig())
