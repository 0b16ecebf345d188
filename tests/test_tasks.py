"""Task data readers (data/tasks.py) on the real Leaner-Glue and Leaner-Eval files, their errors on small
bad files, and evaluate.py's data loading (a missing file; rows that carry a genre).

Oracle: Python's json module on the raw files, and for evaluate the model's own loss on the texts
joined the way evaluate documents it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from data.corpus import GLUE_TASKS, DataError
from data.tasks import eval_files, glue_file, glue_splits, holdout, read_eval, read_glue, read_instructions
from tests.conftest import run_script

FIXTURES = Path(__file__).parent / "fixtures"


def raw_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- Leaner-Glue -------------------------------------------------------------------------------------

def test_glue_reads_every_real_task_file(shared_data):
    folder = shared_data / "leaner" / "glue"
    covered = set()
    for task, spec in GLUE_TASKS.items():
        for split in glue_splits(shared_data, task):
            path = glue_file(shared_data, task, split)
            covered.add(path.name)
            examples, rows = read_glue(shared_data, task, split), raw_rows(path)
            assert len(examples) == len(rows) > 0
            for ex, row in zip(examples, rows):
                assert ex.texts == tuple(row[f] for f in spec.text_fields) and ex.idx == row["idx"]
                assert ex.label == row["label"]
                if spec.regression:
                    assert type(ex.label) is float and 0 <= ex.label <= 5
                else:
                    assert type(ex.label) is int and 0 <= ex.label < spec.num_labels
            assert set(rows[0]) == {*spec.text_fields, "label", "idx"}  # the fields GLUE_TASKS names
    assert covered == {p.name for p in folder.glob("*.jsonl")}  # every file is some task's split
    assert glue_splits(shared_data / "leaner" / "glue", "mnli") == ["validation_matched", "validation_mismatched"]


def test_holdout_splits_a_validation_file(shared_data):
    examples = read_glue(shared_data, "sst2", "validation")
    train, dev = holdout(examples, 0.2, seed=3)
    assert len(dev) == round(len(examples) * 0.2) and len(train) + len(dev) == len(examples)
    assert sorted(e.idx for e in train + dev) == sorted(e.idx for e in examples)  # disjoint, complete
    assert [e.line for e in dev] == sorted(e.line for e in dev)  # file order kept
    assert holdout(examples, 0.2, seed=3) == (train, dev) and holdout(examples, 0.2, seed=4)[1] != dev


def write(path: Path, *rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_glue_errors_name_file_line_and_fix(tmp_path):
    glue = tmp_path / "leaner" / "glue"
    write(glue / "cola_train.jsonl", {"sentence": "A cat.", "label": 1, "idx": 0},
          {"sentence": "Cat a.", "label": "0", "idx": 1})
    with pytest.raises(DataError, match=r"cola_train\.jsonl:2: field 'label' is str .*expected int"):
        read_glue(tmp_path, "cola", "train")
    write(glue / "stsb_train.jsonl", {"sentence1": "a", "sentence2": "b", "label": 7.5, "idx": 0})
    with pytest.raises(DataError, match=r"stsb_train\.jsonl:1: stsb label 7\.5 is outside .* 0-5"):
        read_glue(glue, "stsb", "train")
    write(glue / "mnli_validation_matched.jsonl", {"premise": "a", "hypothesis": "b", "label": 3, "idx": 0})
    with pytest.raises(DataError, match=r":1: mnli label 3 is not a class id \(0 entailment, 1 neutral, "
                                        r"2 contradiction\)"):
        read_glue(tmp_path, "mnli", "validation_matched")
    write(glue / "rte_train.jsonl", {"sentence1": "a", "label": True, "idx": 0})
    with pytest.raises(DataError, match=r"rte_train\.jsonl:1: a rte row needs a field 'sentence2' "
                                        r"\(its fields: 'sentence1', 'label', 'idx'\)"):
        read_glue(tmp_path, "rte", "train")
    write(glue / "wnli_train.jsonl", {"sentence1": "a", "sentence2": "b", "label": True, "idx": 0})
    with pytest.raises(DataError, match=r"field 'label' is bool"):  # JSON true is no class id
        read_glue(tmp_path, "wnli", "train")
    with pytest.raises(DataError, match="unknown Leaner-Glue task 'sst5': the tasks are cola, sst2, mrpc, qqp"):
        read_glue(tmp_path, "sst5", "train")
    with pytest.raises(DataError, match="mnli has no split 'validation': its splits are train, "
                                        "validation_matched, validation_mismatched"):
        read_glue(tmp_path, "mnli", "validation")
    with pytest.raises(DataError, match=r"qqp_train\.jsonl not found; the qqp splits here: none .*split a "
                                        r"validation file"):
        read_glue(tmp_path, "qqp", "train")
    with pytest.raises(DataError, match="no Leaner-Glue folder at"):
        read_glue(tmp_path / "nowhere", "cola", "train")


# ---- Leaner-Eval -------------------------------------------------------------------------------------

def test_eval_reads_the_real_question_files(shared_data):
    files = eval_files(shared_data)
    assert {"all", "split-0-7", "split-7-8", "split-8-9", "split-9-10"} <= set(files)
    everything = read_eval(shared_data)
    assert len(everything) == 1594 == len({q.hash for q in everything})
    assert [(q.question, q.source, q.hash) for q in everything] == [
        (r["question"], r["source"], r["hash"]) for r in raw_rows(files["all"])]
    splits = [read_eval(shared_data / "leaner" / "eval", n) for n in files if n.startswith("split-")]
    hashes = [q.hash for s in splits for q in s]
    assert len(hashes) == len(set(hashes)) and set(hashes) == {q.hash for q in everything}  # a partition
    by_hash = {q.hash: q.question for q in everything}
    assert all(by_hash[q.hash] == q.question for s in splits for q in s)


def test_eval_errors(tmp_path):
    folder = tmp_path / "eval"
    write(folder / "all.jsonl", {"question": "Why?", "source": "me", "hash": "ab"},
          {"question": "How?", "source": "me", "hash": "ab"})
    with pytest.raises(DataError, match=r"all\.jsonl:2: hash ab\.\.\. was already used at line 1"):
        read_eval(folder)
    write(folder / "split-0-1.jsonl", {"question": "Why?", "hash": "ab"})
    with pytest.raises(DataError, match=r"split-0-1\.jsonl:1: a Leaner-Eval row needs a field 'source'"):
        read_eval(tmp_path, "split-0-1")
    with pytest.raises(DataError, match="no Leaner-Eval file 'split-5-6' .*: the files are all, split-0-1"):
        read_eval(tmp_path, "split-5-6")


# ---- instruction JSONL --------------------------------------------------------------------------------

def test_instructions_and_their_template(tmp_path):
    path = write(tmp_path / "inst.jsonl", {"instruction": "Say hi.", "output": "Hi!"}, "",
                 {"instruction": "Add.", "input": "2 and 3", "output": "5", "id": 7})
    first, second = read_instructions(path)
    assert (first.input, first.line, second.line) == ("", 1, 3)
    assert first.text() == "### TASK INPUT:\nSay hi.\n\n### RESPONSE:\nHi!"
    assert second.prompt() == "### TASK INPUT:\nAdd.\n2 and 3\n\n### RESPONSE:\n"
    fixture = FIXTURES / "simplify" / "corpus" / "validation" / "instruction0000.jsonl"
    rows = raw_rows(fixture)
    assert [(i.instruction, i.input, i.output) for i in read_instructions(fixture)] == [
        (r["instruction"], r.get("input", ""), r["response"]) for r in rows]  # "response" means output


def test_instruction_errors(tmp_path):
    with pytest.raises(DataError, match=r"inst\.jsonl:2: a instruction row needs a field 'output'"):
        read_instructions(write(tmp_path / "inst.jsonl", {"instruction": "a", "output": "b"}, {"instruction": "c"}))
    with pytest.raises(DataError, match=r":1: field 'input' is list .*expected str"):
        read_instructions(write(tmp_path / "inst.jsonl", {"instruction": "a", "input": ["x"], "output": "b"}))
    with pytest.raises(DataError, match=r":1: the row has both 'output' and 'response'"):
        read_instructions(write(tmp_path / "inst.jsonl", {"instruction": "a", "output": "b", "response": "c"}))
    with pytest.raises(DataError, match=r"inst\.jsonl:1: not valid JSON"):
        read_instructions(write(tmp_path / "inst.jsonl", '{"instruction": "a", "output": }'))
    with pytest.raises(DataError, match=r"instruction file not found: .*absent\.jsonl"):
        read_instructions(tmp_path / "absent.jsonl")


# ---- evaluate.py --data ----------------------------------------------------------------------------------

def test_evaluate_says_the_file_is_missing(tmp_path):
    for data, message in [(tmp_path / "texts.jsonl", f"text file not found: {tmp_path / 'texts.jsonl'}"),
                          (tmp_path / "corpus", f"{tmp_path / 'corpus'} not found: give a JSON-lines file")]:
        bad = run_script("evaluate.py", f"--out_dir={tmp_path / 'no_run'}", f"--data={data}", "--device=cpu",
                         check=False)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert "--data_root" not in bad.stderr and "Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def tiny_run(leaner_small, tmp_path_factory):
    """A run folder with an untrained one-layer Llama and the prepared folder's tokenizer."""
    from tinyhelen.checkpoint import atomic_torch_save
    from model_llama import Llama, LlamaConfig
    out = tmp_path_factory.mktemp("tiny_run")
    shutil.copyfile(leaner_small / "tokenizer.json", out / "tokenizer.json")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2000, n_layer=1, n_embd=32, n_head=2, n_kv_head=2, ffn_hidden=64, max_seq_len=256)
    atomic_torch_save({"model": Llama(cfg).state_dict(), "step": 0,
                       "config": {"model": {**asdict(cfg), "__class__": "LlamaConfig"}, "seq_len": 256}},
                      out / "ckpt.pt")
    return out


def test_evaluate_breaks_down_jsonl_rows_by_their_genre(tiny_run, tmp_path):
    import evaluate
    from tinyhelen.checkpoint import load_model
    from data.tokenizer import load_tokenizer
    rows = [{"text": "The sun is hot.", "genre": "story"}, {"text": "I like my dog."},
            {"genre": "math", "problem": "What is 1 + 1?", "hints": ["1 + 1 = 2", "So 2."]},
            {"text": "A cat sat on a mat.", "genre": "story"}]
    path = write(tmp_path / "rows.jsonl", *rows)
    texts = {"story": ["The sun is hot.", "A cat sat on a mat."], "text": ["I like my dog."],
             "math": ["### MATH INPUT:\nWhat is 1 + 1?\n\n### RESPONSE:\n1 + 1 = 2\nSo 2."]}
    summary = evaluate.evaluate(evaluate.EvalConfig(out_dir=str(tiny_run), data=str(path), device="cpu"))
    assert list(summary["genres"]) == ["story", "text", "math"]  # in the order the file first shows them
    model, _ = load_model(tiny_run)
    tok = load_tokenizer(str(tiny_run / "tokenizer.json"))
    for genre, genre_texts in texts.items():
        stream = [tok.eot_id]
        for t in genre_texts:
            stream += tok.encode(t) + [tok.eot_id]
        with torch.no_grad():
            _, loss = model(torch.tensor([stream[:-1]]), torch.tensor([stream[1:]]))
        assert summary["genres"][genre]["loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert summary["genres"][genre]["tokens"] == len(stream) - 1
    only = evaluate.evaluate(evaluate.EvalConfig(out_dir=str(tiny_run), data=str(path), genres="math", device="cpu"))
    assert list(only["genres"]) == ["math"]
    with pytest.raises(DataError, match="genre 'wiki' has no rows in .*rows.jsonl .*story, text, math"):
        evaluate.evaluate(evaluate.EvalConfig(out_dir=str(tiny_run), data=str(path), genres="wiki", device="cpu"))
