"""Timed words: the `output.json` format, and how we build it from the model's own text stream.

FD-bench transcribes `output.wav` with an ASR model into word chunks. We have no ASR weights,
so the words come from the model's inner-monologue text stream instead:

1. Each output position j of micro-turn k carries one text token and is *played* at
   (k+1)*0.2 + j*0.05 s (OUT_k is heard during turn k+1, see model/train/dataset.py).
2. Tokens are grouped into words the way they were made in training (`tok.encode(" " + word)`):
   a token whose decoded text starts with whitespace starts a new word; special tokens
   (`<pad>`, `<eot>`, ...) are skipped and never split a word. A word's token span is
   [time of its first token, time of its last token + 0.05).
3. Each word is then timed by the audio it was spoken in (`snap_to_speech`): the VAD speech
   segment of output.wav that overlaps its token span most (the span is extended by `lead_s`,
   because training places a word's text at its start, slightly ahead of the sound). The words
   of one segment keep their token spacing, shifted so that the first starts with the segment
   when the text led the sound (sound that began before any text is not attributed to a
   word), clamped into the segment; the last one ends with the segment. A word with no
   overlapping speech keeps its token times and is counted as unvoiced (the report shows the
   count: ASR would not have heard it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model.tokenizer import Tokenizer

Segment = tuple[float, float]


class OutputJsonError(ValueError):
    """An output.json that is not in the FD-bench `{"text", "chunks"}` format."""


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class TimedToken:
    """One text token of the model's stream and the time its output position is played."""

    token_id: int
    time: float


@dataclass
class SnappedWords:
    words: list[Word]
    voiced: list[bool]  # per word: timed by a speech segment (True) or by token times (False)

    @property
    def n_voiced(self) -> int:
        return sum(self.voiced)


def group_words(tokens: Sequence[TimedToken], tokenizer: Tokenizer, position_s: float = 0.05) -> list[Word]:
    """Byte-level BPE tokens with play times -> words timed by their token span."""
    groups: list[list[TimedToken]] = []
    for t in tokens:
        if tokenizer.is_special(t.token_id):
            continue
        piece = tokenizer.decode([t.token_id])
        if not groups or piece[:1].isspace():
            groups.append([t])
        else:
            groups[-1].append(t)
    words = []
    for g in groups:
        # decoded jointly so a multi-byte character split across tokens comes out whole
        text = tokenizer.decode([t.token_id for t in g]).replace("\ufffd", "").strip()
        if text:
            words.append(Word(text, round(g[0].time, 6), round(g[-1].time + position_s, 6)))
    return words


def snap_to_speech(words: Sequence[Word], segments: Sequence[Segment], lead_s: float = 0.2) -> SnappedWords:
    """Time each word by the speech segment it was spoken in (see module doc)."""
    seg_of: list[int | None] = []
    for w in words:
        lo, hi = w.start, w.end + lead_s
        best, best_overlap = None, 0.0
        for i, (s, e) in enumerate(segments):
            overlap = min(hi, e) - max(lo, s)
            if overlap > best_overlap:
                best, best_overlap = i, overlap
        seg_of.append(best)
    out = list(words)
    n = 0
    while n < len(words):
        si = seg_of[n]
        m = n + 1
        while m < len(words) and seg_of[m] == si:
            m += 1
        if si is not None:  # words[n:m] were spoken in segment si
            s, e = segments[si]
            shift = max(0.0, s - words[n].start)  # the text led the sound
            prev_end = s
            for i in range(n, m):
                start = min(max(words[i].start + shift, prev_end), e)
                end = e if i == m - 1 else min(max(words[i].end + shift, start), e)
                out[i] = Word(words[i].text, round(start, 6), round(end, 6))
                prev_end = end
        n = m
    return SnappedWords(out, [si is not None for si in seg_of])


def words_to_json(words: Sequence[Word]) -> dict[str, Any]:
    """FD-bench `output.json`: {"text": str, "chunks": [{"text": word, "timestamp": [start, end]}]}."""
    return {
        "text": " ".join(w.text for w in words),
        "chunks": [{"text": w.text, "timestamp": [w.start, w.end]} for w in words],
    }


def words_from_json(obj: Any, source: str = "output.json") -> list[Word]:
    """Parse FD-bench `output.json`. Like FD-bench, a chunk without a start time is skipped
    and a missing end time is taken as the start time."""
    try:
        chunks = obj["chunks"]
        words = []
        for c in chunks:
            start, end = c["timestamp"][0], c["timestamp"][1]
            if start is None:
                continue
            words.append(Word(str(c["text"]), float(start), float(start if end is None else end)))
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise OutputJsonError(f"{source}: not an FD-bench output.json ({{'text', 'chunks'}}): {e!r}") from e
    return words
