"""Batched generation benchmark: our generate() with left-padded prompts of different lengths
against transformers' generate() on the same model exported (interop.save_hf), same prompts, batch
and greedy decoding, in one process, after checking that both produce identical tokens.

    python bench/bench_generate.py [--batch=8] [--new=64] [--rounds=2] [--model=demo|paper]
                                   [--mixer=llama|mamba1|mamba2] [--equal]

Prompts are Leaner-Eval questions in the release's instruction format, tokenized by the prepared
leaner tokenizer (out/data/leaner/tokenizer.json) when it is there, else random token ids of the
same lengths. The weights are random but drawn with a large init_std (0.1), so that greedy choices
are decided by clear margins rather than by float noise between the two implementations (a trained
checkpoint would do the same; none is assumed to exist). Both sides run in fp32 with torch's
threads and generate exactly --new tokens (no early stop). Each round times ours, then theirs; the
ratio reported is the median over rounds of the same-round ratio, by wall clock and by this
process's CPU time (which on a shared machine ignores time spent descheduled).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from data.corpus import task_prompt  # noqa: E402
from model_common import pad_left  # noqa: E402

EVAL = Path("/work/shared/data/tinyhelen/leaner/eval/all.jsonl")
TOKENIZER = REPO_ROOT / "out" / "data" / "leaner" / "tokenizer.json"


def build_model(kind: str, mixer: str):
    torch.manual_seed(0)
    if mixer == "llama":
        from model_llama import Llama, LlamaConfig
        size = {"demo": dict(n_layer=4, n_embd=256, n_head=8, n_kv_head=4, ffn_hidden=688),
                "paper": dict(n_layer=8, n_embd=336, n_head=8, n_kv_head=8, ffn_hidden=1344)}[kind]
        return Llama(LlamaConfig(vocab_size=2000, max_seq_len=512, init_std=0.1, **size)).eval()
    from model_mamba import Mamba, MambaConfig
    model = Mamba(MambaConfig(mixer=mixer, vocab_size=2000, n_layer=4, n_embd=256, d_state=16, headdim=32,
                              mlp_hidden=0)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(5)  # sharper logits, as init_std does for the Llama
    return model


def prompts(batch: int) -> list[list[int]]:
    if EVAL.is_file():
        questions = [json.loads(line)["question"] for line in EVAL.read_text().splitlines()[:batch]]
    else:
        questions = [f"Question number {i} about something?" * (1 + i % 3) for i in range(batch)]
    if TOKENIZER.is_file():
        from data.tokenizer import load_tokenizer
        tok = load_tokenizer(str(TOKENIZER))
        return [[tok.eot_id] + tok.encode(task_prompt(q)) for q in questions]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 1999, (len(q) // 4 + 8,), generator=g).tolist() for q in questions]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="demo", choices=("demo", "paper"))
    ap.add_argument("--mixer", default="llama", choices=("llama", "mamba1", "mamba2"))
    ap.add_argument("--equal", action="store_true", help="cut every prompt to the shortest: no padding")
    args = ap.parse_args()

    import transformers
    from tinyhelen.interop import save_hf
    model = build_model(args.model, args.mixer)
    with tempfile.TemporaryDirectory() as folder:
        save_hf(model, folder)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    batch = prompts(args.batch)
    if args.equal:
        batch = [p[-min(map(len, batch)):] for p in batch]
    idx, left_pad = pad_left(batch, pad_id=0)
    mask = (torch.arange(idx.shape[1]) >= left_pad[:, None]).long()
    lengths = [len(p) for p in batch]

    def ours():
        return model.generate(idx, args.new, temperature=0, left_pad=left_pad)[:, idx.shape[1]:]

    def hf():
        with torch.inference_mode():
            out = theirs.generate(input_ids=idx, attention_mask=mask, max_new_tokens=args.new,
                                  min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)
        return out[:, idx.shape[1]:]

    a, b = ours(), hf()  # also the warm-up of both
    same = torch.equal(a, b)
    rows_same = [bool(torch.equal(x, y)) for x, y in zip(a, b)]
    print(f"{args.mixer} {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters | batch "
          f"{args.batch}, prompt lengths {min(lengths)}-{max(lengths)}, {args.new} new tokens | threads "
          f"{torch.get_num_threads()} | identical outputs: {same} ({sum(rows_same)}/{len(rows_same)} rows)")
    wall, cpu = [], []
    for r in range(args.rounds):
        times = {}
        for name, fn in (("ours", ours), ("transformers", hf)):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name] = (time.perf_counter() - w0, time.process_time() - c0)
        tok = args.batch * args.new
        print(f"round {r + 1}: ours {tok / times['ours'][0]:,.0f} tok/s, transformers "
              f"{tok / times['transformers'][0]:,.0f} tok/s (wall); ratio "
              f"{times['transformers'][0] / times['ours'][0]:.2f}x "
              f"wall, {times['transformers'][1] / times['ours'][1]:.2f}x CPU time")
        wall.append(times["transformers"][0] / times["ours"][0])
        cpu.append(times["transformers"][1] / times["ours"][1])
    print(f"median ratio (transformers time / ours): {statistics.median(wall):.2f}x wall, "
          f"{statistics.median(cpu):.2f}x CPU time, over {args.rounds} rounds")
    if not same:
        raise SystemExit("outputs differ: the ratio compares different work")


if __name__ == "__main__":
    main()
