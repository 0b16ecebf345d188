"""Issue 24's experiment driver (studies/pretrained_inheritance.py) on a tiny shape: every arm prepares its
own tokens and trains through train.py, inherited arms start from inherit.py's cut of the real SmolLM2,
curves are in bits per byte of the windows train.py evaluates, and a restarted study trains nothing."""

from __future__ import annotations

import json
import math

import pytest

from studies import pretrained_inheritance as study_mod


@pytest.fixture(scope="module")
def finished(smollm2, shared_data, tmp_path_factory):
    import evaluate
    cache, _ = smollm2
    root = tmp_path_factory.mktemp("pretrained_study")
    (root / "base.py").write_text(
        "seq_len = 32\nbatch_size = 4\nmax_steps = 4\neval_every = 2\neval_steps = 1\nwarmup_steps = 1\n"
        "log_every = 2\nckpt_every = 2\ncompile = False\ndtype = 'fp32'\nthreads = 1\npeak_flops = 1e10\n")
    tiny = study_mod.Shape(str(root / "base.py"), 4,
                           dict(n_layer=2, n_embd=64, n_head=1, n_kv_head=1, ffn_hidden=64, max_seq_len=32,
                                rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=False), None)
    real_read_texts = evaluate.read_texts
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYHELEN_PRETRAINED_DIR", str(cache))
        mp.setattr(study_mod, "SHAPES", {"tiny": tiny})
        # SmolLM2's reference row and the cuts' held-out scores on three documents a genre, not all
        mp.setattr(evaluate, "read_texts", lambda *a: {g: t[:3] for g, t in real_read_texts(*a).items()})
        cfg = study_mod.StudyConfig(shapes=("tiny",), seeds=(1, 2), data_out=str(root / "data"),
                                    out_dir=str(root / "out"), arms=("scratch-gpt2k", "scratch-smollm2-2k",
                                                                     "smollm2-random-2k", "smollm2-l2-2k"))
        tables = study_mod.study(cfg)
        yield cfg, tables, mp


def test_every_arm_trains_and_reports_bits_per_byte(finished):
    cfg, tables, _ = finished
    out = study_mod.Path(cfg.out_dir) / "tiny"
    rows = tables["tiny"]
    assert [r["arm"] for r in rows] == list(cfg.arms) and all(r["seeds"] == 2 for r in rows)
    assert {r["arm"]: r["vocab_size"] for r in rows} == {
        "scratch-gpt2k": 2000, "scratch-smollm2-2k": 2000, "smollm2-random-2k": 2000, "smollm2-l2-2k": 2000}
    for arm in cfg.arms:
        for seed in (1, 2):
            result = json.loads((out / f"{arm}_seed{seed}" / "result.json").read_text())
            assert [s for s, _ in result["curve_bpb"]] == [2, 4]
            assert (result["initial_bpb"] is None) == arm.startswith("scratch")
    # l2 chooses the same units every seed: one cut, shared; random draws with the seed
    assert (out / "cuts" / "smollm2-l2-2k" / "ckpt.pt").is_file()
    chans = [json.loads((out / f"smollm2-random-2k_seed{s}" / "init" / "inherit.json").read_text())["channels"]
             for s in (1, 2)]
    assert chans[0] != chans[1]
    summary = (study_mod.Path(cfg.out_dir) / "summary.md").read_text()
    assert "smollm2-135m itself (reference)" in summary and "| smollm2-l2-2k |" in summary
    assert (study_mod.Path(cfg.out_dir) / "curves.png").stat().st_size > 5000
    # the reference is the pretrained model itself: far better than any 4-step tiny model
    ref = json.loads((study_mod.Path(cfg.out_dir) / "smollm2_reference.json").read_text())
    assert ref["validation"] < min(r["final_val"][0] for r in rows)


def test_bits_per_byte_equal_evaluate_py_on_the_same_text(finished, tmp_path):
    """The held-out number of a run and of a cut, against evaluate.py's CLI given the same text as JSONL."""
    from conftest import run_script
    cfg, _, _ = finished
    texts = study_mod.held_out(cfg.data_root)  # (three documents a genre under the fixture's patch)
    assert all(sum(len(t) for t in docs[:-1]) < study_mod.HELD_OUT_CHARS for docs in texts.values())
    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps({"text": t, "genre": g}) + "\n" for g, docs in texts.items() for t in docs))
    out = study_mod.Path(cfg.out_dir) / "tiny"
    for folder, mine in ((out / "smollm2-l2-2k_seed2" / "run",
                          json.loads((out / "smollm2-l2-2k_seed2" / "result.json").read_text())["final_val_bpb"]),
                         (out / "cuts" / "smollm2-l2-2k",
                          json.loads((out / "cuts" / "smollm2-l2-2k" / "bpb.json").read_text())["validation"])):
        theirs = json.loads(run_script("evaluate.py", f"--out_dir={folder}", f"--data={data}",
                                       "--device=cpu").stdout.strip().splitlines()[-1])
        assert mine == pytest.approx(theirs["bits_per_byte"], rel=1e-6)


def test_curve_is_the_validation_loss_in_bits_per_byte_of_its_windows(finished):
    """The factor from loss per token to bits per byte, against the bytes of the windows' text decoded
    piece by piece between end-of-text tokens (each end-of-text one byte, as evaluate.py counts)."""
    from data.tokens import TokenBatches, open_tokens, read_meta
    from tinyhelen.runs import load_tokenizer_from
    from train import VALIDATION_SEED
    cfg, _, _ = finished
    data = study_mod.Path(cfg.data_out) / "leaner_smollm2_2k"
    tok = load_tokenizer_from(data, read_meta(data))
    y = TokenBatches(open_tokens(data, "validation"), 4, 32, seed=VALIDATION_SEED).next_batch()[1].flatten().tolist()
    n_bytes, piece = 0, []
    for i in y + [tok.eot_id]:
        if i == tok.eot_id:
            n_bytes += len(tok.decode(piece).encode("utf-8")) + 1
            piece = []
        else:
            piece.append(i)
    n_bytes -= 1  # the eot appended to close the last piece
    factor = study_mod.window_tokens_per_byte(data, 4, 32, 1)
    assert factor == pytest.approx(len(y) / n_bytes, rel=0.01)
    run = study_mod.Path(cfg.out_dir) / "tiny" / "scratch-smollm2-2k_seed1"
    metrics = [json.loads(line) for line in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["val_loss"] for m in metrics if "val_loss" in m]
    result = json.loads((run / "result.json").read_text())
    assert [b for _, b in result["curve_bpb"]] == pytest.approx([v * factor / math.log(2) for v in losses])


def test_a_restarted_study_trains_and_cuts_nothing(finished):
    import inherit
    import train
    cfg, tables, mp = finished

    def refuse(*args, **kwargs):
        raise AssertionError("redone")
    mp.setattr(train, "pretrain", refuse)
    mp.setattr(inherit, "inherit", refuse)
    again = study_mod.study(cfg)
    assert json.dumps(again, sort_keys=True) == json.dumps(tables, sort_keys=True)
