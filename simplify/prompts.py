"""The genre prompts: the paper's rules for a simple-language world, written once, versioned.

One shared system prompt carries the rules every genre obeys (a preschool vocabulary, the simplest
grammar, nothing harmful, and the substitution rules for names, places, times, titles and contact
details). A short genre instruction says what shape to keep. Structured genres travel as
"### HEADING:" sections so that the answer can be checked for the same sections; math is not
rewritten at all but graded for difficulty. A worked example precedes each request because small
models copy an example far better than they follow a list of rules.

PROMPT_VERSION is part of every cache key: change it whenever the wording changes, so that cached
answers to the old prompt are never reused for the new one.
"""

from __future__ import annotations

from simplify.vocab import FEMALE_NAMES, MALE_NAMES

PROMPT_VERSION = "1"

SYSTEM = f"""You rewrite text for very young children who are just learning to read.
Rules:
1. Use only the about 2,000 most common English words, the words a preschool child knows. Say hard things with easy words.
2. Use the simplest grammar: short sentences, one idea in each sentence.
3. Keep the meaning, the facts and their order. Do not add new facts.
4. Leave out anything harmful, cruel, sexual, hateful or scary, or say it gently.
5. People's names: replace each name with a name that starts with the same letter, from these lists. Boys and men: {", ".join(MALE_NAMES)}. Girls and women: {", ".join(FEMALE_NAMES)}. Keep the same new name for the same person.
6. Places: write the first two letters of the place in capitals and then what kind of place it is: "France" becomes "FR country", "New York" becomes "NE city", "the Nile" becomes "NI river".
7. Exact dates and times become vague ("long ago", "one morning") unless the text needs them.
8. Titles of books, films, songs and other works become plain words ("a book about a young wizard").
9. Links, e-mail addresses and phone numbers become [link], [email] and [phone].
Answer with the rewritten text only: no title of your own, no notes, no explanations."""

GENRE_INSTRUCTIONS = {
    "web": "This is text from a web page. Rewrite it simply and keep what it is for (news, advice, a story, a shop).",
    "book": "This is part of a book. Rewrite it as a simple story book page. Keep the story and who says what.",
    "wiki": "This is part of an encyclopedia article. Rewrite it as a simple encyclopedia text that says the facts plainly. If the first line is a title, keep a simple title line first.",
    "textbook": "This is part of a school lesson. Keep its parts (headings, lists, questions) and explain every idea with easy words.",
    "conversation": "This is a conversation or the lines of a film, each line in quotes. Keep one simple line in quotes for each line, in the same order.",
    "instruction": "This is a task with an optional input and a response. Rewrite all of them simply; the response must still do the task. Keep the same ### headings.",
    "glue": "These are sentences from a language test. Rewrite each one simply but keep how they relate (whether one follows from the other, whether they mean the same, whether a sentence is correct English), so the test's answer stays the same. Keep the same ### headings.",
    "code": "This is a programming task and its answer. Rewrite the task and the comments and explanations with easy words. Keep the code working: do not change the code itself, its names or its syntax. Keep the same ### headings.",
}

REWRITE = "Rewrite the text above for a small child, with very easy words."
GRADE = "Grade the problem above. Answer only with DIFFICULTY: N."

MATH_SYSTEM = """You grade math problems by how hard they are.
Answer with exactly one line: DIFFICULTY: N
where N is a whole number from 1 (a preschool child can do it) to 10 (university level)."""

SECTION_NAMES = {
    "code": {"prompt": "TASK", "response": "RESPONSE"},
    "instruction": {"instruction": "INSTRUCTION", "input": "INPUT", "response": "RESPONSE"},
}

# One worked example per request shape, answered the way the rules ask.
_EXAMPLE_TEXT = ("In 1998, Jonathan Reeves relocated from Manchester to Paris, where he obtained employment "
                 "at a prestigious culinary establishment; details are at www.reeves-cooking.com.")
_EXAMPLE_ANSWER = ("Long ago, Jack moved from MA city to PA city. There he got a job in a very good "
                   "place where people cook food. You can read more at [link].")
_EXAMPLE_SECTIONS = {"instruction": "Summarize the passage in one sentence.",
                     "input": "The committee postponed the referendum owing to unprecedented flooding.",
                     "response": "The committee delayed the referendum because of record floods."}
_EXAMPLE_SECTIONS_ANSWER = {"instruction": "Say what the text tells in one sentence.",
                            "input": "The group moved the big vote to a later day because there was more water than ever before.",
                            "response": "The group moved the vote to later because of a very big flood."}


def section_name(genre: str, field: str) -> str:
    return SECTION_NAMES.get(genre, {}).get(field, field.upper())


def render_sections(genre: str, fields: dict[str, str]) -> str:
    return "\n\n".join(f"### {section_name(genre, k)}:\n{v}" for k, v in fields.items())


def build_messages(genre: str, fields: dict[str, str]) -> list[dict]:
    """The chat messages for one chunk (fields: {"text": ...} for prose genres).

    The text comes first and the request after it: small models asked before the text tend to
    copy it, asked after it they rewrite it (tried on SmolLM2-135M: the share of words outside
    the core fell from 0.22 to about 0.12 on five real wiki paragraphs; asked first, it stayed 0.22).
    """
    if genre == "math":
        problem = render_sections(genre, {"problem": fields.get("problem", ""), "hints": fields.get("hints", "")})
        example = render_sections(genre, {"problem": "What is $3 + 4$?", "hints": "$3 + 4 = 7$"})
        return [{"role": "system", "content": MATH_SYSTEM},
                {"role": "user", "content": f"{example}\n\n{GRADE}"},
                {"role": "assistant", "content": "DIFFICULTY: 1"},
                {"role": "user", "content": f"{problem}\n\n{GRADE}"}]
    instruction = GENRE_INSTRUCTIONS.get(genre, GENRE_INSTRUCTIONS["web"])
    if set(fields) == {"text"}:
        example = (_EXAMPLE_TEXT, _EXAMPLE_ANSWER)
        body = fields["text"]
    else:
        example = (render_sections("instruction", _EXAMPLE_SECTIONS),
                   render_sections("instruction", _EXAMPLE_SECTIONS_ANSWER))
        body = render_sections(genre, fields)
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{example[0]}\n\n{REWRITE}"},
            {"role": "assistant", "content": example[1]},
            {"role": "user", "content": f"{body}\n\n{instruction} {REWRITE}"}]
