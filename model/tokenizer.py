"""Text tokenizer: byte-level BPE trained with HuggingFace `tokenizers` (DESIGN.md §5).

Byte level so that any string (emoji, newlines, any script) encodes without an unknown
token and decodes back exactly; the tokenizer json is shipped with the checkpoint, because
ids are meaningless without the exact merges the model was trained with.

Special tokens have fixed ids 0..3 so model code can refer to them as constants:
`<pad>` (the inner monologue's "nothing to say"), `<eot>`, `<delegate>` (hand off to the
background agent) and `<bg>` (background results follow).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<pad>", "<eot>", "<delegate>", "<bg>")
PAD_ID, EOT_ID, DELEGATE_ID, BG_ID = range(len(SPECIAL_TOKENS))
TOKENIZER_FILENAME = "tokenizer.json"
# Smallest vocabulary that can hold the specials plus all 256 byte symbols.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


class TokenizerError(ValueError):
    """A tokenizer file or json that is missing, unreadable, or not one of ours."""


class Tokenizer:
    """Thin wrapper that pins the special-token ids and the byte-level round-trip guarantee.

    `encode` never produces special ids, even for text that spells `<eot>` or `<delegate>`:
    user speech and typed text must not be able to inject control tokens. Model code
    inserts specials by id.
    """

    def __init__(self, hf: HFTokenizer) -> None:
        _check_specials(hf)
        # Spell-outs of special tokens in text are encoded as ordinary bytes (see class doc).
        hf.encode_special_tokens = True
        self._hf = hf

    # construction -------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Train a fresh byte-level BPE; the result has at most `vocab_size` tokens.

        Fewer tokens result when the texts run out of pairs to merge.
        """
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (specials + 256 bytes), got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        # No prefix space: it would change the text (a leading space on decode).
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            # All 256 bytes, even those absent from the texts, so nothing is ever unknown.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def default(cls, vocab_size: int = 1024) -> Tokenizer:
        """The tokenizer trained on the built-in corpus; cached per size for this process."""
        return _default(vocab_size)

    @classmethod
    def from_str(cls, json_str: str) -> Tokenizer:
        try:
            hf = HFTokenizer.from_str(json_str)
        except Exception as e:  # the Rust side raises a bare Exception for any parse error
            raise TokenizerError(f"not a valid tokenizer json: {e}") from e
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json` written by `save`; errors name the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from e
        try:
            return cls.from_str(text)
        except TokenizerError as e:
            raise TokenizerError(f"tokenizer file {path}: {e}") from e

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_str(), encoding="utf-8")

    def to_str(self) -> str:
        return self._hf.to_str()

    # use ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of `text`, with no special tokens added or recognized."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a (non-special) token stands for: streaming decoders join these and
        decode UTF-8 themselves, so a character split across tokens or turns survives."""
        token = self._hf.id_to_token(token_id)
        if token is None or self.is_special(token_id):
            return b""
        return bytes(_UNICODE_TO_BYTE[c] for c in token)

    def token_to_id(self, token: str) -> int:
        """Id of a vocabulary entry; KeyError if absent (a silent None would hide typos)."""
        token_id = self._hf.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return token_id

    def is_special(self, token_id: int) -> bool:
        return 0 <= token_id < len(SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eot_id(self) -> int:
        return EOT_ID

    @property
    def delegate_id(self) -> int:
        return DELEGATE_ID

    @property
    def bg_id(self) -> int:
        return BG_ID


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode table that ByteLevel BPE token strings are written in."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


_UNICODE_TO_BYTE = _byte_level_alphabet()


def _check_specials(hf: HFTokenizer) -> None:
    """Reject a tokenizer whose specials are not at our fixed ids: model code hard-codes them."""
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        got = hf.token_to_id(token)
        if got != expected_id:
            raise TokenizerError(f"special token {token} must have id {expected_id}, got {got}")


def _corpus_lines() -> list[str]:
    text = resources.files("model.data").joinpath("corpus.txt").read_text(encoding="utf-8")
    return text.splitlines(keepends=True)


@functools.lru_cache(maxsize=4)
def _default(vocab_size: int) -> Tokenizer:
    return Tokenizer.train(_corpus_lines(), vocab_size)
