"""instruct.py, tinyhelen/instruct_data.py, tinyhelen/judge.py and tinyhelen/judge_report.py: loss masks
and batches, held-out data kept out, answers that resume, and a judge whose parsing, retries, failure
records and resume are shown against a scripted loopback server (and, slow, against the real embedded
llama.cpp server). Batched generation itself is tested in tests/test_batched_generate.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinyhelen import judge, judge_report
from data.corpus import DataError
from data.tasks import Instruction, read_eval
from tinyhelen.instruct_data import InstructionBatches, check_no_leak, convert, encode, forbidden_texts, make_batch, normalise
from tests.conftest import REPO, run_script


class CharTokenizer:
    """One token per byte, end-of-text 256: lengths an oracle can count by hand."""
    eot_id = 256

    def encode(self, text):
        return list(text.encode())

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")


def _instr(instruction, output, input=""):
    return Instruction(instruction, input, output, "mem", 1)


EXAMPLES = [_instr("Say hi.", "Hi!"), _instr("Add.", "4", "2 + 2"), _instr("Name a colour, any colour.", "Blue.")]


# ------------------------------------------------------------------------------------------- masks

def test_loss_mask_scores_exactly_the_response_and_its_end():
    tok = CharTokenizer()
    enc, dropped = encode(EXAMPLES, tok, max_len=64)
    x, y = make_batch(enc, [0, 1, 2], "response", pad_id=tok.eot_id)
    assert dropped == 0 and x.shape[1] % 16 == 0
    for b, ex in enumerate(EXAMPLES):
        prompt = [tok.eot_id] + tok.encode(f"### TASK INPUT:\n{ex.instruction}" + (f"\n{ex.input}" if ex.input else "")
                                           + "\n\n### RESPONSE:\n")
        want = tok.encode(ex.output) + [tok.eot_id]   # the response, then its end-of-text
        scored = y[b][y[b] != -1].tolist()
        assert scored == want
        first = (y[b] != -1).nonzero()[0].item()
        assert first == len(prompt) - 1 and x[b, :len(prompt)].tolist() == prompt
    x_all, y_all = make_batch(enc, [0, 1, 2], "all", pad_id=tok.eot_id)
    for b, ex in enumerate(EXAMPLES):
        n = len(enc.tokens[b]) - 1
        assert y_all[b, :n].tolist() == enc.tokens[b][1:].tolist() and (y_all[b, n:] == -1).all()


def test_nothing_leaks_across_examples_of_a_batch():
    """Row 0's logits and loss are the same whatever shares its batch, and equal row 0 alone."""
    from model_llama import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=257, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, ffn_hidden=64,
                              max_seq_len=128)).eval()
    tok = CharTokenizer()
    enc, _ = encode(EXAMPLES + [_instr("Something much longer than the others, to pad the rest.", "Yes.")], tok, 120)
    n0 = len(enc.tokens[0]) - 1

    def row0(rows):
        x, y = make_batch(enc, rows, "response", tok.eot_id)
        logits = model(x)[0][0, :n0]
        return logits, F.cross_entropy(logits[y[0, :n0] != -1], y[0, :n0][y[0, :n0] != -1])
    alone_logits, alone_loss = row0([0])
    for rows in ([0, 1], [0, 3], [0, 2, 3]):
        logits, loss = row0(rows)
        torch.testing.assert_close(logits, alone_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss, alone_loss, atol=1e-5, rtol=1e-5)


def test_batches_resume_exactly():
    enc, _ = encode(EXAMPLES * 5, CharTokenizer(), 64)
    a = InstructionBatches(enc, 4, "response", 256, seed=3)
    for _ in range(5):
        a.next_batch()
    b = InstructionBatches(enc, 4, "response", 256, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(6):  # across an epoch boundary (4 batches an epoch)
        for ta, tb in zip(a.next_batch(), b.next_batch()):
            assert torch.equal(ta, tb)


# ------------------------------------------------------------------------------------------- held out

def test_converted_sets_share_no_hash_or_text_with_eval_or_test_data(shared_data):
    rows, dropped = convert(shared_data, ["math", "code", "glue"])
    assert {r["source"].split(":")[0] for r in rows} == {"math", "code", "glue"}
    assert dropped > 0  # the templated math repeats across splits: some rows must have gone
    # the oracle: held-out texts and hashes read again with json, not through forbidden_texts
    held_hashes, held_texts = set(), set()
    for path in sorted((shared_data / "leaner" / "eval").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            held_hashes.add(row["hash"])
            held_texts.add(normalise(row["question"]))
    for genre in ("math", "code"):
        for path in (shared_data / "leaner" / "10M" / "test").glob(f"{genre}*.jsonl"):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                held_hashes.add(row["hash"])
                held_texts.update(normalise(row.get(f) or "") for f in ("problem", "prompt", "response"))
    for path in (shared_data / "leaner" / "glue").glob("*.jsonl"):
        if "_train" not in path.name:
            for line in path.read_text().splitlines():
                row = json.loads(line)
                held_texts.update(normalise(v) for k, v in row.items() if isinstance(v, str))
    held_texts.discard("")
    for r in rows:
        assert r["hash"] not in held_hashes
        for text in (r["instruction"], r["input"], r["output"], "\n".join(t for t in (r["instruction"], r["input"]) if t)):
            assert normalise(text) not in held_texts, r


def test_glue_per_task_is_a_seeded_sample_of_each_task(shared_data):
    from tinyhelen.instruct_data import convert_glue
    every = convert_glue(shared_data)
    capped = convert_glue(shared_data, per_task=50)
    tasks = sorted({r["source"] for r in every})
    assert len(tasks) >= 5
    for task in tasks:
        rows = [r for r in every if r["source"] == task]
        kept = [r for r in capped if r["source"] == task]
        assert len(kept) == min(50, len(rows))
        positions = [rows.index(r) for r in kept]  # real rows of that task, in file order
        assert positions == sorted(positions) and positions != list(range(len(kept)))
    assert convert_glue(shared_data, per_task=50) == capped  # the same sample every time


def test_an_eval_question_in_training_data_is_refused(shared_data, tmp_path):
    q = read_eval(shared_data, "split-9-10")[0].question
    path = tmp_path / "simplified.jsonl"
    path.write_text(json.dumps({"instruction": q.upper() + "  ", "response": "An answer."}) + "\n"
                    + json.dumps({"instruction": "Say something nice.", "response": "You are kind."}) + "\n")
    rows, dropped = convert(shared_data, [f"simplified:{path}"])
    assert dropped == 1 and [r["instruction"] for r in rows] == ["Say something nice."]
    from data.tasks import read_instructions
    with pytest.raises(DataError, match=r"simplified.jsonl:1: .*held out .*eval"):
        check_no_leak(read_instructions(path), forbidden_texts(shared_data))


# ------------------------------------------------------------------------------------------- bad input

def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_inputs_give_clear_errors(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"hash": "h1", "question": "q1", "answer": "x", "model": "a"},
                                       {"hash": "h2", "question": "q2", "answer": "y", "model": "a"}])
    b = _write(tmp_path / "b.jsonl", [{"hash": "h1", "question": "q1", "answer": "x", "model": "b"}])
    with pytest.raises(DataError, match="answer different questions"):
        judge.read_answers([a, b])
    c = _write(tmp_path / "c.jsonl", [{"hash": "h1", "question": "q1", "model": "c"}])
    with pytest.raises(DataError, match=r"c.jsonl:1: .*no 'answer' field"):
        judge.read_answers([a, c])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    import instruct
    with pytest.raises(DataError, match="holds no questions"):
        instruct.read_questions(empty)
    _write(tmp_path / "noq.jsonl", [{"text": "no question field"}])
    with pytest.raises(DataError, match=r"noq.jsonl:1: .*question"):
        instruct.read_questions(tmp_path / "noq.jsonl")
    result = run_script("instruct.py", "generate", "--init_from=nowhere", f"--questions={empty}", check=False)
    assert result.returncode == 2 and "holds no questions" in result.stderr
    result = run_script("instruct.py", "judge", f"--answers={a},{b}", check=False)
    assert result.returncode == 2 and "answer different questions" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------- judge

def test_parse_scores_is_strict():
    good = "Sure!\nA: grammar=5 coherence=4 specificity=3\nB: grammar=0 coherence=1 specificity=2\n"
    assert judge.parse_scores(good, 2) == ({"A": {"grammar": 5, "coherence": 4, "specificity": 3},
                                           "B": {"grammar": 0, "coherence": 1, "specificity": 2}}, "")
    assert "no score line for B" in judge.parse_scores("A: grammar=5 coherence=4 specificity=3", 2)[1]
    assert "label C" in judge.parse_scores(good + "C: grammar=1 coherence=1 specificity=1", 2)[1]
    assert "outside 0-5" in judge.parse_scores(good.replace("=5", "=7"), 2)[1]
    assert "twice" in judge.parse_scores(good + "A: grammar=1 coherence=1 specificity=1", 2)[1]
    assert judge.parse_scores("They are all great.", 2)[0] is None


def _scripted(prompt: str) -> str:
    """The fake judge: reads the question and the labelled answers from the prompt. The answer
    containing GOOD scores 5s, others 1/2/3; scenarios by question."""
    question = re.search(r"Question: (.*)", prompt).group(1)
    answers = dict(re.findall(r"Answer ([A-J]):\n(.*)", prompt))
    lines = [f"{label}: grammar={5 if 'GOOD' in a else 1} coherence={5 if 'GOOD' in a else 2} "
             f"specificity={5 if 'GOOD' in a else 3}" for label, a in sorted(answers.items())]
    retry = "could not be read" in prompt
    if question == "malformed" and not retry:
        return "Both answers are lovely!"
    if question == "partial":
        return lines[0]
    if question == "mislabelled":
        return "\n".join(["Z" + line[1:] for line in lines])
    return "Here are my grades:\n" + "\n".join(lines)


def test_judging_with_a_scripted_server_retries_records_failures_and_resumes(tmp_path):
    from tinyhelen.llm import ChatClient
    from tinyhelen.llm.faults import FaultServer
    questions = ["fine", "malformed", "partial", "mislabelled", "fine too"]
    a = _write(tmp_path / "good.jsonl", [{"hash": f"h{i}", "question": q, "answer": f"GOOD answer {i}", "model": "good"}
                                          for i, q in enumerate(questions)])
    b = _write(tmp_path / "bad.jsonl", [{"hash": f"h{i}", "question": q, "answer": f"meh {i}", "model": "bad"}
                                         for i, q in enumerate(questions)])
    out = tmp_path / "j.jsonl"
    cfg = judge.JudgeConfig(answers=f"{a},{b}", out=str(out), attempts=3)
    with FaultServer(answer=_scripted) as fake:
        client = ChatClient(fake.base_url, "fake", max_attempts=1)
        rows = judge.judge_all(client, [a, b], cfg, "fake")
        sent = len(fake.requests)
        by = {(r["hash"], r["pass"]): r for r in rows}
        assert len(rows) == 10 and sent == 2 * (1 + 2 + 3 + 3 + 1)  # fine 1, malformed 2, failures 3 each
        for p in (1, 2):
            ok = by[("h0", p)]
            assert ok["status"] == "ok" and ok["scores"]["good"] == {"grammar": 5, "coherence": 5, "specificity": 5}
            assert ok["scores"]["bad"] == {"grammar": 1, "coherence": 2, "specificity": 3}
            assert set(ok["labels"].values()) == {"good", "bad"} and ok["attempts"] == 1
            assert by[("h1", p)]["status"] == "ok" and by[("h1", p)]["attempts"] == 2
            assert by[("h2", p)]["status"] == "failed" and "no score line for B" in by[("h2", p)]["reason"]
            assert by[("h3", p)]["status"] == "failed" and "label Z" in by[("h3", p)]["reason"]
            assert by[("h3", p)]["scores"] is None and len(by[("h3", p)]["replies"]) == 3
        # the shuffle differs between passes for some question, and is reproducible from the seed
        assert any(by[(h, 1)]["labels"] != by[(h, 2)]["labels"] for h in ("h0", "h1", "h4"))
        assert judge.shuffle_for(0, 1, "h0", ["bad", "good"])[0] == list(by[("h0", 1)]["labels"].values())
        # and within one pass it differs between questions: each of two answers is labelled A for
        # about half of 200 questions (a binomial(200, 0.5) lands in 70..130 with p > 1 - 1e-5)
        first = [judge.shuffle_for(0, 1, f"q{i}", ["bad", "good"])[0][0] for i in range(200)]
        assert 70 <= first.count("good") <= 130
        assert len({judge.shuffle_for(0, 1, f"math_swap:{i}", ["better", "worse"])[0][0] for i in range(20)}) == 2
        # resume: nothing finished is asked again, failed ones included
        again = judge.judge_all(client, [a, b], cfg, "fake")
        assert len(fake.requests) == sent and again == rows
    agree = judge_report.agreement(rows)
    assert agree["pairs"] == 6 and agree["grammar"]["exact"] == 1.0 and agree["sum"]["spearman"] == pytest.approx(1.0)
    bias = judge_report.position_bias(rows)
    assert sum(v["n"] for v in bias["by_label"].values()) == 12
    report = judge_report.run_report(judge_report.ReportConfig(
        answers=f"{a},{b}", judgements=str(out), eval_root=str(tmp_path), out_dir=str(tmp_path / "report")))
    assert "| good | all (n=3) | 5.00" in report and "| bad | all (n=3) | 1.00" in report
    assert (tmp_path / "report" / "scores.png").stat().st_size > 1000


def test_text_measures_against_hand_counts():
    m = judge_report.text_measures("the cat saw the cat saw the cat")
    assert m["words"] == 8 and m["distinct_1"] == pytest.approx(3 / 8) and m["distinct_2"] == pytest.approx(3 / 7)
    # 3-grams: (the cat saw) (cat saw the) (saw the cat) (the cat saw)* (cat saw the)* (saw the cat)*
    assert m["repetition"] == pytest.approx(3 / 6)
    assert judge_report.mean_ci([1.0, 2.0, 3.0])[:2] == pytest.approx((2.0, 4.302653 * 1 / 3 ** 0.5), rel=1e-5)


@pytest.mark.slow
def test_judging_against_the_real_local_server_parses_and_aggregates(tmp_path):
    pytest.importorskip("llama_cpp")
    from tinyhelen.llm import MODEL_ALIAS, ChatClient, LocalServer
    qs = ["Why do we wear coats in winter?", "What do bees make?"]
    a = _write(tmp_path / "a.jsonl", [{"hash": f"h{i}", "question": q, "answer": "Coats keep us warm when it is cold.",
                                        "model": "a"} for i, q in enumerate(qs)])
    b = _write(tmp_path / "b.jsonl", [{"hash": f"h{i}", "question": q, "answer": "blue blue blue the the", "model": "b"}
                                       for i, q in enumerate(qs)])
    cfg = judge.JudgeConfig(answers=f"{a},{b}", out=str(tmp_path / "j.jsonl"), attempts=2)
    with LocalServer(n_threads=2) as server:
        rows = judge.judge_all(ChatClient(server.base_url, MODEL_ALIAS), [a, b], cfg, "SmolLM2-135M")
    assert len(rows) == 4
    for r in rows:
        assert (r["status"] == "ok" and set(r["scores"]) == {"a", "b"}) or (r["status"] == "failed" and r["reason"])
    judge_report.run_report(judge_report.ReportConfig(answers=f"{a},{b}", judgements=cfg.out,
                                                      eval_root=str(tmp_path), out_dir=str(tmp_path / "r")))
    assert (tmp_path / "r" / "report.md").is_file()


@pytest.mark.slow
def test_sigterm_to_a_process_with_a_local_server_stops_the_server_too(tmp_path):
    """The server runs in its own session; killing the process that started it (SIGTERM, as `kill`
    or a scheduler sends) must not leave it running."""
    import os
    import signal
    import subprocess
    import sys
    import time
    pytest.importorskip("llama_cpp")
    script = ("import sys, time\n"
              f"sys.path.insert(0, {str(REPO)!r})\n"
              "from tinyhelen.llm import LocalServer\n"
              "with LocalServer(n_threads=1) as server:\n"
              "    print(server.process.pid, flush=True)\n"
              "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server_pid = int(proc.stdout.readline())
    try:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # SystemExit, not death by the signal
        for _ in range(60):  # stop() waited for it, so it is gone at once
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the llama.cpp server outlived the process that started it")
    finally:
        try:
            os.kill(server_pid, signal.SIGKILL)  # whatever happened, leave no server behind
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------------------- generate

def _tiny_run(tmp_path, leaner_small):
    """A run folder (ckpt.pt + tokenizer.json) of a random tiny Llama with the prepared leaner tokenizer."""
    import shutil

    from tinyhelen import config as config_lib
    from tinyhelen.checkpoint import atomic_torch_save
    from data.tokenizer import load_tokenizer
    from model_llama import Llama, LlamaConfig
    from trainer import TrainConfig
    tok_file = leaner_small / "tokenizer.json"  # the real gpt-2K tokenizer of the shared data
    tok = load_tokenizer(str(tok_file))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                      ffn_hidden=128, max_seq_len=256, init_std=0.1)
    run = tmp_path / "run"
    run.mkdir()
    atomic_torch_save({"model": Llama(cfg).state_dict(),
                       "config": config_lib.to_dict(TrainConfig(model=cfg))}, run / "ckpt.pt")
    shutil.copyfile(tok_file, run / "tokenizer.json")
    return run


def test_train_then_resume_gives_the_uninterrupted_losses(tmp_path, leaner_small):
    from tinyhelen import config as config_lib
    import instruct
    run = _tiny_run(tmp_path, leaner_small)
    data = _write(tmp_path / "d.jsonl", [{"instruction": f"Say the number {i}.", "output": f"It is {i}." * (i % 3 + 1)}
                                          for i in range(40)])

    def train(out, steps, *flags):
        cfg = config_lib.parse_args(instruct.InstructConfig(), [
            f"--init_from={run}", f"--data={data}", f"--out_dir={out}", f"--max_steps={steps}", "--batch_size=4",
            "--seq_len=64", "--eval_every=2", "--ckpt_every=2", "--log_every=1", "--data_root=", "--device=cpu",
            "--dtype=fp32", "--warmup_steps=1", *flags])
        instruct.instruction_tune(cfg)
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(line)]
    straight = train(tmp_path / "a", 4)
    train(tmp_path / "b", 2)
    resumed = train(tmp_path / "b", 4, "--resume")
    assert len(straight) == 4 and resumed == pytest.approx(straight, abs=1e-6)
    assert (tmp_path / "a" / "tokenizer.json").is_file()


def test_generate_resumes_and_batches_match_one_at_a_time(tmp_path, leaner_small):
    """Answers keyed by hash: a run stopped after 2 questions continues with the third only, and the
    batched answers equal batch-1 answers (greedy)."""
    from tinyhelen import config as config_lib
    import instruct
    run = _tiny_run(tmp_path, leaner_small)
    questions = _write(tmp_path / "q.jsonl", [{"question": "Why is the sky blue?"}, {"question": "Hi?"},
                                              {"question": "What do cows eat when it is very cold outside?"}])

    def gen(out, **kw):
        return instruct.generate_answers(instruct.GenerateConfig(init_from=str(run), questions=questions, out=str(out),
                                                                 max_new_tokens=12, device="cpu", **kw))
    out = tmp_path / "a.jsonl"
    first = gen(out, limit=2, batch_size=3)
    assert len(first) == 2 and len(out.read_text().splitlines()) == 2
    full = gen(out, batch_size=3)
    assert [r["hash"] for r in full[:2]] == [r["hash"] for r in first] and len(out.read_text().splitlines()) == 3
    single = gen(tmp_path / "b.jsonl", batch_size=1)
    assert [r["answer"] for r in full] == [r["answer"] for r in single]
    with pytest.raises(config_lib.ConfigError, match="another --out"):
        gen(out, temperature=0.5)
