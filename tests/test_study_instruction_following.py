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
        "data/prepare.py --corpus=leaner", "data/prepare.py --corpus=ori"] + ["train.py configs/instruct_pretrain.py"] * 4 + [
        "instruct.py convert"] + ["instruct.py train"] * 4 + ["instruct.py generate"] * 4 + [
        "instruct.py validate"] + ["instruct.py score"] * 4
    assert f"--tokenizer={tmp_path}/data/leaner/tokenizer.json" in cmds[1]  # one tokenizer for both corpora
    pre, tune, gen, score = cmds[2:6], cmds[7:11], cmds[11:15], cmds[16:20]
    # arms differ only in their corpus and seed: leaner s1, leaner s2, ori s1, ori s2
    assert pre[0].replace("leaner", "X") == pre[2].replace("ori", "X")
    assert "--seed=1" in pre[0] and "--seed=2" in pre[1] and f"--out_dir={tmp_path}/leaner_s2_llama" in pre[1]
    assert tune[0].replace("leaner", "X") == tune[2].replace("ori", "X")
    assert gen[1].replace("leaner_s2", "X") == gen[3].replace("ori_s2", "X")
    assert f"--init_from={tmp_path}/ori_s2_llama" in tune[3] and f"--out={tmp_path}/answers/ori_s2.jsonl" in gen[3]
    assert "--sources=generated:studies/data/leaner_open_answers.jsonl.zst" in cmds[6]
    assert "--generated=studies/data/leaner_open_answers.jsonl.zst" in cmds[15] and "--pairs=40" in cmds[15]
    assert f"--rows={tmp_path}/answers/leaner_s1.jsonl --out={tmp_path}/scores/leaner_s1.jsonl" in score[0]
    # validity is measured in the precision the scores are made in
    assert all("--dtype=auto" in c for c in [cmds[15]] + score)
    assert "--questions=../shared/data/tinyhelen/leaner/eval/all.jsonl" in gen[0]
    assert "=== report of 4 models" in out and "instruct.py judge" not in out  # the judge only when asked
    judged = commands(run_script("studies/instruction_following.py", f"--out_dir={tmp_path}", "--dry_run",
                                 "--judge=true", "--seeds=1").stdout)
    assert [" ".join(c.split()[:2]) for c in judged[-2:]] == ["instruct.py judge", "instruct.py report"]
    assert f"--answers={tmp_path}/answers/leaner_s1.jsonl,{tmp_path}/answers/ori_s1.jsonl" in judged[-2]
    assert not (tmp_path / "times.jsonl").exists()


def test_an_unfinished_run_is_refused(tmp_path):
    for step, missing, needs in (("tune", "leaner_s1_llama", "pretrain"), ("generate", "leaner_s1_instruct", "tune")):
        bad = run_script("studies/instruction_following.py", f"--out_dir={tmp_path}", f"--step={step}", check=False)
        assert bad.returncode != 0
        assert f"{tmp_path}/{missing} has not finished" in bad.stderr and f"--step={needs} first" in bad.stderr
    bad = run_script("studies/instruction_following.py", f"--out_dir={tmp_path}", "--step=score", check=False)
    assert bad.returncode != 0 and "--step=generate first" in bad.stderr
    bad = run_script("studies/instruction_following.py", "--step=train", check=False)
    assert bad.returncode == 2 and "prepare, pretrain, convert, tune, generate, validate, score, report, judge" in bad.stderr


def test_report_numbers_by_hand(tmp_path, shared_data):
    """Synthetic scores for two seeds per arm on six real Leaner-Eval questions: the arm's value is
    the mean of its seeds' means ± their deviation, the interval is over the seed-averaged questions,
    the difference is paired, and a measure validity did not trust is flagged."""
    import statistics

    from scipy import stats

    from studies.instruction_report import write_report
    from tinyhelen.answer_scores import MEASURES
    questions = [json.loads(line) for line in open(shared_data / "leaner/eval/split-7-8.jsonl")][:6]
    files, value = {}, {}
    for corpus, base in (("leaner", 1.0), ("ori", 0.0)):
        for seed in (1, 2):
            a, s = tmp_path / f"{corpus}{seed}.a.jsonl", tmp_path / f"{corpus}{seed}.s.jsonl"
            with open(a, "w") as fa, open(s, "w") as fs:
                for i, q in enumerate(questions):
                    v = base + 0.1 * i + 0.01 * seed
                    value[(corpus, seed, i)] = v
                    fa.write(json.dumps({"hash": q["hash"], "question": q["question"], "answer": f"answer {i} of {corpus}"}) + "\n")
                    fs.write(json.dumps({"line": i + 1, "hash": q["hash"], **{m: v for m in MEASURES}}) + "\n")
            files[(corpus, seed)] = (a, s)
    validity = {"table": {"math_swap": {"relevance": {"accuracy": 0.95, "trusted": True}},
                          "shuffled": {"fluency": {"accuracy": 0.5, "trusted": False}},
                          "cut": {"fluency": {"accuracy": 1.0, "trusted": True}}}}
    (tmp_path / "validity.json").write_text(json.dumps(validity))
    result = write_report(files, tmp_path / "validity.json", str(shared_data), tmp_path / "report")
    table = result["measures"]["relevance"]["split-7-8"]
    seed_means = [statistics.fmean(value[("leaner", s, i)] for i in range(6)) for s in (1, 2)]
    assert table["leaner"]["mean"] == pytest.approx(statistics.fmean(seed_means))
    assert table["leaner"]["sd"] == pytest.approx(statistics.stdev(seed_means))
    per_q = [statistics.fmean(value[("leaner", s, i)] for s in (1, 2)) for i in range(6)]
    assert table["leaner"]["ci"] == pytest.approx(stats.t.ppf(0.975, 5) * statistics.stdev(per_q) / 6 ** 0.5)
    assert table["leaner - ori"]["mean"] == pytest.approx(1.0) and table["leaner - ori"]["n"] == 6
    assert result["measures"]["relevance"]["all"]["leaner"]["n"] == 6
    assert result["trust"]["relevance"][0] and not result["trust"]["fluency"][0]
    assert "shuffled 0.50" in result["trust"]["fluency"][1] and result["trust"]["grammar"] == (False, "not validated")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## fluency (not to be trusted: below 90% on shuffled 0.50)" in md and "## relevance\n" in md
    assert (tmp_path / "report" / "scores.png").stat().st_size > 0


TINY = ["--genres=wiki,conversation",
        "--pretrain_flags=--model.n_layer=1 --model.n_embd=32 --model.n_head=2 --model.n_kv_head=2 "
        "--model.ffn_hidden=64 --max_steps=6 --eval_every=6 --eval_steps=1 --ckpt_every=6 --batch_size=4 "
        "--seq_len=64 --warmup_steps=1 --compile=false --dtype=fp32",
        "--tune_flags=--max_steps=4 --batch_size=4 --eval_every=4 --ckpt_every=4 --dtype=fp32 --threads=1",
        "--max_new_tokens=4", "--seeds=1", "--sources=math,code"]


@pytest.mark.slow
def test_the_study_to_the_answers_on_tiny_settings_and_its_resume(tmp_path):
    for step in ("prepare", "pretrain", "convert", "tune", "generate"):
        run_script("studies/instruction_following.py", f"--out_dir={tmp_path}", f"--step={step}", *TINY, timeout=900)
    answers = {}
    for arm in ("leaner", "ori"):
        rows = [json.loads(line) for line in (tmp_path / "answers" / f"{arm}_s1.jsonl").open()]
        assert len(rows) == 1594 and {r["model"] for r in rows} == {f"{arm}_s1"}
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
