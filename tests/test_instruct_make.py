"""instruct.py make: open-answer rows about leaner train documents, against a real HTTP endpoint on
loopback (the fault-injecting server answers like an obliging model), with the real data's plan."""

import json
import subprocess
import sys
import time

import pytest

from data.tasks import read_instructions
from simplify.chunk import split_sentences
from simplify.vocab import core_vocab
from tinyhelen.instruct_data import check_no_leak, forbidden_texts
from tinyhelen.instruct_make import (KINDS, HttpBackend, MakeConfig, Rejected, Request, check_answer, make, plan,
                                     read_topics, topics_of)
from tinyhelen.llm import ChatClient
from tinyhelen.llm.faults import FaultServer

from conftest import REPO


def grounded_answer(prompt: str) -> str:
    """What a careful model would say: the first sentence of the text it was shown."""
    text = prompt.split("Text: ", 1)[1].rsplit("\n\n", 1)[0]
    first = text.split("\n\n")[0].split(": ", 1)[-1] if "\n\n" in text else text
    return split_sentences(first)[0]


def config(tmp_path, shared_data, **kw):
    return MakeConfig(data_root=str(shared_data), out=str(tmp_path / "gen.jsonl"),
                      cache_dir=str(tmp_path / "cache"), progress=False, **kw)


def fast_client(fake):
    return ChatClient(fake.base_url, "fake", timeout_s=5, max_attempts=6, backoff_s=0.01, max_backoff_s=0.02)


def test_topics_from_a_wiki_article_and_a_lesson():
    wiki = topics_of("wiki", "Big Ben\\nBig Ben is a big clock in a tall tower in LO city. " + "It rings every hour. " * 5,
                     "wiki0000.jsonl:1")
    assert [(t.subject, t.passage.split(".")[0]) for t in wiki] == [("Big Ben", "Big Ben is a big clock in a tall tower in LO city")]
    lesson = ("Lesson: Learning About Crocodiles\n\n## Section 1: What You Need to Know\n\n"
              + "Crocodiles are a kind of animal. They live in rivers and eat fish all day long. " * 2
              + "\n\n## Section 2: Crocodile Homes\n\n" + "They live in warm places near water and rest in the sun. " * 3)
    found = topics_of("textbook", lesson, "textbook0000.jsonl:7")
    # the first section is about the lesson's subject (its own heading names no subject)
    assert [t.subject for t in found] == ["Crocodiles", "Crocodile Homes"]
    assert all(20 <= len(t.passage.split()) <= 60 for t in found)


def test_plan_is_seeded_covers_every_kind_and_reads_train_only(shared_data):
    topics = read_topics(shared_data)
    assert topics and all(t.doc.split(":")[0] in ("wiki0000.jsonl", "textbook0000.jsonl") for t in topics)
    first, again, other = plan(topics, 0), plan(topics, 0), plan(topics, 1)
    assert first == again and first != other
    assert {r.kind for r in first[:50]} == set(KINDS)
    for r in first[:200]:
        message = r.messages()[-1]["content"]
        assert message.startswith("Text: ") and r.context in message
        if r.kind in ("describe", "imagine"):
            assert not r.input and r.instruction.endswith(("?", "."))
        if r.kind == "explain":
            assert r.input in r.context


@pytest.mark.parametrize("answer,reason", [
    ("", "empty"),
    ("I'm sorry, but I cannot help with that.", "refusal"),
    ("What a wonderful story! I love it.", "praise"),
    ("Tell me about Big Ben.", "restates_question"),
    ("Big.", "length"),
    ("Big Ben is a bell. Big Ben is a bell in a high building. Big Ben is a bell in a high building.", "repetition"),
    ("1. Big Ben is a big bell. 2. It rings every hour.", "format"),
    ("Big Ben is a big bell in a high building in LO city, a big bell in a high building that rings.", "repetition"),
    ("Big Ben likes to play games with his friends at school every day.", "off_text"),
    ("Big Ben is a big bell in a high building in LO city, majestic and venerable.", "vocabulary"),
    ("Big Ben is a big bell in a high building in LO city. It rings every hour for the dragon.", "ungrounded"),
])
def test_every_rejection_has_its_reason(answer, reason):
    # a hard word the text has is allowed up to the share; one it does not have, never
    share = 0.3 if reason == "ungrounded" else 0.05
    request = Request("describe", "Tell me about Big Ben.", "",
                      "Big Ben is a big bell in a high building in LO city. It rings every hour.", "wiki0000.jsonl:1")
    with pytest.raises(Rejected) as e:
        check_answer(request, answer, core_vocab(), max_oov_share=share)
    assert e.value.reason == reason


def test_a_good_answer_is_kept_and_a_cut_off_sentence_dropped():
    request = Request("describe", "Tell me about Big Ben.", "",
                      "Big Ben is a big bell in a high building in LO city. It rings every hour.", "wiki0000.jsonl:1")
    got = check_answer(request, "Answer: Big Ben is a big bell in a high building. It rings every", core_vocab(), 0.05)
    assert got == "Big Ben is a big bell in a high building."


def test_rows_pass_validation_and_the_leak_check(tmp_path, shared_data):
    cfg = config(tmp_path, shared_data, target=25)
    with FaultServer(answer=grounded_answer) as fake:
        report = make(cfg, HttpBackend(fast_client(fake)), "fake")
    rows = [json.loads(line) for line in open(cfg.out)]
    assert len(rows) == report["rows_accepted"] == 25
    assert report["rows_asked"] == 25 + sum(report["rejected_by_reason"].values())
    rejects = [json.loads(line) for line in open(tmp_path / "gen.rejects.jsonl")]
    assert len(rejects) == report["rows_asked"] - 25 and all(r["reason"] for r in rejects)
    check_no_leak(rows, forbidden_texts(shared_data))
    assert len(read_instructions(cfg.out)) == 25
    assert {r["source"].split(":")[0] for r in rows} == {"generated"} and len({r["source"] for r in rows}) >= 4
    assert report["oov_share_accepted"] <= report["oov_share_limit"]
    vocab = core_vocab()
    for r in rows:  # each row checked again, from scratch, passes as written
        assert vocab.oov_share(r["output"]) <= report["oov_share_limit"]
        assert r["output"] and r["output"].lower() not in r["instruction"].lower()


def test_server_faults_are_retried(tmp_path, shared_data):
    cfg = config(tmp_path, shared_data, target=5)
    with FaultServer(answer=grounded_answer) as fake:
        fake.default = ["429", "500", "drop", "truncate", "503"]
        client = fast_client(fake)
        report = make(cfg, HttpBackend(client), "fake")
    assert report["rows_accepted"] == 5
    assert client.requests_sent == len(fake.requests) >= 5 + report["rows_asked"]  # five faults on the way


def test_more_rows_later_reuse_every_answer(tmp_path, shared_data):
    with FaultServer(answer=grounded_answer) as fake:
        make(config(tmp_path, shared_data, target=6, batch_size=2), HttpBackend(fast_client(fake)), "fake")
        first = [json.loads(line) for line in open(tmp_path / "gen.jsonl")]
        asked = len(fake.requests)
        make(config(tmp_path, shared_data, target=12, batch_size=2), HttpBackend(fast_client(fake)), "fake")
    rows = [json.loads(line) for line in open(tmp_path / "gen.jsonl")]
    assert rows[:6] == first and len(rows) == 12
    bodies = [json.dumps(r["body"], sort_keys=True) for r in fake.requests]
    assert len(bodies) == len(set(bodies)) > asked  # nothing asked twice


def test_a_killed_run_resumes_without_repeating_a_request(tmp_path, shared_data):
    cmd = [sys.executable, "instruct.py", "make", f"--data_root={shared_data}", f"--out={tmp_path / 'gen.jsonl'}",
           "--target=12", "--progress=false"]
    with FaultServer(answer=grounded_answer, slow_s=0.3) as fake:
        fake.default = ["timeout"] * 10_000  # every answer takes 0.3 s: time to kill the run mid-way
        cmd.append(f"--base_url={fake.base_url}")
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while len(fake.requests) < 6 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        killed_at = len(fake.requests)
        assert 6 <= killed_at and not (tmp_path / "gen.jsonl").exists()
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    bodies = [json.dumps(r["body"], sort_keys=True) for r in fake.requests]
    repeated = [b for b in set(bodies) if bodies.count(b) > 1]
    # only the request in flight when the run was killed can be asked again: its answer never arrived
    assert len(repeated) <= 1 and all(bodies.index(b) >= killed_at - 1 for b in repeated)
    assert len(read_instructions(tmp_path / "gen.jsonl")) == 12


def test_bad_settings_stop_before_any_request(tmp_path, shared_data):
    result = subprocess.run([sys.executable, "instruct.py", "make", "--genres=wiki,book",
                             f"--data_root={shared_data}", "--base_url=http://127.0.0.1:9/v1",
                             f"--out={tmp_path / 'g.jsonl'}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "genres must be a comma list of wiki, textbook" in result.stderr
    result = subprocess.run([sys.executable, "instruct.py", "make", f"--data_root={tmp_path / 'nowhere'}",
                             f"--out={tmp_path / 'g.jsonl'}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "no such folder" in result.stderr


def test_the_engine_backend_answers_in_batches_as_one_at_a_time(smollm2, tmp_path, shared_data):
    """--engine: the imported SmolLM2 in this process. Greedy answers of a batch of prompts of different
    lengths equal the answers to each alone (left padding changes nothing; in fp32), and they end at the chat
    model's end of turn rather than running to max_tokens."""
    from tinyhelen.instruct_make import EngineBackend
    _, run = smollm2
    backend = EngineBackend(str(run), threads=2, bf16=False)  # fp32: bf16 rounds batches differently
    requests = plan(read_topics(shared_data))[:4]
    settings = {"temperature": 0.0, "max_tokens": 40, "seed": 0}
    def answers(message_lists):
        got = {}
        backend.complete_many(message_lists, settings, got.__setitem__)
        return [got[i] for i in range(len(message_lists))]
    short = [{"role": "user", "content": "Say the word yes."}]
    together = answers([r.messages() for r in requests] + [short])
    alone = [answers([r.messages()])[0] for r in requests] + [answers([short])[0]]
    assert together == alone and all(a.strip() for a in together)
    assert len(backend.tokenizer.encode(together[-1])) < 10  # it ended on its own, at the end of turn


def test_generated_rows_feed_convert_and_the_validity_contrast(tmp_path, shared_data):
    """instruct.py convert --sources=generated:FILE keeps each row's kind; validate --generated reads the
    same rows as (question, answer) pairs, the question being the instruction and its input."""
    from tinyhelen.answer_validity import build_contrasts, generated_rows
    from tinyhelen.instruct_data import convert
    cfg = config(tmp_path, shared_data, target=8)
    with FaultServer(answer=grounded_answer) as fake:
        make(cfg, HttpBackend(fast_client(fake)), "fake")
    made = [json.loads(line) for line in open(cfg.out)]
    rows, dropped = convert(shared_data, [f"generated:{cfg.out}"])
    assert dropped == 0 and [r["source"] for r in rows] == [r["source"] for r in made]
    assert [(r["instruction"], r["input"], r["output"]) for r in rows] == \
        [(r["instruction"], r["input"], r["output"]) for r in made]
    pairs = generated_rows(cfg.out)
    assert pairs == [(r["instruction"] + (f"\n{r['input']}" if r["input"] else ""), r["output"]) for r in made]
    swaps = [p for p in build_contrasts(shared_data, 5, generated=cfg.out) if p["contrast"] == "gen_swap"]
    assert len(swaps) == 5 and all(p["better"] != p["worse"] for p in swaps)
    assert all((p["question"], p["better"]) in pairs for p in swaps)
