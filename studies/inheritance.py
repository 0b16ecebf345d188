"""The parameter-inheritance ablation: does an inherited small model reach a validation loss in fewer
steps than the same shape from random weights, and which selection criterion helps most?

    python studies/inheritance.py --from=out/big_run --to=configs/small.py --base=configs/demo_llama.py \
        --criteria=random,l2,taylor --seeds=1,2,3 --out_dir=out/inherit_study

For each seed it trains the --to shape from random weights ("scratch") and, for each criterion, from
the weights inherit.py cuts out of --from with that criterion (random selection draws with the seed;
l2 and taylor select the same units every seed, the seed then changes the data order and nothing
else), each through train.py's pre-training stage with the --base training config (its data_dir
must hold the source's tokenizer). The target loss is --target_loss, or by default the mean final
validation loss of the scratch runs; the table gives, per arm, the mean final validation loss
and the mean number of steps to reach the target (at the base config's eval_every resolution),
and for the inherited arms the validation loss of the cut before any training (the same fixed
windows, in fp32): how much of the source each criterion keeps.

Resumable: a finished run (result.json) is skipped, a stopped one continues from its checkpoint;
summary.md, summary.json and curves.png are rebuilt from every result each time. The wall time of
every cut and run is appended to OUT_DIR/times.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common
from tinyhelen import config as config_lib
from tinyhelen.atomic import atomic_write_json, atomic_write_text
from tinyhelen.checkpoint import CheckpointError, load_checkpoint, model_config_from_dict
from tinyhelen.config import setting
from tinyhelen.metrics import read_metrics

CRITERIA = ("random", "l2", "taylor")


def _criteria(names: tuple[str, ...]) -> str | None:
    if names and all(c in CRITERIA for c in names):
        return None
    return f"must be a comma list of {', '.join(CRITERIA)}"


@dataclass
class StudyConfig:
    source: str = ""                 # --from: the trained larger run
    to: str = ""                     # the target shape: a config file whose model is a LlamaConfig
    base: str = "configs/demo_llama.py"  # the training config of every run (data, optimiser, schedule)
    train_args: tuple[str, ...] = ()  # extra train.py flags for every run, e.g. --max_steps=300
    out_dir: str = "out/inherit_study"
    criteria: tuple[str, ...] = setting(CRITERIA, check=_criteria)
    layers: str = setting("ends", choices=("ends", "importance"))
    seeds: tuple[int, ...] = setting((1, 2, 3), check=common.at_least_one)
    target_loss: float = setting(0.0, min=0)  # 0: the scratch runs' mean final validation loss
    report_only: bool = False


def arms(cfg: StudyConfig) -> list[str]:
    return ["scratch", *cfg.criteria]


def run_one(cfg: StudyConfig, train_cfg, arm: str, seed: int) -> dict:
    import inherit
    import train
    folder = Path(cfg.out_dir) / f"{arm}_seed{seed}"
    run_dir = folder / "run"
    state = common.run_state(run_dir, result=folder / "result.json")
    if state == common.FINISHED:
        print(f"{folder.name}: done, skipped")
        return json.loads((folder / "result.json").read_text())
    runner = common.Runner(cfg.out_dir)
    init_from = ""
    if arm != "scratch":
        init = folder / "init"
        if not (init / "ckpt.pt").is_file():  # inherit.py writes its checkpoint atomically, last
            runner.call("inherit", f"{folder.name}: the {arm} cut of {cfg.source}", inherit.inherit,
                        inherit.InheritConfig(source=cfg.source, to=cfg.to, out_dir=str(init), layers=cfg.layers,
                                              criterion=arm, seed=seed, data_dir=train_cfg.data_dir))
        init_from = str(init)
    run_cfg = dataclasses.replace(train_cfg, out_dir=str(run_dir), seed=seed, init_from=init_from,
                                  sample_tokens=0, resume=state == common.STOPPED)
    runner.call("train", f"{folder.name}: training{' (resuming)' if run_cfg.resume else ''}",
                train.pretrain, run_cfg)
    curve = [(r["step"], r["val_loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]
    result = {"arm": arm, "seed": seed, "curve": curve, "final_val_loss": curve[-1][1],
              "steps": run_cfg.max_steps}
    atomic_write_json(folder / "result.json", result)
    add_initial_loss(folder, train_cfg)
    return json.loads((folder / "result.json").read_text())


def initial_loss(init_dir: Path, train_cfg) -> float:
    """An inherited model's validation loss before any training, on the windows train.py evaluates
    (its first eval_steps batches of the validation split, fixed shuffle), in fp32."""
    import torch
    from tinyhelen.checkpoint import load_model
    from data.tokens import TokenBatches, open_tokens
    from train import VALIDATION_SEED
    model, _ = load_model(init_dir)
    batches = TokenBatches(open_tokens(train_cfg.data_dir, "validation"), train_cfg.batch_size, train_cfg.seq_len,
                           seed=VALIDATION_SEED)
    steps = min(train_cfg.eval_steps * train_cfg.grad_accum, batches.num_windows // batches.global_batch)
    with torch.no_grad():
        return sum(model(*batches.next_batch())[1].item() for _ in range(steps)) / steps


def add_initial_loss(folder: Path, train_cfg) -> None:
    """Fill in result.json's initial_val_loss of an inherited arm (results written before it existed
    lack it); scratch arms start from noise and get None."""
    path = folder / "result.json"
    result = json.loads(path.read_text())
    if "initial_val_loss" not in result:
        init = folder / "init"
        result["initial_val_loss"] = initial_loss(init, train_cfg) if (init / "ckpt.pt").is_file() else None
        atomic_write_json(path, result)


def steps_to(curve, target: float) -> int | None:
    """The first evaluated step whose validation loss is at or below target (None: never)."""
    return next((step for step, loss in curve if loss <= target), None)


def summarise(results: list[dict], target_loss: float) -> tuple[list[dict], float]:
    scratch = [r["final_val_loss"] for r in results if r["arm"] == "scratch"]
    target = target_loss or (statistics.mean(scratch) if scratch else 0.0)
    rows = []
    order = ("scratch",) + CRITERIA
    for arm in sorted({r["arm"] for r in results}, key=order.index):
        rs = [r for r in results if r["arm"] == arm]
        final, final_sd = common.mean_sd([r["final_val_loss"] for r in rs])
        initial = [r["initial_val_loss"] for r in rs if r.get("initial_val_loss") is not None]
        initial, initial_sd = common.mean_sd(initial) if initial else (None, None)
        hit = [s for s in (steps_to(r["curve"], target) for r in rs) if s is not None]
        rows.append({"arm": arm, "seeds": len(rs), "final_val_loss": final, "final_std": final_sd,
                     "initial_val_loss": initial, "initial_std": initial_sd,
                     "steps_to_target": statistics.mean(hit) if hit else None,
                     "reached": f"{len(hit)}/{len(rs)}"})
    return rows, target


def table(rows: list[dict], target: float) -> str:
    header = ["start", "seeds", "val loss before training", "final val loss",
              "steps to target (mean over runs reaching it)", "reached"]
    return f"target validation loss {target:.4f}\n\n" + common.markdown_table(header, [
        [r["arm"], r["seeds"],
         "-" if r["initial_val_loss"] is None else common.format_mean_sd(r["initial_val_loss"], r["initial_std"]),
         common.format_mean_sd(r["final_val_loss"], r["final_std"]),
         "-" if r["steps_to_target"] is None else f"{r['steps_to_target']:.0f}", r["reached"]] for r in rows])


def plot(results: list[dict], target: float, path: Path) -> None:
    with common.figure(path, figsize=(7, 4.5), dpi=100) as (fig, ax):
        colours = {}
        for r in results:  # one colour per arm, one line per seed, the arm named once in the legend
            start = [] if r.get("initial_val_loss") is None else [(0, r["initial_val_loss"])]
            steps, losses = zip(*start, *r["curve"])
            label = None if r["arm"] in colours else r["arm"]
            colour = colours.setdefault(r["arm"], f"C{len(colours)}")
            ax.plot(steps, losses, color=colour, alpha=0.8, label=label)
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.legend()


def study(cfg: StudyConfig) -> list[dict]:
    import inherit
    import trainer
    out_dir = Path(cfg.out_dir)
    if not cfg.report_only:
        if not cfg.source:
            raise config_lib.ConfigError("give --from=RUN, the trained larger run to inherit from")
        if not Path(cfg.base).is_file():
            raise config_lib.ConfigError(f"--base={cfg.base}: no such training config file")
        source = load_checkpoint(cfg.source)
        src_model = model_config_from_dict(source["config"]["model"])
        target = inherit.check_target(src_model, inherit.read_target(cfg.to), src_model.vocab_size)
        train_cfg = config_lib.parse_args(trainer.TrainConfig(), [cfg.base, *common.flag_list(cfg.train_args)])
        train_cfg = dataclasses.replace(train_cfg, model=target)
        for seed in cfg.seeds:
            for arm in arms(cfg):
                run_one(cfg, train_cfg, arm, seed)
        for path in sorted(out_dir.glob("*/result.json")):
            add_initial_loss(path.parent, train_cfg)
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/result.json"))]
    if not results:
        raise config_lib.ConfigError(f"no finished runs in {out_dir} to report")
    rows, target = summarise(results, cfg.target_loss)
    text = table(rows, target)
    atomic_write_text(out_dir / "summary.md", text + "\n")
    atomic_write_json(out_dir / "summary.json", {"target_loss": target, "rows": rows})
    plot(results, target, out_dir / "curves.png")
    print(text)
    return rows


def main(cfg: StudyConfig) -> None:
    import inherit
    config_lib.exits_2_on(inherit.InheritError, CheckpointError, FileNotFoundError)(study)(cfg)


if __name__ == "__main__":
    argv = [("--source=" + a[len("--from="):]) if a.startswith("--from=") else a for a in sys.argv[1:]]
    config_lib.run_cli(main, StudyConfig(), argv)
