"""The same Llama pre-training on the ORIGINAL (unsimplified) 10M corpus: the paper's baseline.

    python data/prepare.py --corpus=ori --out_dir=out/data/ori
    python train.py configs/ori_llama.py

Everything but the data is identical to configs/leaner_llama.py, so that the two runs differ only in
the text. The tokenizer is gpt-2K trained on the original corpus (prepare.py's default), as in the
paper; to compare the two runs, use bits per byte from evaluate.py, which does not depend on the
tokenizer.
"""
import runpy
from pathlib import Path

# Start from the leaner config and change only the data (runpy: config files are plain Python).
globals().update({k: v for k, v in runpy.run_path(str(Path(__file__).with_name("leaner_llama.py"))).items()
                  if not k.startswith("_")})
data_dir = "out/data/ori"
out_dir = "out/ori_llama"
