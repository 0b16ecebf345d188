"""Parsing and checking answers (simplify/validate.py) and the prompts they answer (prompts.py)."""

import pytest

from simplify.prompts import PROMPT_VERSION, REWRITE, SYSTEM, build_messages, render_sections
from simplify.validate import Limits, Rejected, validate
from simplify.vocab import FEMALE_NAMES, MALE_NAMES, core_vocab

ORIGINAL = ("Glutamic acid decarboxylase mRNA in the suprachiasmatic nucleus of rats housed in constant "
            "darkness. This study demonstrates that the levels of the mRNAs encoding the two isoforms of "
            "glutamic acid decarboxylase do not differ over the circadian activity cycle in rats.")
# What a small model plausibly writes: simple, a little clumsy, one hard word kept.
PLAUSIBLE = ("Here is the simplified text:\n\nThis is about a part of the brain in rats. The rats lived in "
             "the dark all the time. The study found that two kinds of a brain helper, called enzyme, did "
             "not change in the day and in the night.")


def reason(genre, fields, answer, **limits):
    with pytest.raises(Rejected) as err:
        validate(genre, fields, answer, core_vocab(), Limits(**limits))
    return err.value.reason


def test_plausible_small_model_answer_passes_and_loses_its_preamble():
    out = validate("textbook", {"text": ORIGINAL}, PLAUSIBLE, core_vocab())
    assert out["text"].startswith("This is about") and "simplified text" not in out["text"]


def test_clearly_bad_answers_are_rejected_with_reasons():
    text = {"text": ORIGINAL}
    assert reason("textbook", text, ORIGINAL) == "vocabulary"  # the hard original handed back
    assert reason("textbook", text, "Rats.") == "length_ratio" or reason("textbook", text, "Rats.") == "format"
    assert reason("textbook", text, "The rats are in the dark. " * 40) == "repetition"  # a loop
    assert reason("textbook", text, " ".join(f"Rat {i} is in the dark." for i in range(60))) == "length_ratio"
    assert reason("textbook", text, "I'm sorry, but I cannot help with that request.") == "refusal"
    assert reason("textbook", text, '{"text": "nope"}') == "format"
    assert reason("textbook", text, "") == "empty"
    assert reason("textbook", text, PLAUSIBLE + "\n\n" + REWRITE) == "format"  # the request echoed
    assert reason("web", text, "This is text from a web page. " + PLAUSIBLE[30:]) == "format"
    opening = "This is part of an encyclopedia article about rats. " + PLAUSIBLE[30:]
    assert validate("wiki", text, opening, core_vocab())  # starting like the instruction is fine
    assert reason("textbook", text, PLAUSIBLE + " See www.rats.com or mail rat@lab.org.") == "contact_left"


def test_vocabulary_limit_is_a_setting():
    assert reason("textbook", {"text": ORIGINAL}, PLAUSIBLE, max_oov_share=0.01) == "vocabulary"


def test_sections_must_come_back_complete():
    fields = {"instruction": "Summarize the paragraph.", "input": "The council convened.", "response": "They met."}
    good = render_sections("instruction", {"instruction": "Say it short.", "input": "The group met.",
                                           "response": "They met."})
    assert validate("instruction", fields, good, core_vocab()) == {
        "instruction": "Say it short.", "input": "The group met.", "response": "They met."}
    assert reason("instruction", fields, "### INSTRUCTION:\nSay it.\n\n### RESPONSE:\nThey met.") == "format"
    assert reason("instruction", fields, good.replace("They met.", "")) == "format"  # empty section


def test_code_must_keep_working_code():
    response = "Use this:\n\n```python\ndef add(a, b):\n    return a + b\n```\n"
    fields = {"prompt": "Write a function that adds two numbers.", "response": response}
    ok = "### TASK:\nMake a thing that adds two numbers.\n\n### RESPONSE:\n" + response
    assert validate("code", fields, ok, core_vocab())["response"].startswith("Use this")
    broken = ok.replace("return a + b", "return a +")
    assert reason("code", fields, broken) == "code_broken"
    assert reason("code", fields, ok.replace("```python", "").replace("```", "")) == "code_broken"


def test_math_is_graded_not_rewritten():
    fields = {"problem": "$6 + 4 \\times 2$", "hints": "$= 14$"}
    assert validate("math", fields, "DIFFICULTY: 3", core_vocab()) == {"difficulty": 3}
    assert validate("math", fields, "Difficulty - 7 because of the order", core_vocab()) == {"difficulty": 7}
    assert reason("math", fields, "DIFFICULTY: 42") == "format"
    assert reason("math", fields, "It is easy.") == "format"


def test_prompts_carry_the_rules_and_the_chunk():
    assert all(n in SYSTEM for n in MALE_NAMES + FEMALE_NAMES)
    assert '"France" becomes "FR country"' in SYSTEM and "[link]" in SYSTEM and "2,000" in SYSTEM
    messages = build_messages("wiki", {"text": "Paris is big."})
    assert messages[0]["role"] == "system" and messages[-1]["content"].startswith("Paris is big.\n\n")
    assert messages[-1]["content"].endswith(REWRITE)  # the request after the text: small models copy less
    glue = build_messages("glue", {"sentence1": "A.", "sentence2": "B."})[-1]["content"]
    assert "### SENTENCE1:\nA.\n\n### SENTENCE2:\nB." in glue
    assert "DIFFICULTY" in build_messages("math", {"problem": "1+1", "hints": ""})[0]["content"]
    assert PROMPT_VERSION
