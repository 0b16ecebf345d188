"""Export a trained model to the Hugging Face `transformers` format.

    python export.py --out_dir=out/demo_llama [--hf_dir=out/demo_llama/hf]

Writes config.json + model.safetensors (and the run's tokenizer.json for reference), so that
`transformers.LlamaForCausalLM.from_pretrained(HF_DIR)` (or MambaForCausalLM / Mamba2ForCausalLM)
loads the weights and gives the same logits as this engine.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import config as config_lib
from checkpoint import CheckpointError, load_model


@dataclass
class ExportConfig:
    out_dir: str = "out/demo_llama"  # run folder holding ckpt.pt
    hf_dir: str = ""                 # destination; empty = OUT_DIR/hf


def main(cfg: ExportConfig) -> None:
    try:
        model, _ = load_model(cfg.out_dir)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    hf_dir = Path(cfg.hf_dir or Path(cfg.out_dir) / "hf")
    model.save_hf(hf_dir)
    tokenizer = Path(cfg.out_dir) / "tokenizer.json"
    if tokenizer.is_file():
        shutil.copyfile(tokenizer, hf_dir / "tinyhelen_tokenizer.json")
    print(f"wrote {hf_dir} ({type(model).__name__}, {model.num_params(non_embedding=False):,} parameters)")


if __name__ == "__main__":
    config_lib.run_cli(main, ExportConfig())
