"""Tokenizers: CLIP's byte-level BPE (open_clip's shipped vocabulary) and a word-level one for toy worlds.

Both return `(N, context_length)` int64 tensors laid out as `[sot] ids... [eot] 0 0 ...`; when a text is
too long it is cut so that `eot` is still the last token (as open_clip does). The text tower pools at the
`eot` position, so every row has exactly one `eot` and it is the last non-pad token.

    from clipcore.tokenizer import build_tokenizer
    tok = build_tokenizer("bpe", 77)            # == open_clip.get_tokenizer("ViT-B-32"), token for token
    tok(["a photo of a dog.", "a cat"])          # (2, 77) LongTensor
    wtok = build_tokenizer("word", 16, texts=["a red square", "a blue circle"])
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from collections import Counter
from typing import Sequence

import regex
import torch

try:  # ftfy repairs mojibake; it ships with open_clip but is optional here
    import ftfy
except ImportError:  # pragma: no cover
    ftfy = None

# 256 byte symbols + 256 byte symbols with `</w>` + 48894 merges + sot + eot = 49408 (the CLIP vocabulary)
_NUM_MERGES = 49152 - 256 - 2
# contractions, letter runs, single digits, runs of other non-space characters (CLIP's pre-tokeniser)
_PRETOKEN = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
# BPE costs time superlinear in a word's length (100k characters without a space: minutes), and a row keeps only
# context_length - 2 ids. So a long word is merged on a prefix of WORD_PREFIX, 2 WORD_PREFIX, ... characters
# until the prefix yields PREFIX_MARGIN ids more than the row still needs; merges can differ only near the cut,
# which the margin keeps out of the row (checked against whole-word BPE on random long words in the tests).
WORD_PREFIX = 64
PREFIX_MARGIN = 8


def clean_text(text: str) -> str:
    """CLIP's cleaning: ftfy.fix_text, html-unescape (twice), collapse whitespace, lower-case."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def default_vocab_path() -> str:
    """Path of `bpe_simple_vocab_16e6.txt.gz` inside the installed open_clip wheel (no import of torch models)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("BPETokenizer needs open_clip's vocabulary: `pip install open_clip_torch`, "
                                "or pass vocab_path= to a bpe_simple_vocab_16e6.txt.gz file")
    return os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")


def _byte_alphabet() -> tuple[list[str], dict[int, str]]:
    """One printable unicode character per byte value 0..255 (GPT-2/CLIP's reversible byte mapping).

    Printable latin-1 bytes map to themselves; the 68 others (control chars, space, ...) to chr(256 + i)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    # CLIP orders the vocabulary: printable bytes first (in `keep` order), then the remapped ones
    order = keep + [b for b in range(256) if b not in keep]
    return [out[b] for b in order], out


def _check_texts(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__} ({t!r:.40}), expected str; convert it first")
    return list(texts)


def _pack(rows: list[list[int]], context_length: int, sot: int, eot: int) -> torch.LongTensor:
    """[sot] ids [eot] then 0-padding; too-long rows are cut and their last slot set to eot. -> (N, L)"""
    out = torch.zeros(len(rows), context_length, dtype=torch.long)
    for i, ids in enumerate(rows):
        ids = [sot, *ids[: context_length - 2], eot]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


# ----------------------------------------------------------------------------------------------- BPE
class BPETokenizer:
    """CLIP's byte-level BPE, implemented here, reading the vocabulary that ships in open_clip's wheel
    (open_clip/bpe_simple_vocab_16e6.txt.gz, located via importlib; works offline).

    Differences from open_clip's SimpleTokenizer: the literal strings "<start_of_text>"/"<end_of_text>"
    inside a caption are tokenised as ordinary text (open_clip turns them into special tokens, which would
    put an eot mid-row); `decode` strips the trailing space and cuts a padded row at its eot; a row is built
    from the caption's first context_length - 2 ids only, a word longer than WORD_PREFIX characters merged on a
    prefix (see WORD_PREFIX), so a huge caption costs what a short one does.
    """

    pad_id: int = 0

    def __init__(self, context_length: int = 77, vocab_path: str | None = None, cache_size: int = 1 << 16):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (sot + eot), got {context_length}")
        self.context_length = context_length
        path = vocab_path or default_vocab_path()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : _NUM_MERGES + 1]  # line 0 is a version header
        merges = [tuple(line.split()) for line in lines]
        alphabet, self._byte_to_char = _byte_alphabet()
        symbols = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
        symbols += ["<start_of_text>", "<end_of_text>"]
        self.token_to_id: dict[str, int] = {s: i for i, s in enumerate(symbols)}
        self.id_to_token: list[str] = symbols
        self._char_to_byte = {c: b for b, c in self._byte_to_char.items()}
        self._rank = {m: r for r, m in enumerate(merges)}
        self.vocab_size = len(symbols)
        self.sot_id = self.token_to_id["<start_of_text>"]
        self.eot_id = self.token_to_id["<end_of_text>"]
        self._bpe = functools.lru_cache(maxsize=cache_size)(self._bpe_word)

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """Merge the byte-symbols of one pre-token, lowest-rank pair first, until no known pair is left."""
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            ranks = [self._rank.get(p, _NUM_MERGES) for p in zip(parts, parts[1:])]
            best = min(ranks)
            if best == _NUM_MERGES:
                break
            a, b = parts[ranks.index(best)], parts[ranks.index(best) + 1]
            merged, i = [], 0
            while i < len(parts):  # merge every (a, b) occurrence, left to right
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(self.token_to_id[p] for p in parts)

    def _word_ids(self, word: str, need: int | None) -> tuple[int, ...]:
        """BPE ids of one pre-token (byte symbols); with ``need``, its first ``need`` ids, merged on the shortest
        prefix (WORD_PREFIX, doubled) that yields PREFIX_MARGIN more, so a huge word costs what a short one does."""
        if need is None or len(word) <= WORD_PREFIX:
            return self._bpe(word)
        c = WORD_PREFIX
        while c < len(word):
            ids = self._bpe(word[:c])
            if len(ids) >= need + PREFIX_MARGIN:
                return ids[:need]
            c *= 2
        return self._bpe(word)

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Clean and tokenise one text; no sot/eot. max_tokens: return only the first max_tokens ids, without
        tokenising the rest (what a row of the context keeps; the time no longer grows with the text)."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        for m in _PRETOKEN.finditer(clean_text(text)):
            need = None if max_tokens is None else max_tokens - len(ids)
            if need is not None and need <= 0:
                break
            ids.extend(self._word_ids("".join(self._byte_to_char[b] for b in m.group().encode("utf-8")), need))
        return ids if max_tokens is None else ids[:max_tokens]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids -> text (cleaned form: lower-case, punctuation split off by spaces). A leading sot is
        dropped and a row is cut at its first eot, so `decode(tok(s)[0])` works on padded rows."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if ids and ids[0] == self.sot_id:
            ids = ids[1:]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        chars = "".join(self.id_to_token[i] for i in ids)
        pieces = chars.split("</w>")
        raw = [bytes(self._char_to_byte[c] for c in p).decode("utf-8", errors="replace") for p in pieces]
        return " ".join(r for r in raw if r).strip()

    def __call__(self, texts: str | Sequence[str]) -> torch.LongTensor:
        """texts -> (N, context_length) LongTensor: [sot] ids [eot] 0..., eot kept last when truncated."""
        texts = _check_texts(texts)
        keep = self.context_length - 2
        return _pack([self.encode(t, keep) for t in texts], self.context_length, self.sot_id, self.eot_id)

    def state_dict(self) -> dict:
        """json-serialisable description (the vocabulary itself comes from open_clip's wheel)."""
        return {"kind": "bpe", "context_length": self.context_length}


# ---------------------------------------------------------------------------------------------- word
_WORD = regex.compile(r"[\p{L}\p{N}]+")
_SPECIALS = ("<pad>", "<sot>", "<eot>", "<unk>")


class WordTokenizer:
    """Word-level tokenizer for synthetic worlds: lower-case, split on non-alphanumerics.

    ids: 0 pad, 1 sot, 2 eot, 3 unk, then the vocabulary in the given order.
    """

    pad_id, sot_id, eot_id, unk_id = 0, 1, 2, 3

    def __init__(self, vocab: Sequence[str], context_length: int = 16):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (sot + eot), got {context_length}")
        vocab = list(vocab)
        for i, w in enumerate(vocab):
            if not isinstance(w, str) or _WORD.fullmatch(w) is None or w != w.lower():
                raise ValueError(f"vocab[{i}] = {w!r} is not a lower-case alphanumeric word")
        dup = [w for w, n in Counter(vocab).items() if n > 1]
        if dup:
            raise ValueError(f"vocab has duplicate words: {dup[:5]}")
        self.vocab = vocab
        self.context_length = context_length
        self.word_to_id = {w: i + len(_SPECIALS) for i, w in enumerate(vocab)}
        self.vocab_size = len(_SPECIALS) + len(vocab)

    @staticmethod
    def split(text: str) -> list[str]:
        """Lower-cased alphanumeric words of `text` (html-unescaped first)."""
        return _WORD.findall(html.unescape(text).lower())

    @classmethod
    def from_texts(cls, texts: Sequence[str], context_length: int = 16, min_count: int = 1) -> "WordTokenizer":
        """Vocabulary = words seen >= min_count times, most frequent first (ties alphabetical: deterministic)."""
        counts = Counter(w for t in _check_texts(texts) for w in cls.split(t))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(words, context_length)

    def encode(self, text: str) -> list[int]:
        """Word ids of one text (unknown words -> unk_id); no sot/eot, no truncation."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return [self.word_to_id.get(w, self.unk_id) for w in self.split(text)]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids -> space-joined words; pad/sot/eot are dropped, unk shows as "<unk>"."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        words = []
        for i in ids:
            if i == self.unk_id:
                words.append("<unk>")
            elif i >= len(_SPECIALS):
                words.append(self.vocab[i - len(_SPECIALS)])
        return " ".join(words)

    def __call__(self, texts: str | Sequence[str]) -> torch.LongTensor:
        """texts -> (N, context_length) LongTensor: [sot] ids [eot] 0..., eot kept last when truncated."""
        texts = _check_texts(texts)
        return _pack([self.encode(t) for t in texts], self.context_length, self.sot_id, self.eot_id)

    def state_dict(self) -> dict:
        """json-serialisable; `WordTokenizer.from_state_dict(tok.state_dict())` rebuilds the same tokenizer."""
        return {"kind": "word", "context_length": self.context_length, "vocab": list(self.vocab)}

    @classmethod
    def from_state_dict(cls, d: dict) -> "WordTokenizer":
        if d.get("kind", "word") != "word" or "vocab" not in d:
            raise ValueError(f"not a WordTokenizer state dict (keys {sorted(d)})")
        return cls(d["vocab"], d["context_length"])


# ------------------------------------------------------------------------------------------- factory
def build_tokenizer(kind: str, context_length: int, **kw) -> BPETokenizer | WordTokenizer:
    """"bpe" -> BPETokenizer(context_length, vocab_path=...);
    "word" -> WordTokenizer from vocab= (list of words) or texts= (+ min_count=)."""
    if kind == "bpe":
        return BPETokenizer(context_length, **kw)
    if kind == "word":
        if "vocab" in kw:
            return WordTokenizer(kw.pop("vocab"), context_length, **kw)
        if "texts" in kw:
            return WordTokenizer.from_texts(kw.pop("texts"), context_length, **kw)
        raise ValueError("build_tokenizer('word', ...) needs vocab=[words] or texts=[captions]")
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'bpe' or 'word'")


def tokenizer_from_state_dict(d: dict) -> BPETokenizer | WordTokenizer:
    """Rebuild a tokenizer stored with `.state_dict()` (e.g. in a checkpoint)."""
    if d.get("kind") == "bpe":
        return BPETokenizer(d["context_length"])
    return WordTokenizer.from_state_dict(d)
