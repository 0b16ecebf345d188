"""simplify: rewrite ordinary training text into a simple-language world with an LLM, genre by genre.

The pipeline (python -m simplify run) reads documents, cleans them, chunks them by sentences, sends
each chunk with a genre prompt to any OpenAI-compatible chat endpoint, validates every answer, and
caches it on disk so that an interrupted run loses nothing. `python -m simplify stats` measures how
simple a corpus is; `python -m simplify serve` starts the small embedded llama.cpp model.
"""

from data.corpus import TEXT_GENRES as GENRES  # noqa: F401  the pre-training genres, instruction, glue
