"""The sweep that chose the README demo: which small Llama learns most in about ten minutes on 2 cores.

    python studies/demo_sweep.py                       # every candidate, then the table and the plot
    python studies/demo_sweep.py --only=w128_l4,w192_l4 --out_dir=out/demo_sweep

Each candidate is configs/demo_llama.py with a few settings changed (the CANDIDATES table below: size,
learning rate, batch, steps). Steps were set from throughput measured on the machine the sweep ran
on, fp32 on 2 cores, so that training takes about ten minutes there; the table reports the measured
training time of each run (optimizer steps only), so a candidate that ran over is visible.

Every run is scored the same way as the demo reports itself: bits per byte of the final model on the
held-out leaner validation and test text of the book, conversation, textbook and wiki genres (the
mix of the issue's reference point). The choice is made on validation; test is shown, not used.

Resumable: a finished run has OUT_DIR/NAME/bits_per_byte.json and is skipped; a killed one continues
from its checkpoint. OUT_DIR/summary.md and sweep.png are rebuilt from every finished run; the wall
time of every run is appended to OUT_DIR/times.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path


if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common  # noqa: E402
from tinyhelen import config as config_lib  # noqa: E402
from tinyhelen.atomic import atomic_write_text  # noqa: E402
from tinyhelen.checkpoint import CheckpointError  # noqa: E402
from tinyhelen.metrics import read_metrics  # noqa: E402

BASE = "configs/demo_llama.py"
GENRES = "book,conversation,textbook,wiki"

# name: settings on top of BASE. Widths keep head_dim 32 and two query heads per key/value head;
# ffn_hidden is about 8/3 of the width (the Llama ratio), rounded to a multiple of 16.
CANDIDATES: dict[str, dict] = {
    "w256_l4": {"model.n_layer": 4, "model.n_embd": 256, "model.ffn_hidden": 688, "max_steps": 440},
    "w256_l6": {"model.n_layer": 6, "model.n_embd": 256, "model.ffn_hidden": 688, "max_steps": 280},
    "w256_l4_lr6": {"model.n_layer": 4, "model.n_embd": 256, "model.ffn_hidden": 688, "max_steps": 440,
                    "lr": 6e-3, "min_lr": 6e-4},
    "w192_l4": {"model.n_layer": 4, "model.n_embd": 192, "model.ffn_hidden": 512, "max_steps": 660},
    "w128_l4": {"model.n_layer": 4, "model.n_embd": 128, "model.ffn_hidden": 344, "max_steps": 850},
    "w128_l4_long": {"model.n_layer": 4, "model.n_embd": 128, "model.ffn_hidden": 344, "max_steps": 1250},
}


@dataclass
class DemoSweepConfig:
    out_dir: str = "out/demo_sweep"
    only: tuple[str, ...] = ()  # candidate names, e.g. w128_l4,w192_l4; empty: all
    report_only: bool = False
    threads: int = 0        # CPU threads per run; 0 = torch's default


def candidate_config(name: str, threads: int, out_dir: Path):
    from trainer import TrainConfig
    settings = dict(CANDIDATES[name])
    width = settings.get("model.n_embd")
    if width:  # head_dim 32, two query heads per key/value head
        settings.setdefault("model.n_head", width // 32)
        settings.setdefault("model.n_kv_head", width // 64)
    args = [BASE] + [f"--{k}={v}" for k, v in settings.items()]
    args += [f"--out_dir={out_dir / name}", f"--bpb_genres={GENRES}", f"--threads={threads}",
             "--dtype=fp32", "--compile=true", "--sample_tokens=0", "--eval_every=100", "--ckpt_every=100"]
    return config_lib.parse_args(TrainConfig(), args)


def run_one(name: str, cfg: DemoSweepConfig) -> None:
    import train
    # train.py writes bits_per_byte.json (the bpb_genres scores) after the run's last step
    state = common.run_state(Path(cfg.out_dir) / name, result="bits_per_byte.json")
    if state == common.FINISHED:
        print(f"{name}: done, skipped", flush=True)
        return
    run_cfg = candidate_config(name, cfg.threads, Path(cfg.out_dir))
    run_cfg = dataclasses.replace(run_cfg, resume=state == common.STOPPED)
    common.Runner(cfg.out_dir).call("train", f"{name}: {CANDIDATES[name]}" + (" (resuming)" if run_cfg.resume else ""),
                                    train.pretrain, run_cfg)


def collect(out_dir: Path) -> list[dict]:
    from model_llama import Llama
    rows = []
    for name in CANDIDATES:
        path = out_dir / name / "bits_per_byte.json"
        if not path.is_file():
            continue
        bpb = json.loads(path.read_text())
        run_cfg = candidate_config(name, 0, out_dir)
        metrics = read_metrics(out_dir / name / "metrics.jsonl")
        trained = [r for r in metrics if "train_s" in r]
        rows.append({
            "name": name, "params": Llama(run_cfg.model).num_params(), "steps": run_cfg.max_steps,
            "lr": run_cfg.lr, "batch": run_cfg.batch_size, "tokens": trained[-1]["tokens"],
            "train_s": trained[-1]["train_s"], "val_bpb": bpb["validation"]["bits_per_byte"],
            "test_bpb": bpb["test"]["bits_per_byte"],
        })
    return rows


def table(rows: list[dict]) -> str:
    best = min(rows, key=lambda r: r["val_bpb"])["name"]
    header = ["candidate", "non-embedding params", "lr", "batch", "steps", "tokens", "training s", "val bpb",
              "test bpb"]
    return common.markdown_table(header, [
        [r["name"] + (" (chosen)" if r["name"] == best else ""), f"{r['params']:,}", f"{r['lr']:g}", r["batch"],
         r["steps"], f"{r['tokens']:,}", f"{r['train_s']:.0f}", f"{r['val_bpb']:.4f}", f"{r['test_bpb']:.4f}"]
        for r in sorted(rows, key=lambda r: r["val_bpb"])])


def plot(rows: list[dict], path: Path) -> None:
    with common.figure(path, figsize=(6.5, 4)) as (fig, ax):
        for r in rows:
            ax.scatter(r["train_s"] / 60, r["val_bpb"], s=20 + r["params"] / 1e5)
            ax.annotate(r["name"], (r["train_s"] / 60, r["val_bpb"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        ax.axvline(10, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("training minutes (optimizer steps only)")
        ax.set_ylabel("validation bits per byte")
        ax.set_title("demo candidates: held-out book, conversation, textbook, wiki\n(marker size: parameters)",
                     fontsize=10)


def demo_sweep(cfg: DemoSweepConfig) -> list[dict]:
    names = list(cfg.only) or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise config_lib.ConfigError(f"--only: unknown candidate(s) {', '.join(unknown)}; "
                                     f"the candidates are {', '.join(CANDIDATES)}")
    out_dir = Path(cfg.out_dir)
    if not cfg.report_only:
        for name in names:
            candidate_config(name, cfg.threads, out_dir)  # every candidate's settings checked first
        for name in names:
            run_one(name, cfg)
    rows = collect(out_dir)
    if not rows:
        raise config_lib.ConfigError(f"no finished runs in {out_dir} to report")
    text = table(rows)
    atomic_write_text(out_dir / "summary.md", text + "\n")
    plot(rows, out_dir / "sweep.png")
    print(text)
    print(f"wrote {out_dir / 'summary.md'} and {out_dir / 'sweep.png'}")
    return rows


@config_lib.exits_2_on(CheckpointError, FileNotFoundError)
def main(cfg: DemoSweepConfig) -> None:
    demo_sweep(cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, DemoSweepConfig())
