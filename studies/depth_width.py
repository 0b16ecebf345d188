"""Depth against width: Llamas of one non-embedding parameter budget, trained on one token budget.

    python studies/depth_width.py --base=configs/demo_llama.py --budget=2900000 --depths=2,4,8,16 \
        --ffn_ratios=2,2.667,4 --tokens=1000000 --out_dir=out/sweep
    python studies/depth_width.py ... --seeds=2,3 --top=3      # the same, then the 3 best shapes again with seeds 2 and 3

"Rethinking Optimization and Architecture for Tiny Language Models" finds that at a fixed size a
tiny model gains from depth. This command asks the same of this engine: for each depth and FFN
ratio it solves for the width (a multiple of head_dim) whose non-embedding parameter count is
closest to the budget, trains it with train.py's pre-training stage (the base config's data,
optimiser and schedule; max_steps set so every run sees the same number of tokens), and records

    bits per byte   the final validation loss (fixed windows, train.py's) in nats per token, times the
                    validation split's tokens per byte, over ln 2: comparable across tokenizers
    train tok/s     mean training throughput over the run's logged windows (the first one dropped)
    gen tok/s       batch-1 greedy decoding speed, gen_tokens new tokens after a short warm-up

Resumable: each run writes OUT_DIR/NAME/result.json when it is done and is skipped after that; a
run killed midway continues from its checkpoint (train.py --resume). The table (summary.md, also
printed) and the plot (sweep.png) are rebuilt from every result.json each time. The wall time of every
run is appended to OUT_DIR/times.jsonl.

The speeds a run records are those of its own training, which on a shared machine depend on what
else ran beside it. `--measure_speed` times every finished shape again, one at a time, with
--speed_steps fresh training steps (the same config, batch and precision, compiled if the base is)
and the same generation measurement, into OUT_DIR/speed/SHAPE.json; the table and the plot then use
those figures (the speed columns say so), so run it on an otherwise idle machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common
from tinyhelen import config as config_lib
from tinyhelen.atomic import atomic_write_json, atomic_write_text
from tinyhelen.checkpoint import CheckpointError
from tinyhelen.config import setting
from tinyhelen.metrics import read_metrics
from model_llama import Llama, LlamaConfig


@dataclass
class SweepConfig:
    base: str = "configs/demo_llama.py"   # the training config every run starts from
    train_args: tuple[str, ...] = ()      # extra train.py flags for every run, e.g. --batch_size=8,--lr=1e-3
    out_dir: str = "out/sweep"
    budget: int = setting(0, min=0)       # non-embedding parameters; 0: the base config model's
    depths: tuple[int, ...] = setting((2, 4, 8), check=common.all_positive)
    ffn_ratios: tuple[float, ...] = setting((2.667,), check=common.all_positive)  # FFN hidden / width
    head_dim: int = setting(32, min=2)    # widths are multiples of it (even: rotary pairs)
    kv_ratio: int = setting(1, min=1)     # query heads per key/value head
    tokens: int = setting(1_000_000, min=1)  # training tokens per run
    seeds: tuple[int, ...] = ()           # extra seeds for the best shapes, e.g. 2,3
    top: int = setting(3, min=1)          # how many of the best shapes get the extra seeds
    gen_tokens: int = setting(64, min=1)  # decoding-speed measurement
    report_only: bool = False             # rebuild the table and plot from the results, train nothing
    measure_speed: bool = False           # time every finished shape again, alone (OUT_DIR/speed/)
    speed_steps: int = setting(40, min=4)  # training steps timed per shape by --measure_speed

    def __post_init__(self):
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (rotary pairs), got {self.head_dim}")


# ----------------------------------------------------------------------------- the shapes

def non_embedding(cfg: LlamaConfig) -> int:
    return Llama(dataclasses.replace(cfg, vocab_size=2, max_seq_len=2)).num_params()


def shape_for(budget: int, depth: int, ffn_ratio: float, head_dim: int, kv_ratio: int,
              base: LlamaConfig) -> LlamaConfig:
    """A width (a multiple of head_dim·kv_ratio) near the one the ratio asks for, and the FFN hidden
    size that then meets the budget (to within 3·width·depth parameters); the ratio is approximate.

    Per layer, with width D, H·head_dim = D and K = H / kv_ratio: qkv D·(D + 2D/kv_ratio), out D²,
    the gated MLP 3·D·F, two norms 2D; plus the final norm D. With F = ratio·D the count is a
    quadratic in D; of the multiples of the width step around its root, the one whose F (solved from
    the budget) gives the ratio closest to the asked one wins."""
    a = depth * (2 + 2 / kv_ratio + 3 * ffn_ratio)
    b = 2 * depth + 1
    d = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    step = head_dim * kv_ratio
    best = None
    for width in sorted({max(step, step * round(d / step) + k * step) for k in (-2, -1, 0, 1, 2)}):
        attention = width * (width + 2 * width // kv_ratio) + width * width + 2 * width
        ffn = round((budget - width - depth * attention) / (3 * width * depth))
        if ffn < 1:
            continue
        err = abs(math.log(ffn / width / ffn_ratio))
        if best is None or err < best[0]:
            best = (err, width, ffn)
    if best is None:
        raise config_lib.ConfigError(f"no Llama of depth {depth} fits a budget of {budget:,} non-embedding "
                                     f"parameters with head_dim {head_dim}: raise --budget or lower the "
                                     f"depth")
    _, width, ffn = best
    heads = width // head_dim
    return dataclasses.replace(base, n_layer=depth, n_embd=width, n_head=heads, n_kv_head=heads // kv_ratio,
                               ffn_hidden=ffn)


def shapes(cfg: SweepConfig, base: LlamaConfig) -> list[tuple[float, LlamaConfig]]:
    """(the FFN ratio asked for, the shape) over the grid; two ratios that round to one shape give
    it once."""
    budget = cfg.budget or non_embedding(base)
    grid = [(float(r), shape_for(budget, int(d), float(r), cfg.head_dim, cfg.kv_ratio, base))
            for d in cfg.depths for r in cfg.ffn_ratios]
    return list({run_name(m, 0): (r, m) for r, m in grid}.values())


def run_name(m: LlamaConfig, seed: int) -> str:
    return f"L{m.n_layer}_D{m.n_embd}_F{m.ffn_hidden}_seed{seed}"


# ----------------------------------------------------------------------------- one run

@torch.inference_mode()
def generation_speed(model, eot_id: int, n: int, device) -> float:
    """Batch-1 greedy decoding tokens/s (no early stop), after a 4-token warm-up."""
    model.eval()
    idx = torch.tensor([[eot_id]], device=device)
    model.generate(idx, 4, temperature=0)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    model.generate(idx, n, temperature=0)
    sync()
    return n / (time.perf_counter() - start)


def train_one(cfg: SweepConfig, train_cfg, model_cfg: LlamaConfig, seed: int, budget: int,
              ratio_asked: float) -> dict:
    import train
    from data.tokens import read_meta, tokens_per_byte
    run_dir = Path(cfg.out_dir) / run_name(model_cfg, seed)
    result_path = run_dir / "result.json"
    state = common.run_state(run_dir, result="result.json")
    if state == common.FINISHED:
        print(f"{run_dir.name}: done, skipped")
        return json.loads(result_path.read_text())
    tokens_per_step = train_cfg.batch_size * train_cfg.seq_len * train_cfg.grad_accum
    steps = max(1, cfg.tokens // tokens_per_step)
    run_cfg = dataclasses.replace(train_cfg, model=model_cfg, out_dir=str(run_dir), seed=seed,
                                  max_steps=steps,
                                  warmup_steps=min(train_cfg.warmup_steps, steps // 10),
                                  ckpt_every=min(train_cfg.ckpt_every, steps), sample_tokens=0,
                                  resume=state == common.STOPPED, init_from="")
    label = (f"{run_dir.name}: {non_embedding(model_cfg):,} non-embedding parameters, {steps} steps"
             + (" (resuming)" if run_cfg.resume else ""))
    trainer = common.Runner(cfg.out_dir).call("train", label, train.pretrain, run_cfg)
    rows = read_metrics(run_dir / "metrics.jsonl")
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    val_loss = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    val_tokens_per_byte = tokens_per_byte(read_meta(train_cfg.data_dir), "validation")
    result = {"name": run_dir.name, "n_layer": model_cfg.n_layer, "n_embd": model_cfg.n_embd,
              "n_head": model_cfg.n_head, "n_kv_head": model_cfg.n_kv_head,
              "ffn_hidden": model_cfg.ffn_hidden, "ffn_ratio": model_cfg.ffn_hidden / model_cfg.n_embd,
              "ffn_ratio_asked": ratio_asked, "seed": seed,
              "non_embedding_params": non_embedding(model_cfg), "budget": budget, "steps": steps,
              "train_tokens": trainer.tokens_seen, "val_loss": val_loss,
              "bits_per_byte": val_loss * val_tokens_per_byte / math.log(2),
              "train_tokens_per_s": statistics.mean(speeds[1:] or speeds),
              "gen_tokens_per_s": generation_speed(trainer.model, read_meta(train_cfg.data_dir)["eot_id"],
                                                   cfg.gen_tokens, trainer.device)}
    atomic_write_json(result_path, result)
    return result


def measure_speed(cfg: SweepConfig, train_cfg, model_cfg: LlamaConfig) -> dict:
    """Training tokens/s over cfg.speed_steps fresh steps (the first logged window, with compilation,
    left out) and generation tokens/s, of one shape, in a scratch folder that is removed after."""
    import shutil
    import tempfile
    import train
    folder = Path(tempfile.mkdtemp(prefix="speed_", dir=cfg.out_dir))
    try:
        log_every = max(1, cfg.speed_steps // 4)
        run_cfg = dataclasses.replace(train_cfg, model=model_cfg, out_dir=str(folder), max_steps=cfg.speed_steps,
                                      warmup_steps=0, log_every=log_every, eval_every=cfg.speed_steps,
                                      eval_steps=1, ckpt_every=cfg.speed_steps, sample_tokens=0, resume=False,
                                      init_from="", bpb_genres="")
        trainer = train.pretrain(run_cfg)
        speeds = [r["tokens_per_s"] for r in read_metrics(folder / "metrics.jsonl") if "tokens_per_s" in r]
        from data.tokens import read_meta
        return {"train_tokens_per_s": statistics.mean(speeds[1:] or speeds), "steps": cfg.speed_steps,
                "gen_tokens_per_s": generation_speed(trainer.model, read_meta(train_cfg.data_dir)["eot_id"],
                                                     cfg.gen_tokens, trainer.device)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_speeds(out_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out_dir / "speed").glob("*.json"))}


# ----------------------------------------------------------------------------- the table and the plot

def collect(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/result.json"))]


def by_shape(results: list[dict], speeds: dict[str, dict] | None = None) -> list[dict]:
    """One row per shape: means (and the spread when there are several seeds), best first; the speeds
    of a shape in `speeds` (measure_speed's) replace those its runs recorded."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["name"].rsplit("_seed", 1)[0], []).append(r)
    rows = []
    for shape, rs in groups.items():
        bpb, bpb_sd = common.mean_sd([r["bits_per_byte"] for r in rs])
        rows.append({**{k: rs[0][k] for k in ("n_layer", "n_embd", "n_head", "ffn_hidden", "ffn_ratio",
                                               "ffn_ratio_asked", "non_embedding_params")},
                     "shape": shape, "seeds": len(rs), "bits_per_byte": bpb, "bpb_std": bpb_sd,
                     "train_tokens_per_s": statistics.mean(r["train_tokens_per_s"] for r in rs),
                     "gen_tokens_per_s": statistics.mean(r["gen_tokens_per_s"] for r in rs),
                     "speed": "runs"})
        if speeds and shape in speeds:
            rows[-1].update({k: speeds[shape][k] for k in ("train_tokens_per_s", "gen_tokens_per_s")},
                            speed="alone")
    return sorted(rows, key=lambda r: r["bits_per_byte"])


def table(rows: list[dict]) -> str:
    alone = any(r["speed"] == "alone" for r in rows)
    when = " (alone)" if alone else ""
    header = ["shape", "layers", "width", "heads", "FFN (ratio)", "non-emb params", "seeds", "val bits/byte",
              f"train tok/s{when}", f"gen tok/s{when}"]
    return common.markdown_table(header, [
        [r["shape"], r["n_layer"], r["n_embd"], r["n_head"], f"{r['ffn_hidden']} ({r['ffn_ratio']:.2f})",
         f"{r['non_embedding_params']:,}", r["seeds"], common.format_mean_sd(r["bits_per_byte"], r["bpb_std"]),
         f"{r['train_tokens_per_s']:,.0f}" + ("" if r["speed"] == "alone" or not alone else " (run)"),
         f"{r['gen_tokens_per_s']:,.0f}"] for r in rows])


def plot(rows: list[dict], path: Path) -> None:
    with common.figure(path, 1, 3, figsize=(13, 4), dpi=100) as (fig, axes):
        for ratio in sorted({r["ffn_ratio_asked"] for r in rows}):
            rs = sorted((r for r in rows if r["ffn_ratio_asked"] == ratio), key=lambda r: r["n_layer"])
            depth = [r["n_layer"] for r in rs]
            axes[0].errorbar(depth, [r["bits_per_byte"] for r in rs], yerr=[r["bpb_std"] or 0.0 for r in rs],
                             marker="o", label=f"FFN ratio ~{ratio:g}")
            axes[1].plot(depth, [r["train_tokens_per_s"] for r in rs], marker="o")
            axes[2].plot(depth, [r["gen_tokens_per_s"] for r in rs], marker="o")
        when = " (timed alone)" if any(r["speed"] == "alone" for r in rows) else ""
        for ax, label in zip(axes, ("validation bits per byte", f"training tokens/s{when}",
                                    f"generation tokens/s{when}")):
            ax.set_xlabel("layers (width shrinks to keep the budget)")
            ax.set_ylabel(label)
            ax.set_xscale("log", base=2)
        axes[0].legend()


# ----------------------------------------------------------------------------- the command

def sweep(cfg: SweepConfig) -> list[dict]:
    import trainer
    out_dir = Path(cfg.out_dir)
    if not cfg.report_only:
        if not Path(cfg.base).is_file():
            raise config_lib.ConfigError(f"--base={cfg.base}: no such training config file")
        train_cfg = config_lib.parse_args(trainer.TrainConfig(), [cfg.base, *common.flag_list(cfg.train_args)])
        if type(train_cfg.model).__name__ != "LlamaConfig":
            raise config_lib.ConfigError(f"--base={cfg.base}: the sweep shapes Llamas; its model is a "
                                         f"{type(train_cfg.model).__name__}")
        budget = cfg.budget or non_embedding(train_cfg.model)
        grid = shapes(cfg, train_cfg.model)
        for ratio, m in grid:
            train_one(cfg, train_cfg, m, train_cfg.seed, budget, ratio)
        if cfg.seeds:
            names = {run_name(m, train_cfg.seed): (ratio, m) for ratio, m in grid}
            ranked = by_shape([r for r in collect(out_dir) if r["name"] in names])
            best = [names[f"{row['shape']}_seed{train_cfg.seed}"] for row in ranked[:cfg.top]]
            for ratio, m in best:
                for seed in cfg.seeds:
                    train_one(cfg, train_cfg, m, seed, budget, ratio)
    if cfg.measure_speed:
        if cfg.report_only:
            raise config_lib.ConfigError("--measure_speed trains; it cannot go with --report_only")
        shapes_done = {r["name"].rsplit("_seed", 1)[0]: r for r in collect(out_dir)}
        for shape, r in shapes_done.items():
            m = dataclasses.replace(train_cfg.model, n_layer=r["n_layer"], n_embd=r["n_embd"], n_head=r["n_head"],
                                    n_kv_head=r["n_kv_head"], ffn_hidden=r["ffn_hidden"])
            speed = common.Runner(out_dir).call(
                "measure_speed", f"{shape}: timing {cfg.speed_steps} steps and {cfg.gen_tokens} generated tokens",
                measure_speed, cfg, train_cfg, m)
            atomic_write_json(out_dir / "speed" / f"{shape}.json", speed)
    rows = by_shape(collect(out_dir), read_speeds(out_dir))
    if not rows:
        raise config_lib.ConfigError(f"no finished runs in {out_dir} to report")
    text = table(rows)
    atomic_write_text(out_dir / "summary.md", text + "\n")
    atomic_write_json(out_dir / "summary.json", rows)
    plot(rows, out_dir / "sweep.png")
    print(text)
    print(f"wrote {out_dir / 'summary.md'}, {out_dir / 'summary.json'} and {out_dir / 'sweep.png'}")
    return rows


@config_lib.exits_2_on(CheckpointError, FileNotFoundError)
def main(cfg: SweepConfig) -> None:
    sweep(cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, SweepConfig())
