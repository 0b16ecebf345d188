"""Generate text from a trained model.

    python sample.py --out_dir=out/demo_llama --prompt="Once upon a time" --num_samples=3 \
        --max_new_tokens=200 --temperature=0.8 --top_k=50 --top_p=0.95

Reads OUT_DIR/ckpt.pt and the tokenizer the run copied beside it (or a transformers folder that
export.py wrote: tinyhelen/runs.py); works for every model type.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from tinyhelen import config as config_lib
from tinyhelen import machine as machine_lib
from tinyhelen.checkpoint import CheckpointError
from tinyhelen.config import setting
from tinyhelen.runs import load_run


@dataclass
class SampleConfig:
    out_dir: str = "out/demo_llama"     # a run folder (holds ckpt.pt), a ckpt.pt path or an export
    prompt: str = "Once upon a time"    # text to continue; "" starts from the end-of-text token alone
    num_samples: int = setting(3, min=1)
    max_new_tokens: int = setting(200, min=1)
    temperature: float = setting(0.8, min=0)   # 0 = greedy
    top_k: int = setting(50, min=0)            # 0 = off
    top_p: float = setting(0.95, above=0, max=1)  # 1 = off
    seed: int = 1337
    device: str = setting("auto", check=machine_lib.check_device)  # auto | cpu | cuda | cuda:N


def generate_texts(cfg: SampleConfig) -> list[str]:
    device = machine_lib.setup(cfg.device, "fp32", distributed=False).device
    model, tokenizer, _ = load_run(cfg.out_dir, device)
    # Documents were joined with end-of-text during training, so it is the natural start token.
    prompt_ids = [tokenizer.eot_id] + tokenizer.encode(cfg.prompt)
    idx = torch.tensor([prompt_ids] * cfg.num_samples, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    # An imported chat model also ends a turn with its end-of-turn token (tokenizer.stop_ids).
    stops = getattr(tokenizer, "stop_ids", [tokenizer.eot_id])
    out = model.generate(idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                         top_p=cfg.top_p if cfg.top_p < 1 else None, eot_id=stops, generator=generator)
    texts = []
    for row in out.tolist():
        new = row[len(prompt_ids):]
        end = next((i for i, t in enumerate(new) if t in stops), len(new))
        texts.append(cfg.prompt + tokenizer.decode(new[:end]))
    return texts


def main(cfg: SampleConfig) -> None:
    try:
        texts = generate_texts(cfg)
    except (CheckpointError, FileNotFoundError, ValueError) as e:  # ValueError: prompt too long, device
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} ---\n{text}\n", flush=True)


if __name__ == "__main__":
    config_lib.run_cli(main, SampleConfig())
