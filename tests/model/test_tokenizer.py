"""Byte-level BPE tokenizer: fixed special ids, exact round trip, persistence, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from model.config import ModelConfig
from model.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError

TEXTS = [
    "Hello! How can I help you today?",
    "What is 347 times 29?",
    "say tick every three seconds until I say stop",
    "mhm",
    "",
    " leading and trailing spaces  ",
    "line one\nline two\r\n\ttabbed\n\n",
    "emoji 😀🎉👍🏽 and flags 🇫🇷",
    "Ünïcödé: 中文, العربية, русский, ≈ ∑ √",
    "null \x00 and control \x1b[0m bytes",
    "literal special spellings: <pad> <eot> <delegate> <bg>",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


def test_special_token_ids(tok: Tokenizer) -> None:
    assert SPECIAL_TOKENS == ("<pad>", "<eot>", "<delegate>", "<bg>")
    assert (tok.pad_id, tok.eot_id, tok.delegate_id, tok.bg_id) == (0, 1, 2, 3)
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i
        assert tok.is_special(i)
    assert not tok.is_special(4)
    assert not tok.is_special(tok.encode("hello")[0])


def test_default_vocab_size_fits_config(tok: Tokenizer) -> None:
    assert tok.vocab_size <= 1024
    # The tiny preset's embedding table is sized for it: the default must fill it exactly.
    assert tok.vocab_size == ModelConfig().vocab_size


def test_trained_vocab_never_exceeds_request() -> None:
    small = Tokenizer.train(["just a few words, again and again"] * 3, vocab_size=300)
    assert small.vocab_size <= 300
    assert small.decode(small.encode("unseen ✨ text")) == "unseen ✨ text"


def test_train_rejects_vocab_too_small_for_bytes() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(["hi"], vocab_size=100)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_encode_never_emits_specials(tok: Tokenizer) -> None:
    """Text spelling a control token must not become that token (no injection from user text)."""
    ids = tok.encode("<delegate> please <eot>")
    assert not any(tok.is_special(i) for i in ids)


def test_decode_skips_specials_unless_asked(tok: Tokenizer) -> None:
    ids = [tok.pad_id, *tok.encode("hi"), tok.eot_id]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special=False) == "<pad>hi<eot>"


def test_common_words_are_single_tokens(tok: Tokenizer) -> None:
    assert len(tok.encode(" times")) == 1
    assert len(tok.encode("What")) == 1


def test_unknown_token_raises_key_error(tok: Tokenizer) -> None:
    with pytest.raises(KeyError):
        tok.token_to_id("<no such token>")


def test_save_load_identical(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.to_str() == tok.to_str()
    assert loaded.vocab_size == tok.vocab_size
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
    assert Tokenizer.from_str(tok.to_str()).encode(TEXTS[1]) == tok.encode(TEXTS[1])


def test_default_training_is_deterministic() -> None:
    first = Tokenizer.train(_corpus_lines(), 1024)
    second = Tokenizer.train(_corpus_lines(), 1024)
    assert first.to_str() == second.to_str()
    assert Tokenizer.default().to_str() == first.to_str()
    assert Tokenizer.default() is Tokenizer.default()  # cached per process


def _corpus_lines() -> list[str]:
    path = Path(__file__).resolve().parents[2] / "model" / "data" / "corpus.txt"
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError, match=re.escape(str(path))):
        Tokenizer.load(path)


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"version": "1.0"}', "", "\xff\xfe garbage"],
    ids=["broken-json", "not-a-tokenizer", "empty", "binary"],
)
def test_corrupt_file_names_path(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(TokenizerError, match=re.escape(str(path))):
        Tokenizer.load(path)


def test_wrong_special_ids_rejected(tmp_path: Path) -> None:
    other = Tokenizer.train(["some text"], vocab_size=300).to_str()
    swapped = other.replace('"<pad>"', '"<tmp>"').replace('"<eot>"', '"<pad>"').replace('"<tmp>"', '"<eot>"')
    path = tmp_path / "tokenizer.json"
    path.write_text(swapped, encoding="utf-8")
    with pytest.raises(TokenizerError, match="special token"):
        Tokenizer.load(path)
    assert issubclass(TokenizerError, ValueError)
