"""studies/instruction_following.py, the instruction-following experiment as one command: the commands of each step
(both corpora on one tokenizer, config and budget; both tuned on one instruction file with the same
flags; both answering the same questions), the refusal to go on from an unfinished run, and every
step up to the answers for real on tiny settings, then again with nothing redone."""

from __future__ import annotations

import json

import pytest

from conftest import run_script


def commands(out: str) -> list[str]:
    return [line[len("$ python "):] for line in out.splitlines() if line.startswith("$ ")]


def test_study_commands(tmp_path):
    out = run_script("studies/instruction_following.py", f"--out_dir={tmp_path}", "--dry_run").stdout
    cmds = commands(out)
    assert [" ".join(c.split()[:2]) for c in cmds] == [
        "data/prepare.py --corpus=leaner", "data/prepare.py --corpus=ori", "train.py configs/instruct_pretrain.py",
        "train.py configs/instruct_pretrain.py", "instruct.py convert", "instruct.py train", "instruct.py train",
        "instruct.py generate", "instruct.py generate", "instruct.py judge", "instruct.py report",
        "instruct.py report"]
    assert f"--tokenizer={tmp_path}/data/leaner/tokenizer.json" in cmds[1]  # one tokenizer for both corpora
    # the two arms differ only in their corpus
    assert cmds[2].replace("leaner", "X") == cmds[3].replace("ori", "X")
    assert cmds[5].replace("leaner", "X") == cmds[6].replace("ori", "X")
    assert cmds[7].replace("leaner_instruct", "X") == cmds[8].replace("ori_instruct", "X")
    assert f"--data={tmp_path}/instructions.jsonl" in cmds[5] and "--sources=math,code" in cmds[4]
    assert "--questions=../shared/data/tinyhelen/leaner/eval/all.jsonl" in cmds[7]
    assert f"--answers={tmp_path}/answers/leaner_instruct.jsonl,{tmp_path}/answers/ori_instruct.jsonl" in cmds[9]
    assert "--limit=300" in cmds[9]
    assert f"--reference={tmp_path}/leaner_llama --out_dir={tmp_path}/report_leaner_reference" in cmds[10]
    assert f"--reference={tmp_path}/ori_llama --out_dir={tmp_path}/report_ori_reference" in cmds[11]
    assert not (tmp_path / "times.jsonl").exists()


def test_an_unfinished_run_is_refused(tmp_path):
    for step, missing, needs in (("tune", "leaner_llama", "pretrain"), ("generate", "leaner_instruct", "tune")):
        bad = run_script("studies/instruction_following.py", f"--out_dir={tmp_path}", f"--step={step}", check=False)
        assert bad.returncode != 0
        assert f"{tmp_path}/{missing} has not finished" in bad.stderr and f"--step={needs} first" in bad.stderr
    bad = run_script("studies/instruction_following.py", "--step=train", check=False)
    assert bad.returncode == 2 and "prepare, pretrain, convert, tune, generate, judge, report" in bad.stderr


TINY = ["--genres=wiki,conversation",
        "--pretrain_flags=--model.n_layer=1 --model.n_embd=32 --model.n_head=2 --model.n_kv_head=2 "
        "--model.ffn_hidden=64 --max_steps=6 --eval_every=6 --eval_steps=1 --ckpt_every=6 --batch_size=4 "
        "--seq_len=64 --warmup_steps=1 --compile=false --dtype=fp32",
        "--tune_flags=--max_steps=4 --batch_size=4 --eval_every=4 --ckpt_every=4 --dtype=fp32 --threads=1",
        "--max_new_tokens=4"]


@pytest.mark.slow
def test_the_study_to_the_answers_on_tiny_settings_and_its_resume(tmp_path):
    for step in ("prepare", "pretrain", "convert", "tune", "generate"):
        run_script("studies/instruction_following.py", f"--out_dir={tmp_path}", f"--step={step}", *TINY, timeout=900)
    answers = {}
    for arm in ("leaner", "ori"):
        rows = [json.loads(line) for line in (tmp_path / "answers" / f"{arm}_instruct.jsonl").open()]
        assert len(rows) == 1594 and {r["model"] for r in rows} == {f"{arm}_instruct"}
        answers[arm] = {r["hash"] for r in rows}
    assert answers["leaner"] == answers["ori"]  # the same questions
    times = (tmp_path / "times.jsonl").read_text().splitlines()
    again = run_script("studies/instruction_following.py", f"--out_dir={tmp_path}", "--step=prepare", *TINY).stdout
    for step in ("pretrain", "convert", "tune", "generate"):
        again += run_script("studies/instruction_following.py", f"--out_dir={tmp_path}", f"--step={step}", *TINY).stdout
    assert again.count("prepared earlier") == 2 and again.count("trained earlier") == 2
    assert "converted earlier" in again and again.count("tuned earlier") == 2
    assert again.count("1594 answers already there, 0 to go") == 2
    # only the two generate commands ran again, and they answered nothing
    assert len((tmp_path / "times.jsonl").read_text().splitlines()) == len(times) + 2
