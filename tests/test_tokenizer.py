"""clipcore.tokenizer: token-for-token parity with open_clip's BPE, and the word tokenizer's contract."""
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipcore.tokenizer import (BPETokenizer, WordTokenizer, _pack, build_tokenizer, clean_text,
                                tokenizer_from_state_dict)

PARITY_TEXTS = [
    "a photo of a dog.",
    "A PHOTO OF A CAT",
    "",
    "   ",
    "Hello, World!!!",
    "it's a dog's life; they're here, we've won, I'm in, you'll see, he'd go",
    "numbers: 3.14159 and 1,000,000 and 2024-01-01",
    "café naïve résumé façade",
    "日本語のテキスト",
    "emoji 😀🐶🎉 and ❤️",
    "mixed\ttabs\nnewlines   and    spaces",
    "html &amp; entities &lt;b&gt; &quot;quoted&quot; &amp;amp;",
    "mojibake: â€œquotesâ€\x9d",
    "hyphen-ated and under_scored and slash/separated",
    "!!!???...,,,;;;",
    "ALLCAPS lowercase MiXeD",
    "e-mail: someone@example.com, url: https://example.com/path?q=1",
    "ünïcödé accents ÀÉÎÕÜ",
    "Ελληνικά και русский текст",
    "عربى עברית",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "the quick brown fox jumps over the lazy dog " * 20,  # longer than 77 tokens: truncated
    "zero-width\u200bspace and non\u00a0breaking",
    "'quoted' \"double\" `backtick`",
    "a photo of a {c}.",
    "x1y2z3 42nd 3rd 1st",
    "tab\tonly",
    "©®™ symbols ° ± × ÷",
    "dog" + " !" * 60,
]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer()


@pytest.fixture(scope="module")
def ref():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")


def test_vocab_and_special_ids(bpe, ref):
    assert bpe.vocab_size == 49408 == ref.vocab_size
    assert (bpe.sot_id, bpe.eot_id, bpe.pad_id) == (ref.sot_token_id, ref.eot_token_id, 0)


def test_parity_with_open_clip(bpe, ref):
    ours, theirs = bpe(PARITY_TEXTS), ref(PARITY_TEXTS)
    assert ours.shape == theirs.shape == (len(PARITY_TEXTS), 77) and ours.dtype == torch.long
    for i, s in enumerate(PARITY_TEXTS):
        assert torch.equal(ours[i], theirs[i]), f"row {i}: {s!r}"
        assert bpe.encode(s) == ref.encode(s), s


def test_parity_other_context_length(ref):
    tok = BPETokenizer(context_length=12)
    assert torch.equal(tok(PARITY_TEXTS), ref(PARITY_TEXTS, context_length=12))


def test_layout_eot_last_nonpad(bpe):
    rows = bpe(PARITY_TEXTS)
    for row in rows:
        nonpad = (row != 0).nonzero().flatten()  # no BPE id 0 ("!") is produced by these texts at a row end
        assert row[0] == bpe.sot_id
        assert (row == bpe.eot_id).sum() == 1
        last = (row == bpe.eot_id).nonzero().item()
        assert (row[last + 1:] == 0).all() and last == nonpad.max()
    long = bpe("word " * 200)
    assert long[0, -1] == bpe.eot_id and (long[0] != 0).all()


def test_special_strings_in_text_are_plain_text(bpe):
    row = bpe("a <end_of_text> b")[0]
    assert (row == bpe.eot_id).sum() == 1  # deliberate deviation from open_clip (it would emit eot mid-row)


@pytest.mark.parametrize("s", ["a photo of a dog", "two cats sitting on a red sofa",
                               "the quick brown fox jumps over the lazy dog", "café au lait 7"])  # digits split: "42" -> "4 2"
def test_decode_round_trip(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s
    assert bpe.decode(bpe(s)[0]) == s  # padded row with sot/eot
    assert bpe.decode(bpe.encode("A  Photo\tOF a Dog")) == "a photo of a dog"


def test_clean_text():
    assert clean_text("  A &amp;amp; B\n\tC ") == "a & b c"


def test_non_str_input_names_index(bpe):
    with pytest.raises(ValueError, match=r"texts\[2\] is int"):
        bpe(["a", "b", 3])
    with pytest.raises(ValueError, match="texts\\[0\\] is NoneType"):
        WordTokenizer(["a"])([None])
    with pytest.raises(ValueError):
        bpe.encode(b"bytes")


def _long_words(n: int, seed: int = 0) -> list[str]:
    """Captions whose words are long: random letters, repeated motifs, words run together, CJK, Cyrillic."""
    import random
    import string
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog photo of red small house tree river sky".split()
    kinds = [lambda k: "".join(rng.choice(string.ascii_lowercase) for _ in range(k)),
             lambda k: ("".join(rng.choice("abcde") for _ in range(rng.randrange(1, 5))) * k)[:k],
             lambda k: "".join(rng.choice(words) for _ in range(k // 4)),
             lambda k: "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(k // 3)),
             lambda k: "".join(chr(0x430 + rng.randrange(32)) for _ in range(k)),
             lambda k: " ".join(rng.choice(words) for _ in range(rng.randrange(1, 30))) + " " + "x" * (k // 2)]
    return [kinds[i % len(kinds)](rng.choice([70, 150, 400])) for i in range(n)]


@pytest.mark.parametrize("context_length", [77, 12])
def test_long_words_give_the_rows_of_whole_word_bpe(bpe, context_length):
    """Long words are merged on a prefix only (tokenizer.WORD_PREFIX): the row equals the whole word's BPE cut."""
    tok = bpe if context_length == 77 else BPETokenizer(context_length)
    texts = _long_words(48, seed=context_length)
    whole = _pack([tok.encode(t) for t in texts], context_length, tok.sot_id, tok.eot_id)
    assert torch.equal(tok(texts), whole)


def test_huge_caption_without_spaces_tokenises_in_milliseconds(bpe):
    import random
    import string
    import time
    rng = random.Random(1)
    texts = ["".join(rng.choice(string.ascii_lowercase) for _ in range(100_000)),
             "a photo of " + "".join(rng.choice("日本語テキスト") for _ in range(100_000))]
    t = time.perf_counter()
    rows = bpe(texts)
    took = time.perf_counter() - t
    assert took < 1.0, f"two 100k-character captions took {took:.2f} s (whole-word BPE: minutes)"
    assert (rows[:, -1] == bpe.eot_id).all() and (rows != 0).all()
    assert bpe.decode(rows[0]) == texts[0][:len(bpe.decode(rows[0]))]          # a prefix of the caption


# ----------------------------------------------------------------------------------------- word level
def test_word_tokenizer_ids_and_unk():
    tok = WordTokenizer(["a", "red", "square"], context_length=8)
    assert tok.vocab_size == 7 and (tok.pad_id, tok.sot_id, tok.eot_id) == (0, 1, 2)
    assert tok.encode("A red, SQUARE!") == [4, 5, 6]
    assert tok.encode("a blue square") == [4, 3, 6]
    assert tok.decode(tok.encode("a blue square")) == "a <unk> square"
    assert tok("a red square").tolist() == [[1, 4, 5, 6, 2, 0, 0, 0]]
    assert tok("").tolist() == [[1, 2, 0, 0, 0, 0, 0, 0]]


def test_word_tokenizer_round_trip_and_truncation():
    texts = ["a red square left of a blue circle", "the green triangle", "Two  Red-Squares"]
    tok = WordTokenizer.from_texts(texts, context_length=5)
    assert tok.vocab[0] == "a" and tok.vocab_size == 4 + len(set(w for t in texts for w in tok.split(t)))
    for t in texts:
        assert tok.decode(tok.encode(t)) == " ".join(tok.split(t))
    out = tok(texts)
    assert out.shape == (3, 5)
    assert out[0].tolist() == [1, *tok.encode(texts[0])[:3], 2]  # eot kept last
    assert out[1].tolist() == [1, *tok.encode(texts[1]), 2]
    assert tok.decode(out[1]) == "the green triangle"


def test_word_tokenizer_min_count_and_validation():
    tok = WordTokenizer.from_texts(["a b", "a c", "a b"], min_count=2)
    assert tok.vocab == ["a", "b"]
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError, match=r"vocab\[1\]"):
        WordTokenizer(["a", "two words"])
    with pytest.raises(ValueError, match="context_length"):
        WordTokenizer(["a"], context_length=1)


def test_word_state_dict_round_trip():
    tok = WordTokenizer.from_texts(["the red square", "a blue circle"], context_length=6)
    d = json.loads(json.dumps(tok.state_dict()))
    tok2 = WordTokenizer.from_state_dict(d)
    tok3 = tokenizer_from_state_dict(d)
    s = ["a red circle", "unknown words here"]
    assert torch.equal(tok(s), tok2(s)) and torch.equal(tok(s), tok3(s))
    assert tok2.vocab == tok.vocab and tok2.context_length == 6


def test_build_tokenizer():
    assert isinstance(build_tokenizer("bpe", 20), BPETokenizer)
    w = build_tokenizer("word", 10, texts=["a b c"])
    assert w.vocab_size == 7 and w.context_length == 10
    assert build_tokenizer("word", 10, vocab=["x"]).vocab == ["x"]
    assert isinstance(tokenizer_from_state_dict(build_tokenizer("bpe", 20).state_dict()), BPETokenizer)
    with pytest.raises(ValueError, match="vocab="):
        build_tokenizer("word", 10)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        build_tokenizer("sentencepiece", 10)
