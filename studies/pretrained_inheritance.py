"""Issue 24's experiment: a tiny Llama cut out of a real pretrained LLM (SmolLM2-135M-Instruct) against
the same shape trained from scratch, against inheritance from a model trained here, and the paper's
tokenizer comparison (SmolLM2's full 49,152 ids against its cuts to the ids leaner text uses).

    python studies/pretrained_inheritance.py --shapes=rethink,child --seeds=1,2,3
    python studies/pretrained_inheritance.py --report_only      # the table and figure from what is done

Two shapes, each with one token budget (the shape's steps x 16 x 256 tokens) that fits a session on
2 cores:
    rethink  the rethink experiments' 0.73M non-embedding parameters (4 layers, width 128, FFN 344),
             as 2 heads of 64 over 1 kv head, since SmolLM2's heads are 64 wide and kept whole;
             100 steps (410K tokens), every arm
    child    configs/smollm2_child.py: the nearest whole-head cut to the paper's 14M Llama (8 layers,
             width 384 = 6 heads x 64 over 2 kv heads, FFN 1,024; 12.6M non-embedding parameters);
             32 steps (131K tokens; a step here costs about 12 rethink steps), every arm but the
             in-house one
Arms (every one trained on the leaner train split with the shape's training config):
    scratch-gpt2k        random weights, this project's gpt-2K tokenizer
    scratch-smollm2-2k   random weights, SmolLM2's tokenizer cut to its 2,000 ids leaner train uses most
    inhouse-taylor       cut (taylor) from configs/rethink_source.py trained here, gpt-2K (rethink
                         shape only, with that source's 32-wide heads: 4 heads over 2 kv heads, its
                         rotary base; the child shape is larger than that source)
    smollm2-{random,l2,taylor}-2k   cut from SmolLM2 by each criterion, vocabulary cut to 2K
    smollm2-taylor-{4k,8k,16k,49k}  the same taylor body with SmolLM2's vocabulary cut to 4K, 8K,
                                    16K ids, or whole (49,152)
Layers are cut by --layers (ends, the paper's; or importance). l2 and taylor choose the same units every
seed, so their cut is made once per shape and vocabulary and the seed changes the data order only;
random draws with the seed. Taylor and importance score units on a few batches of leaner validation
text in SmolLM2's tokens (inherit.py; the taylor scores are computed once and reused), never on the
test split.

Reported per shape and arm, mean ± sd over seeds: bits per byte on held-out leaner validation text
(the first 30,000 characters of each of book, conversation, textbook and wiki: the same text for
every tokenizer) before training (inherited arms) and at the end; the validation curve in bits per
byte (train.py's validation loss on its fixed windows times the tokens per byte of those windows,
whose text differs a little between tokenizers); the steps to reach the best scratch arm's final
value on that curve; and the mean wall time of a run's training (compilation included, from
times.jsonl: as busy as the machine was). SmolLM2-135M itself, scored on the same text with its own tokenizer and
in the same 256-token windows (not its 2,048-token context), is the reference row.

Resumable: a finished run (result.json) is skipped and a stopped one continues from its checkpoint;
summary.md, summary.json and curves.png are rebuilt from every result each time; the wall time of
every step is appended to OUT_DIR/times.jsonl. Two processes may split the work (--shapes=rethink in
one, --shapes=child in the other): every run folder has one writer (tinyhelen/runlock.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python studies/NAME.py`: import from the repo root, not studies/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies import common
from tinyhelen import config as config_lib
from tinyhelen.atomic import atomic_write_json, atomic_write_text
from tinyhelen.config import setting

SOURCE = "smollm2-135m"
GENRES = "book,conversation,textbook,wiki"
HELD_OUT_CHARS = 30_000
VOCABS = {"2k": 2000, "4k": 4000, "8k": 8000, "16k": 16000, "49k": 0}  # 0: SmolLM2's whole vocabulary


@dataclass(frozen=True)
class Shape:
    base: str                 # the training config every run of this shape starts from
    max_steps: int            # the token budget: max_steps x 16 x 256
    model: dict               # LlamaConfig fields of the SmolLM2-cuttable body
    inhouse: dict | None      # LlamaConfig fields of the in-house arm's body (None: no such arm)
    arms: tuple[str, ...] | None = None  # the arms run at this shape (None: every arm)


SHAPES = {
    "rethink": Shape("configs/rethink_llama.py", 100,
                     dict(n_layer=4, n_embd=128, n_head=2, n_kv_head=1, ffn_hidden=344, max_seq_len=256,
                          rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=False),
                     dict(n_layer=4, n_embd=128, n_head=4, n_kv_head=2, ffn_hidden=344, max_seq_len=256,
                          rope_theta=500000.0, tie_embeddings=False)),
    # 32 steps: a child step costs about 12x a rethink step, and with the whole vocabulary more again
    "child": Shape("configs/smollm2_child.py", 32,
                   dict(n_layer=8, n_embd=384, n_head=6, n_kv_head=2, ffn_hidden=1024, max_seq_len=256,
                        rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True),
                   None),
}


@dataclass(frozen=True)
class Arm:
    name: str
    source: str = ""          # "": scratch; "smollm2" or "inhouse"
    criterion: str = ""
    vocab: str = "2k"         # for SmolLM2's tokenizer: a key of VOCABS; "gpt2k": this project's

    @property
    def shared_cut(self) -> bool:
        """l2 and taylor pick the same units every seed: one cut serves all seeds."""
        return self.source != "" and self.criterion != "random"


ARMS = (Arm("scratch-gpt2k", vocab="gpt2k"), Arm("scratch-smollm2-2k"),
        Arm("inhouse-taylor", "inhouse", "taylor", "gpt2k"),
        *(Arm(f"smollm2-{c}-2k", "smollm2", c) for c in ("random", "l2", "taylor")),
        *(Arm(f"smollm2-taylor-{v}", "smollm2", "taylor", v) for v in ("4k", "8k", "16k", "49k")))
ARM_NAMES = tuple(a.name for a in ARMS)


def _shapes(names: tuple[str, ...]) -> str | None:
    return None if names and all(n in SHAPES for n in names) else f"must be a comma list of {', '.join(SHAPES)}"


def _arms(names: tuple[str, ...]) -> str | None:
    return None if names and all(n in ARM_NAMES for n in names) else f"must be a comma list of {', '.join(ARM_NAMES)}"


@dataclass
class StudyConfig:
    shapes: tuple[str, ...] = setting(tuple(SHAPES), check=_shapes)
    arms: tuple[str, ...] = setting(ARM_NAMES, check=_arms)
    seeds: tuple[int, ...] = setting((1, 2, 3), check=common.at_least_one)
    layers: str = setting("ends", choices=("ends", "importance"))
    data_root: str = ""        # the TinyHelen data ("": ../shared/data/tinyhelen, as data/prepare.py)
    data_out: str = "out/data"  # where the prepared token folders go (reused when already there)
    train_args: tuple[str, ...] = ()  # extra train.py flags for every run, e.g. --threads=2
    out_dir: str = "out/pretrained_inheritance"
    report_only: bool = False
    dry_run: bool = False


# ----------------------------------------------------------------------------- the data and sources

def data_dir(cfg: StudyConfig, vocab: str) -> Path:
    return Path(cfg.data_out) / ("leaner" if vocab == "gpt2k" else f"leaner_smollm2_{vocab}")


def prepare(cfg: StudyConfig, runner: common.Runner, vocab: str) -> Path:
    """The leaner corpus in the arm's tokens (data/prepare.py, once)."""
    from tinyhelen.pretrained import resolve
    folder = data_dir(cfg, vocab)
    if not (folder / "meta.json").is_file():
        if vocab == "gpt2k":
            tokenizer = "train"
        elif VOCABS[vocab]:
            tokenizer = f"compact-smollm2:{VOCABS[vocab]}"
        else:
            tokenizer = str(Path(resolve(SOURCE)) / "tokenizer.json")
        root = [f"--data_root={cfg.data_root}"] if cfg.data_root else []
        runner.command("prepare", ["data/prepare.py", "--corpus=leaner", f"--tokenizer={tokenizer}",
                                   f"--out_dir={folder}", *root])
    return folder


def inhouse_source(cfg: StudyConfig, runner: common.Runner) -> Path:
    """configs/rethink_source.py trained here (the in-house source of the rethink experiments)."""
    import train
    import trainer
    run_dir = Path(cfg.out_dir) / "inhouse_source"
    state = common.run_state(run_dir)
    if state != common.FINISHED:
        train_cfg = config_lib.parse_args(trainer.TrainConfig(), [
            "configs/rethink_source.py", f"--data_dir={prepare(cfg, runner, 'gpt2k')}",
            f"--out_dir={run_dir}", *common.flag_list(cfg.train_args)])
        train_cfg = dataclasses.replace(train_cfg, resume=state == common.STOPPED)
        runner.call("train", "the in-house source (configs/rethink_source.py)", train.pretrain, train_cfg)
    return run_dir


# ----------------------------------------------------------------------------- one run

def held_out(data_root: str, split: str = "validation", chars: int = HELD_OUT_CHARS) -> dict:
    """The first `chars` characters of each genre's held-out documents (the last one cut at a space):
    the same text for every tokenizer, and a quarter of the validation split's cost to score."""
    from evaluate import read_texts
    from inherit import REPO
    root = data_root or str(REPO / ".." / "shared" / "data" / "tinyhelen")
    texts = {}
    for genre, docs in read_texts(root, "leaner", split, GENRES.split(",")).items():
        kept, left = [], chars
        for doc in docs:
            if left <= 0:
                break
            kept.append(doc if len(doc) <= left else doc[:doc.rfind(" ", 0, left) + 1 or left].rstrip())
            left -= len(doc)
        texts[genre] = kept
    return texts


def bits_per_byte(run_dir: Path, data_root: str, split: str = "validation") -> float:
    """Bits per byte of a run folder's model (fp32) on held_out's text, scored as evaluate.py does."""
    import torch
    from evaluate import score_texts
    from tinyhelen.runs import load_run
    model, tokenizer, _ = load_run(run_dir)
    model.float().eval()
    with torch.no_grad():
        seq_len = min(256, model.config.max_seq_len)  # the shapes' training length (SmolLM2's is 2,048)
        report = score_texts(model, tokenizer, held_out(data_root, split), seq_len, 8, "cpu", echo=lambda _: None)
    return report["bits_per_byte"]


def cut(cfg: StudyConfig, runner: common.Runner, shape_name: str, arm: Arm, seed: int) -> Path:
    """The arm's inherited starting point (made once for l2 and taylor), with its held-out bits per byte."""
    import inherit
    from model_llama import LlamaConfig
    shape = SHAPES[shape_name]
    folder = Path(cfg.out_dir) / shape_name / ("cuts/" + arm.name if arm.shared_cut else f"{arm.name}_seed{seed}/init")
    if not (folder / "ckpt.pt").is_file():  # inherit.py writes its checkpoint atomically, last
        data = prepare(cfg, runner, arm.vocab)
        if arm.source == "inhouse":
            source, body, tokenizer, batches = str(inhouse_source(cfg, runner)), shape.inhouse, "", str(data)
        else:
            source, body, batches = SOURCE, shape.model, ""
            tokenizer = str(data / "tokenizer.json") if VOCABS[arm.vocab] else ""  # 0: the whole vocabulary
        target = LlamaConfig(vocab_size=2000, **body)  # the vocabulary comes from the tokenizer
        runner.call("inherit", f"{shape_name}/{arm.name}: the {arm.criterion} cut of {source}", inherit.inherit,
                    inherit.InheritConfig(source=source, out_dir=str(folder), layers=cfg.layers,
                                          criterion=arm.criterion, tokenizer=tokenizer, data_dir=batches,
                                          data_root=cfg.data_root, seed=seed), target)
    if not cfg.dry_run and not (folder / "bpb.json").is_file():
        atomic_write_json(folder / "bpb.json", {"validation": bits_per_byte(folder, cfg.data_root)})
    return folder


def window_tokens_per_byte(data: Path, batch_size: int, seq_len: int, eval_steps: int) -> float:
    """Tokens per byte of the predicted tokens of train.py's validation windows on `data`: the factor
    from its validation loss (nats per token) to bits per byte, loss * factor / ln 2."""
    from data.tokens import TokenBatches, open_tokens, read_meta
    from train import VALIDATION_SEED
    from tinyhelen.runs import load_tokenizer_from
    tokenizer = load_tokenizer_from(data, read_meta(data))
    batches = TokenBatches(open_tokens(data, "validation"), batch_size, seq_len, seed=VALIDATION_SEED)
    steps = min(eval_steps, batches.num_windows // batches.global_batch)
    sizes: dict[int, int] = {}
    tokens = n_bytes = 0
    for _ in range(steps):
        for i in batches.next_batch()[1].flatten().tolist():
            if i not in sizes:  # end-of-text counts one byte, as evaluate.py counts it
                sizes[i] = 1 if i == tokenizer.eot_id else len(tokenizer.token_bytes(i))
            tokens, n_bytes = tokens + 1, n_bytes + sizes[i]
    return tokens / n_bytes


def run_one(cfg: StudyConfig, runner: common.Runner, shape_name: str, arm: Arm, seed: int) -> dict | None:
    import train
    import trainer
    from model_llama import LlamaConfig
    from tinyhelen.metrics import read_metrics
    shape = SHAPES[shape_name]
    folder = Path(cfg.out_dir) / shape_name / f"{arm.name}_seed{seed}"
    run_dir = folder / "run"
    state = common.run_state(run_dir, result=folder / "result.json")
    if state == common.FINISHED:
        print(f"{shape_name}/{folder.name}: done, skipped")
        return json.loads((folder / "result.json").read_text())
    data = prepare(cfg, runner, arm.vocab)
    init = cut(cfg, runner, shape_name, arm, seed) if arm.source else None
    train_cfg = config_lib.parse_args(trainer.TrainConfig(), [
        shape.base, f"--data_dir={data}", f"--out_dir={run_dir}", f"--seed={seed}",
        f"--max_steps={shape.max_steps}", "--bpb_genres=", "--sample_tokens=0",
        *common.flag_list(cfg.train_args)])
    body = shape.inhouse if arm.source == "inhouse" else shape.model
    meta = data / "meta.json"  # absent on a dry run, which prepares nothing
    vocab = json.loads(meta.read_text())["vocab_size"] if meta.is_file() else VOCABS.get(arm.vocab) or 2000
    train_cfg = dataclasses.replace(train_cfg, model=LlamaConfig(vocab_size=vocab, **body),
                                    init_from=str(init or ""), resume=state == common.STOPPED)
    runner.call("train", f"{shape_name}/{folder.name}: training{' (resuming)' if train_cfg.resume else ''}",
                train.pretrain, train_cfg)
    if cfg.dry_run:
        return None
    factor = window_tokens_per_byte(data, train_cfg.batch_size, train_cfg.seq_len, train_cfg.eval_steps)
    curve = [(r["step"], r["val_loss"] * factor / math.log(2))
             for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]
    result = {"shape": shape_name, "arm": arm.name, "seed": seed, "steps": train_cfg.max_steps,
              "tokens": train_cfg.max_steps * train_cfg.batch_size * train_cfg.seq_len,
              "vocab_size": vocab, "curve_bpb": curve,  # from the first evaluation; step 0 is initial_bpb
              "initial_bpb": json.loads((init / "bpb.json").read_text())["validation"] if init else None,
              "final_val_bpb": bits_per_byte(run_dir, cfg.data_root)}
    atomic_write_json(folder / "result.json", result)
    return result


def reference(cfg: StudyConfig) -> dict:
    """SmolLM2-135M itself on the same held-out text, with its own tokenizer (once)."""
    from tinyhelen.pretrained import resolve
    path = Path(cfg.out_dir) / "smollm2_reference.json"
    if not path.is_file():
        print(f"=== {SOURCE} itself on the held-out leaner validation text")
        folder = Path(resolve(SOURCE))
        atomic_write_json(path, {"validation": bits_per_byte(folder, cfg.data_root)})
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- the report

def steps_to(curve, target: float) -> int | None:
    return next((step for step, bpb in curve if bpb <= target), None)


def train_seconds(out_dir: Path) -> dict[tuple[str, str, int], float]:
    """{(shape, arm, seed): wall seconds of its training, summed over resumptions} from times.jsonl."""
    import re
    seconds: dict[tuple[str, str, int], float] = {}
    path = out_dir / "times.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        m = re.fullmatch(r"(\w+)/([\w-]+)_seed(\d+): training.*", row["command"])
        if row["step"] == "train" and row["rc"] == 0 and m:
            key = (m[1], m[2], int(m[3]))
            seconds[key] = seconds.get(key, 0.0) + row["seconds"]
    return seconds


def scratch_for(arm: str) -> str:
    """The scratch arm an arm's steps are counted against: the one on the same tokens (gpt-2K, or
    SmolLM2's 2K cut); the larger cuts have none, and are counted against SmolLM2's 2K scratch."""
    return "scratch-gpt2k" if next(a for a in ARMS if a.name == arm).vocab == "gpt2k" else "scratch-smollm2-2k"


def summarise(results: list[dict], seconds: dict | None = None) -> dict[str, list[dict]]:
    seconds = seconds or {}
    tables = {}
    for shape in [s for s in SHAPES if any(r["shape"] == s for r in results)]:
        rs = [r for r in results if r["shape"] == shape]
        ends = {a: common.mean_sd([r["curve_bpb"][-1][1] for r in rs if r["arm"] == a])[0]
                for a in ("scratch-gpt2k", "scratch-smollm2-2k") if any(r["arm"] == a for r in rs)}
        rows = []
        for arm in [a for a in ARM_NAMES if any(r["arm"] == a for r in rs)]:
            ar = [r for r in rs if r["arm"] == arm]
            initial = [r["initial_bpb"] for r in ar if r["initial_bpb"] is not None]
            if len(set(initial)) == 1:  # one cut shared by every seed (l2, taylor): one number, no spread
                initial = initial[:1]
            wall = [seconds[shape, arm, r["seed"]] for r in ar if (shape, arm, r["seed"]) in seconds]
            target = ends.get(scratch_for(arm))
            hit = [s for s in (steps_to(r["curve_bpb"], target) for r in ar) if s is not None] if target else []
            rows.append({"arm": arm, "vocab_size": ar[0]["vocab_size"], "seeds": len(ar),
                         "tokens": ar[0]["tokens"],
                         "initial": common.mean_sd(initial) if initial else None,
                         "final_val": common.mean_sd([r["final_val_bpb"] for r in ar]),
                         "steps_to_target": (sum(hit) / len(hit)) if hit else None,
                         "reached": f"{len(hit)}/{len(ar)}", "target": target,
                         "same_tokens": ar[0]["vocab_size"] == 2000,
                         "train_seconds": sum(wall) / len(wall) if wall else None})
        tables[shape] = rows
    return tables


def report_text(tables: dict[str, list[dict]], ref: dict | None) -> str:
    def cell(ms):
        return "-" if ms is None else common.format_mean_sd(*ms, ".3f")

    def target(r):
        if r["target"] is None:
            return "-"
        return f"{r['target']:.3f}" + ("" if r["same_tokens"] else " *")
    parts = []
    for shape, rows in tables.items():
        header = ["start", "vocab", "seeds", "val bpb before training", "val bpb at end",
                  "scratch's final curve value", "steps to it", "reached", "training s (mean)"]
        body = [[r["arm"], f"{r['vocab_size']:,}", r["seeds"], cell(r["initial"]), cell(r["final_val"]),
                 target(r), "-" if r["steps_to_target"] is None else f"{r['steps_to_target']:.0f}", r["reached"],
                 "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"] for r in rows]
        if ref:
            body.append([f"{SOURCE} itself (reference)", "49,152", "-", "-", f"{ref['validation']:.3f}",
                         "-", "-", "-", "-"])
        parts.append(f"### {shape}: {rows[0]['tokens']:,} training tokens per run\n\n"
                     + common.markdown_table(header, body))
    notes = ("Steps are counted on each run's validation curve (bits per byte of train.py's windows) to "
             "the final value of the scratch arm on the same tokens; * marks the vocabulary cuts, which "
             "have no scratch arm of their own and are counted against SmolLM2's 2K scratch, whose "
             "windows hold other text: read those as approximate.")
    return "\n\n".join(parts) + "\n\n" + notes


def plot(results: list[dict], tables: dict, ref: dict | None, path: Path) -> None:
    shapes = list(tables)
    with common.figure(path, 2, len(shapes), figsize=(6.5 * len(shapes), 8), dpi=100, squeeze=False) as (fig, axes):
        for col, shape in enumerate(shapes):
            ax = axes[0][col]
            colours = {}
            for r in [r for r in results if r["shape"] == shape]:
                start = [] if r["initial_bpb"] is None else [(0, r["initial_bpb"])]
                steps, bpb = zip(*start, *r["curve_bpb"])
                label = None if r["arm"] in colours else r["arm"]  # one colour per arm, the same in every panel
                ax.plot(steps, bpb, color=colours.setdefault(r["arm"], f"C{ARM_NAMES.index(r['arm']) % 10}"), alpha=0.8,
                        label=label, linestyle="--" if r["arm"].startswith("scratch") else "-")
            ax.set_ylim(top=min(ax.get_ylim()[1], 4.5))
            ax.set_title(f"{shape}: validation bits per byte while training")
            ax.set_xlabel("step (inherited arms at step 0: held-out, before training)")
            ax.set_ylabel("bits per byte")
            ax.legend(fontsize=7)
            ax = axes[1][col]
            rows = tables[shape]
            names = [r["arm"] for r in rows]
            means = [r["final_val"][0] for r in rows]
            sds = [r["final_val"][1] or 0 for r in rows]
            ax.barh(names, means, xerr=sds, color=[colours.get(n, "grey") for n in names])
            if ref:
                ax.axvline(ref["validation"], color="black", linestyle=":", label=f"{SOURCE} itself")
                ax.legend(fontsize=7)
            ax.invert_yaxis()
            ax.set_xlim(left=min(means + [ref["validation"] if ref else 9]) * 0.9)
            ax.set_xlabel("held-out validation bits per byte at the end (mean ± sd over seeds)")


def study(cfg: StudyConfig) -> dict:
    out_dir = Path(cfg.out_dir)
    runner = common.Runner(out_dir, cfg.dry_run)
    if not cfg.report_only:
        for seed in cfg.seeds:
            for shape in cfg.shapes:
                for arm in ARMS:
                    if arm.name in cfg.arms and arm.name in (SHAPES[shape].arms or ARM_NAMES) \
                            and not (arm.source == "inhouse" and SHAPES[shape].inhouse is None):
                        run_one(cfg, runner, shape, arm, seed)
        if cfg.dry_run:
            return {}
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/*/result.json"))]
    if not results:
        raise config_lib.ConfigError(f"no finished runs in {out_dir} to report")
    ref = reference(cfg)
    tables = summarise(results, train_seconds(out_dir))
    text = report_text(tables, ref)
    atomic_write_text(out_dir / "summary.md", text + "\n")
    atomic_write_json(out_dir / "summary.json", {"tables": tables, "reference": ref})
    plot(results, tables, ref, out_dir / "curves.png")
    print(text)
    return tables


def main(cfg: StudyConfig) -> None:
    import inherit
    from tinyhelen.checkpoint import CheckpointError
    config_lib.exits_2_on(inherit.InheritError, CheckpointError, FileNotFoundError)(study)(cfg)


if __name__ == "__main__":
    config_lib.run_cli(main, StudyConfig())
